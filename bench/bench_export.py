"""The whole `python -m rwkv_core export` process against the whole process of the official `rwkv` package computing
the logits of the same prompt, same machine, same run.

Random official-layout v6 and v7 checkpoints: 12 layers, width 768, 12 heads of 64, vocabulary 65536 (~0.8 GB each,
written to a temporary folder under /tmp and deleted afterwards). The prompt is T random token ids.

- ours: `python -m rwkv_core export CKPT --tokens ... --out trace.npz` (load, check, forward with capture of every
  layer, write the trace file);
- official: a fresh Python that imports the package, builds `rwkv.model.RWKV(model=..., strategy='cpu fp32')` and
  runs `forward(tokens, None, full_output=True)` (logits of every position), nothing written.

Both are timed as whole subprocesses (interpreter start, imports, loading included), run alternately `--repeat`
times; the table shows the minimum of each (the least disturbed run on a shared machine).

    python bench/bench_export.py                  # v6 and v7, T = 1024, 3 runs each
    python bench/bench_export.py --versions 7 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _official_child(version: str, ckpt: str, tokens_file: str) -> None:
    """Run in the subprocess: the official package's whole job, logits of every position."""
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    if version == "7":
        os.environ["RWKV_V7_ON"] = "1"
    import torch
    from rwkv.model import RWKV as Official

    tokens = [int(t) for t in Path(tokens_file).read_text().split(",")]
    model = Official(model=ckpt[:-len(".pth")], strategy="cpu fp32")
    with torch.no_grad():
        logits, _ = model.forward(tokens, None, full_output=True)  # [T, V]
    assert tuple(logits.shape) == (len(tokens), 65536), logits.shape


def _timed(cmd: list[str]) -> float:
    """Wall-clock seconds of one whole subprocess; raises with its stderr if it fails."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} ... failed:\n{out.stderr[-2000:]}")
    return elapsed


def bench_version(version: str, T: int, repeat: int, tmp: Path) -> tuple[list[float], list[float]]:
    """Write the checkpoint, time both processes alternately, delete the checkpoint; returns (ours, official)."""
    import torch

    from rwkv_core.io.synthetic import write_random_checkpoint

    ckpt = tmp / f"bench_v{version}.pth"
    write_random_checkpoint(ckpt, version, n_layer=12, n_embd=768, head_size=64, vocab_size=65536, seed=0)
    ids = torch.randint(0, 65536, (T,), generator=torch.Generator().manual_seed(0)).tolist()
    tokens_file = tmp / "tokens.txt"
    tokens_file.write_text(",".join(map(str, ids)))
    ours_cmd = [sys.executable, "-m", "rwkv_core", "export", str(ckpt), "--tokens", tokens_file.read_text(),
                "--out", str(tmp / "trace.npz")]
    ref_cmd = [sys.executable, __file__, "--official-child", version, str(ckpt), str(tokens_file)]
    ours, ref = [], []
    try:
        for _ in range(repeat):
            ours.append(_timed(ours_cmd))
            ref.append(_timed(ref_cmd))
    finally:
        ckpt.unlink(missing_ok=True)
        (tmp / "trace.npz").unlink(missing_ok=True)
    return ours, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", nargs="+", default=["6", "7"], choices=["6", "7"])
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--official-child", nargs=3, metavar=("VERSION", "CKPT", "TOKENS_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.official_child:
        return _official_child(*args.official_child)

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"12 layers x 768, V=65536, T={args.T}; min of {args.repeat} alternating runs")
    print(f"{'model':6} {'export (s)':>10} {'official (s)':>12} {'ratio':>6}   all runs (export | official)")
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench_export_") as tmp:
        for version in args.versions:
            ours, ref = bench_version(version, args.T, args.repeat, Path(tmp))
            runs = " ".join(f"{t:.1f}" for t in ours) + " | " + " ".join(f"{t:.1f}" for t in ref)
            print(f"v{version:5} {min(ours):10.2f} {min(ref):12.2f} {min(ours) / min(ref):6.2f}   {runs}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end; ratio = export / official (at most 1: the goal)")


if __name__ == "__main__":
    main()
