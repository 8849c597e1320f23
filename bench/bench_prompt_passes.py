"""Benchmark: the extra passes over a prompt that pages run besides the plain forward, against that forward, for this
checkout and a git revision in the same run.

A random RWKV-7 checkpoint of the 0.1B shape (12 x 768, vocabulary 65,536; `--layers 24 --width 2048` for 1.5B) and
a 1,031-token prompt. Per checkout, in a child process with one torch thread (so that a busy machine moves every
number alike), the best of `--repeat` runs of:

  forward            `model(tokens, logits="none")`: the baseline every other row is divided by
  state, 1 layer     Time decay's state section: the state after every token of one layer measured on the fly
                     (`decay.state_sizes`, a pass that ends after that layer; the last layer here)
  default answer     Causal tracing's default answer, the prompt's greedy next token, as the page gets it when the
                     home page has not run: before 0caa5a7 the prompt's logits at every position, now
                     `RWKV.greedy` (logits of the last token only)

    python -m bench.bench_prompt_passes --before c50e4f5      # the README's numbers (Performance)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_decay_page import random_checkpoint, worktree_of

REPO = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from rwkv_core.analysis import decay as D
    from rwkv_core.io.checkpoint import load_model

    model = load_model(args.ckpt)
    tokens = [int(t) for t in torch.randint(0, 65536, (args.tokens,), generator=torch.Generator().manual_seed(0))]
    last = model.cfg.n_layer - 1
    greedy = getattr(model, "greedy", None)
    with torch.no_grad():
        out = {
            "forward": _best(lambda: model(tokens, logits="none"), args.repeat),
            "state, 1 layer": _best(lambda: D.state_sizes(model, tokens, layers=[last]), args.repeat),
            "default answer": _best((lambda: greedy(tokens, 1)) if greedy is not None else
                                    (lambda: model(tokens)[0][0, -1].argmax()), args.repeat),
        }
    print(json.dumps(out))


def run_child(repo: Path, ckpt: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--ckpt", str(ckpt), "--tokens", str(args.tokens),
           "--repeat", str(args.repeat)]
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--tokens", type=int, default=1031)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", help="a git revision to measure too, from a temporary worktree")
    ap.add_argument("--dir", default=None, help="folder for the random checkpoint (default: a temporary one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-passes-"))
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(folder, "7", args.layers, args.width)
    results = []
    if args.before:
        with worktree_of(args.before, "passes-before-") as worktree:
            results.append((f"before ({args.before})", run_child(worktree, ckpt, args)))
    results.append(("this checkout", run_child(REPO, ckpt, args)))
    print(f"RWKV-7 {args.layers} x {args.width}, vocabulary 65,536, {args.tokens} tokens, one torch thread, best of "
          f"{args.repeat}; load average {os.getloadavg()[0]:.1f}")
    print(f"  {'pass':16s}" + "".join(f"{name:>28s}" for name, _ in results))
    for row in results[0][1]:
        cells = "".join(f"{r[row]:9.2f} s ({r[row] / r['forward']:4.2f} x fwd)" for _, r in results)
        print(f"  {row:16s}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
