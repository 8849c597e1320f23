"""Benchmark: the score pages' token click, the selected token's row and column over every (layer, head).

A click on the Attention or Influence spans page computes A[sel, :] and A[:, sel] (and the span column) of every
head of every layer from the captured inputs. This captures a random checkpoint's inputs over the prompt, then times
`row_and_column` for three selections (the middle token, the last, the first), with and without the span column,
under OMP_WAIT_POLICY=PASSIVE as the app runs. Each code runs in a fresh process; `--before REV` measures an older
checkout in the same run (from a temporary worktree) and the table gives this checkout's ratio to it.

    python -m bench.bench_row_column --before HEAD~1                         # 0.1B shape, 1,031 tokens
    python -m bench.bench_row_column --before HEAD~1 --layers 24 --width 2048 --keep
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_decay_page import random_checkpoint, shape_arguments, worktree_of

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
from rwkv_core.analysis import scores as S
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from bench.bench_decay_page import prompt_of
model = load_model(sys.argv[1])
text, _ = prompt_of(int(sys.argv[2]))
tokens = tokenizer_for(65536).encode(text).ids
T = len(tokens)
out = {}
with torch.no_grad():
    t0 = time.perf_counter(); inputs = S.capture_score_inputs(model, tokens); out["capture"] = time.perf_counter() - t0
    for name, spans in (("row+col", False), ("row+col+span col", "col")):
        for sel in (T // 2, T - 1, 0):
            times = []
            for _ in range(2):
                t0 = time.perf_counter(); S.row_and_column(inputs, sel, spans=spans); times.append(time.perf_counter() - t0)
            out[f"{name}, token {sel}"] = min(times)
print(json.dumps(out))
"""


def measure(ckpt: Path, tokens: int, code: Path) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(code)}
    res = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(tokens)], env=env, capture_output=True, check=False,
                         text=True, timeout=3600, cwd=code)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape_arguments(ap, "/tmp/realsize-pages")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(folder, args.version, args.layers, args.width)
    with contextlib.ExitStack() as stack:
        codes = [("this checkout", REPO)]
        if args.before:
            codes.insert(0, (f"before ({args.before})", stack.enter_context(worktree_of(args.before, "rowcol-"))))
        results = [(name, measure(ckpt, args.tokens, code)) for name, code in codes]
    cores = os.cpu_count() or 1
    print(f"Row and column of the selected token, random v{args.version} {args.layers} x {args.width}, "
          f"{args.tokens} tokens, {cores} cores, OMP_WAIT_POLICY=PASSIVE (seconds, best of 2; capture once)")
    head = f"  {'step':34s}" + "".join(f"{name:>24s}" for name, _ in results)
    print(head + ("   ratio" if len(results) > 1 else ""))
    for step in results[-1][1]:
        row = f"  {step:34s}" + "".join(f"{r[step]:24.3f}" for _, r in results)
        if len(results) > 1:
            row += f"   {results[-1][1][step] / results[0][1][step]:5.2f}x"
        print(row)
    if not args.keep:
        ckpt.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
