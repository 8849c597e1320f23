"""Benchmark: how torch's OpenMP threads wait, on a machine where other processes want the cores too.

A server computes while the browser renders, a tracing worker runs beside it, or another user's job does. libgomp's
default lets every worker spin between parallel regions; when another process holds one of the cores, a barrier
waits for a descheduled worker while the spinning ones keep the other cores, and a forward pass of many small
operations (the state measured token by token) slows by an order of magnitude. This runs, each in a fresh process
(libgomp reads its settings when it loads):

  forward     the model over the prompt (logits included)
  state pass  the decay page's pass: x_w of every layer, the state measured after every token of the last layer

under each OpenMP setting (libgomp's default; OMP_WAIT_POLICY=PASSIVE, what the inspector sets; shorter spin counts;
one thread), alone
and beside one busy process per core but one (a competitor that spins in pure Python). Best of three, seconds, with
the ratio to the default alone.

    python -m bench.bench_omp_wait                     # 0.1B shape (12 x 768, vocabulary 65,536), 1,031 tokens
    python -m bench.bench_omp_wait --layers 24 --width 2048
    python -m bench.bench_omp_wait --before HEAD~3 --settings default,PASSIVE   # also an older checkout, same run

The WKV recurrences run on one thread where the threads sleep (`rwkv_core.model.threads`): `--before` a revision
without that rule shows what it changed under each setting.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_decay_page import random_checkpoint, shape_arguments, worktree_of

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "libgomp default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
    "one thread": {"OMP_NUM_THREADS": "1"},
}

CHILD = r"""
import json, sys, time, torch
from rwkv_core.analysis.decay import decay_pass
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from bench.bench_decay_page import prompt_of
model = load_model(sys.argv[1])
text, _ = prompt_of(int(sys.argv[2]))
tokens = tokenizer_for(65536).encode(text).ids
out = {}
with torch.no_grad():
    model(tokens[:64])
    for name, fn in (("forward", lambda: model(tokens)),
                     ("state pass", lambda: decay_pass(model, tokens, state_layers=[model.cfg.n_layer - 1]))):
        times = []
        for _ in range(3):
            t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        out[name] = min(times)
print(json.dumps(out))
"""


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def measure(ckpt: Path, tokens: int, env: dict, competitors: int, code: Path = REPO) -> dict:
    """One fresh process of the checkout `code` under `env`, with `competitors` busy processes running beside it."""
    procs = [multiprocessing.Process(target=_spin, args=(3600,), daemon=True) for _ in range(competitors)]
    for p in procs:
        p.start()
    try:
        full = {**os.environ, **env, "PYTHONPATH": str(code)}
        res = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(tokens)], env=full, capture_output=True,
                             text=True, timeout=3600, cwd=code)
        if res.returncode:
            raise RuntimeError(res.stderr[-2000:])
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.terminate()
            p.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape_arguments(ap, "/tmp/realsize-pages")
    ap.add_argument("--settings", help="comma-separated words picking the settings (e.g. 'default,PASSIVE')")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(folder, args.version, args.layers, args.width)
    settings = {name: env for name, env in SETTINGS.items()
                if not args.settings or any(w.strip() in name for w in args.settings.split(","))}
    cores = os.cpu_count() or 1
    loads = [("alone", 0), (f"beside {max(1, cores - 1)} busy process(es)", max(1, cores - 1))]
    with contextlib.ExitStack() as stack:
        codes = [("this checkout", REPO)]
        if args.before:
            codes.insert(0, (f"before ({args.before})", stack.enter_context(worktree_of(args.before, "omp-"))))
        rows = []
        for load_name, n in loads:
            for name, env in settings.items():
                for code_name, code in codes:
                    r = measure(ckpt, args.tokens, env, n, code)
                    rows.append((load_name, name, code_name, r))
                    print(f"  {load_name:28s} {name:24s} {code_name:18s} forward {r['forward']:6.2f} s  state pass "
                          f"{r['state pass']:6.2f} s", file=sys.stderr)
    base = rows[0][3]
    print(f"OpenMP waiting, {cores} cores, random v{args.version} {args.layers} x {args.width}, {args.tokens} tokens "
          f"(best of 3; ratio to the first row)")
    print(f"  {'load':28s} {'setting':24s} {'code':18s} {'forward':>16s} {'state pass':>18s}")
    for load_name, name, code_name, r in rows:
        print(f"  {load_name:28s} {name:24s} {code_name:18s} {r['forward']:7.2f} s "
              f"({r['forward'] / base['forward']:4.2f}x) {r['state pass']:8.2f} s "
              f"({r['state pass'] / base['state pass']:4.2f}x)")
    if not args.keep:
        ckpt.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
