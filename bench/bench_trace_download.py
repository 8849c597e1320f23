"""Benchmark: the home page's trace download at real size, the default file against the full one (what the download
wrote before: every layer's activations, the residual stream and the full logits [T, V], all float32), same run.

A random RWKV-7 checkpoint of the 0.1B shape (12 layers x 768, vocabulary 65,536, ~0.8 GB, written under /tmp and
deleted at the end) offered through a model folder, and the ~1,031-token English prompt of bench_decay_page.py. Each
file is built through the app's own download path (`inspector_ui.traces.trace_file_bytes`, what Prepare runs: the
work gate, the compute thread, the forward pass with capture, the .npz written to memory), the model loaded first and
not timed. For each file: its size against the estimate shown before building, the build time, the progress steps
told (one per block and one for the logits), and the time to open it again as a trace file (`load_trace` and
`trace_contents`, what an upload does) against the upload limit. Then the ratios full / default.

    python bench/bench_trace_download.py                 # the 0.1B shape, 1,031 tokens
    python bench/bench_trace_download.py --tokens 256    # a shorter prompt
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path



def build(model_key: tuple, tokens: tuple, texts: tuple, options) -> dict:
    """One file through the app's download path: size, estimate, time, progress steps, time to open it again."""
    from inspector_ui import traces
    from inspector_ui.resources import loaded_model
    from rwkv_core.io.trace_file import load_trace, trace_contents

    steps: list[tuple[int, int]] = []
    progress = traces.BuildProgress()
    told = progress.tell
    progress.tell = lambda done, total: (steps.append((done, total)), told(done, total))[1]
    t0 = time.perf_counter()
    data = traces.trace_file_bytes(model_key, tokens, texts, options, progress)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    contents = trace_contents(load_trace(io.BytesIO(data)))
    open_s = time.perf_counter() - t0
    assert len(contents.tokens) == len(tokens) and contents.layers == list(options.layers)
    estimate = options.estimate(loaded_model(model_key).model.cfg, len(tokens))
    with traces._LOCK:  # keep the process's memory to one file at a time
        traces._FILES.clear()
    return {"bytes": len(data), "estimate": estimate, "seconds": seconds, "steps": len(steps), "open_s": open_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1031, help="prompt length in World tokens (default 1031)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    folder = tmp / "bench"
    folder.mkdir()
    os.environ["RWKV_INSPECTOR_MODEL_DIRS"] = str(folder)
    import torch

    from bench_decay_page import prompt_of  # this script's folder is on the import path
    from inspector_ui import settings
    from inspector_ui.resources import loaded_model
    from inspector_ui.traces import DownloadOptions, upload_limit_mb
    from rwkv_core.io.synthetic import write_random_checkpoint

    try:
        ckpt = folder / f"rwkv7-{args.layers}x{args.width}.pth"
        write_random_checkpoint(ckpt, "7", n_layer=args.layers, n_embd=args.width, head_size=64, vocab_size=65536)
        model_key = (f"bench/{ckpt.name}", "cpu", "fp32")
        lm = loaded_model(model_key)
        text, n = prompt_of(args.tokens)
        enc = lm.tokenizer.encode(text)
        tokens, texts = tuple(enc.ids), tuple(enc.token_texts)
        with torch.no_grad():  # warm-up: the first forward pays for allocations
            lm.model(list(tokens[:64]), logits="none")
        layers = tuple(range(lm.model.cfg.n_layer))
        limit = upload_limit_mb()
        print(f"RWKV-7 {args.layers} x {args.width}, vocabulary 65,536, {n} tokens; torch threads "
              f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}; upload limit {limit} MB "
              f"(RWKV_INSPECTOR_MAX_UPLOAD_MB {settings.MAX_UPLOAD_MB})")
        runs = {"default (top-16 logits, float16, no residual)": DownloadOptions(layers),
                "full (float32, full logits, residual: before)": DownloadOptions(layers, None, False, True)}
        got = {}
        for name, options in runs.items():
            r = got[name] = build(model_key, tokens, texts, options)
            fits = "fits" if r["bytes"] <= limit * 2**20 else "over"
            print(f"{name:48s} {r['bytes'] / 1e6:8.1f} MB ({r['bytes'] / 2**20:.1f} MiB, estimate "
                  f"{r['estimate'] / r['bytes']:.3f}x; {fits} the {limit} MB limit)  build {r['seconds']:5.1f} s "
                  f"({r['steps']} progress steps)  open {r['open_s']:4.1f} s")
        d, f = got.values()
        print(f"full / default: size {f['bytes'] / d['bytes']:.1f}x, build time {f['seconds'] / d['seconds']:.1f}x, "
              f"open time {f['open_s'] / d['open_s']:.1f}x")
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()


if __name__ == "__main__":
    main()
