"""Benchmark: the Time decay page's state layer change, one block from the kept input against a pass of its own.

The page's pass over the prompt keeps every block's input (`DecayPass.resid_pre`, RWKV-7's `v_first`); another
layer's state after every token then runs that block alone (`DecayPass.state_sizes_of`). The baseline, what the page
did before, is `decay.state_sizes` for the layer: a pass from the embedding that ends after the layer. Both in this
process on a random checkpoint of a real shape, the 1,031-token English prompt, under OMP_WAIT_POLICY=PASSIVE as the
app runs (set before torch loads); layers near the top, the middle and the bottom; best of two each; the largest
relative difference between the two answers is printed beside the times.

    python -m bench.bench_decay_state_layer                          # 0.1B shape (12 x 768)
    python -m bench.bench_decay_state_layer --layers 24 --width 2048 --keep
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as the app sets it

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_decay_page import prompt_of, random_checkpoint, shape_arguments  # noqa: E402
from rwkv_core.analysis import decay as D  # noqa: E402
from rwkv_core.io.checkpoint import load_model  # noqa: E402
from rwkv_core.io.tokenizer import tokenizer_for  # noqa: E402


def best_of_two(fn):
    times, out = [], None
    for _ in range(2):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape_arguments(ap, "/tmp/realsize-pages")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(folder, args.version, args.layers, args.width)
    model = load_model(ckpt)
    L = model.cfg.n_layer
    tokens = tokenizer_for(65536).encode(prompt_of(args.tokens)[0]).ids
    with torch.no_grad():
        t0 = time.perf_counter()
        kept = D.decay_pass(model, tokens, state_layers=[L - 1])  # the page's default: the last layer measured
        pass_s = time.perf_counter() - t0
        kept_mb = sum(x.numel() * x.element_size() for x in kept.resid_pre.values()) / 2**20
        print(f"Time decay state layer, random v{args.version} {L} x {args.width}, {len(tokens)} tokens, "
              f"{os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; the prompt's pass "
              f"{pass_s:.2f} s, kept block inputs {kept_mb:.0f} MB")
        print(f"  {'layer':>5s} {'own pass (before)':>18s} {'one block':>10s} {'ratio':>7s} {'max rel diff':>13s}")
        for layer in (L - 2, L // 2, 1):
            own_s, own = best_of_two(lambda: D.state_sizes(model, tokens, layers=[layer]))
            one_s, one = best_of_two(lambda: kept.state_sizes_of(model, layer))
            diff = float(np.max(np.abs(one.frobenius / own.frobenius - 1)))
            print(f"  {layer:5d} {own_s:16.2f} s {one_s:8.2f} s {one_s / own_s:6.2f}x {diff:13.1e}")
    if not args.keep:
        ckpt.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
