"""Benchmark: the same causal trace in this process and through a Ray worker (the job system's overhead), one
worker against two on independent jobs, and the cost estimate against the measured time and peak memory.

Setup: a random RWKV-7 checkpoint (default 12 x 768, vocabulary 65,536: the 0.1B shape), a prompt of `--tokens`
byte tokens (the subject at its start so every cell runs), one block/both grid with `--samples` noise samples.
- in-process: `prepare_trace` + `trace_grids` here, with all cores;
- worker: the same job through `rwkv_core.jobs.JobManager` (1 CPU worker with all cores), timed from submit to
  result, with the model already loaded in the worker (a first job warms it) and without;
- 1 vs 2 workers: two jobs of two different users, on one worker (all cores) one after the other, and on two
  workers (half the cores each) at once (both workers warmed by a tiny job first);
- the estimate (`rwkv_core.jobs.cost.estimate_trace`) against the in-process time and the peak memory the trace
  added to this process (VmHWM after clear_refs, in a fresh subprocess).

Run: `python bench/bench_jobs.py [--layers 12 --width 768 --vocab 256 --tokens 64 --samples 4]`.

Measured (2026-12-07, 2-core x86_64, torch 2.13 CPU, idle, `--samples 2`): in-process 85.8 s; worker 85.5 s with the
model load (1.00x), 76.6 s loaded (0.89x, identical grids); two jobs on one worker 168.5 s, on two workers 139.1 s
(0.83x); estimate 1.25x the measured time, 0.77x the measured memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs import cost as COST
from rwkv_core.jobs.manager import ClusterSettings, JobManager
from rwkv_core.jobs.specs import ModelSpec, TraceJob

WORDS = "the cat sat on the mat and looked at the bird in the tree while it sang ".split()


def prompt_of(n_tokens: int) -> str:
    text, i = "Paris", 0
    while len(text.encode()) < n_tokens - 4:
        text += " " + WORDS[i % len(WORDS)]
        i += 1
    return text[: n_tokens - 3] + " in"


def peak_subprocess(path: str, prompt: str, samples: int, threads: int) -> dict:
    """prepare_trace + one grid in a fresh process: wall seconds and the peak memory it added (VmHWM)."""
    code = f"""
import json, resource, time, torch
torch.set_num_threads({threads})
from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
m = load_model({path!r}); tok = tokenizer_for(256, kind="bytes")
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # the peak so far (the checkpoint load) is forgotten
base = status("VmRSS:")
t0 = time.perf_counter()
s = TR.prepare_trace(m, tok, {prompt!r}, "Paris", " F", samples={samples})
TR.trace_grids(s, [TR.TraceSpec("block", "both", 10)])
print(json.dumps({{"seconds": time.perf_counter() - t0,
                  "added": status("VmHWM:") - base}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=256, help="256: byte tokens (the prompt is bytes)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    path = str(tmp / f"random-v7-{args.layers}x{args.width}.pth")
    write_random_checkpoint(path, "7", n_layer=args.layers, n_embd=args.width, head_size=64, vocab_size=args.vocab,
                            seed=0)
    prompt = prompt_of(args.tokens)
    spec = TR.TraceSpec("block", "both", 10)
    prepare = dict(subject="Paris", answer=" F", samples=args.samples)
    print(f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}; random v7 "
          f"{args.layers} x {args.width}, vocabulary {args.vocab}, {args.tokens} tokens, {args.samples} samples, "
          "one block/both grid")

    model = load_model(path)
    tok = tokenizer_for(args.vocab, kind="bytes")
    t0 = time.perf_counter()
    setup = TR.prepare_trace(model, tok, prompt, **prepare)
    local = TR.trace_grids(setup, [spec])[0]
    t_local = time.perf_counter() - t0
    cost = COST.estimate_trace(model, setup.T, setup.K, setup.subject[0], setup.n, [spec], 1 << 40,
                               subject_tokens=setup.subject[1] - setup.subject[0])
    del setup

    job = TraceJob(ModelSpec(path, "bytes"), prompt, tuple(sorted(prepare.items())), (spec,), cost.batch_bytes)
    t0 = time.perf_counter()
    jobs = JobManager(ClusterSettings(workers=1))
    t_ray = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = jobs.wait(jobs.submit("u1", job), timeout=7200)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = jobs.wait(jobs.submit("u1", job), timeout=7200)
    t_warm = time.perf_counter() - t0
    same = float(np.nanmax(np.abs(warm.outcome.value[0].grids["prob"] - local.grids["prob"])))
    assert first.state == warm.state == "done", (first.message, warm.message)
    t0 = time.perf_counter()
    a, b = jobs.submit("u1", job), jobs.submit("u2", job)
    jobs.wait(a, timeout=7200), jobs.wait(b, timeout=7200)
    t_one_worker = time.perf_counter() - t0
    jobs.close()

    jobs2 = JobManager(ClusterSettings(workers=2))
    warm_up = TraceJob(job.model, "Paris in", tuple(sorted(dict(prepare, samples=1).items())), (spec,),
                       cost.batch_bytes)
    for jid in [jobs2.submit("u1", warm_up), jobs2.submit("u2", warm_up)]:  # both workers load the model
        jobs2.wait(jid, timeout=7200)
    t0 = time.perf_counter()
    a, b = jobs2.submit("u1", job), jobs2.submit("u2", job)
    jobs2.wait(a, timeout=7200), jobs2.wait(b, timeout=7200)
    t_two_workers = time.perf_counter() - t0
    jobs2.close()

    peak = peak_subprocess(path, prompt, args.samples, cores)
    print(f"Ray started in {t_ray:.1f} s")
    print(f"in-process trace:         {t_local:8.2f} s")
    print(f"worker, first job (load): {t_cold:8.2f} s  ratio {t_cold / t_local:.2f}x")
    print(f"worker, model loaded:     {t_warm:8.2f} s  ratio {t_warm / t_local:.2f}x  (max |diff| {same:.1e})")
    print(f"two jobs, 1 worker:       {t_one_worker:8.2f} s")
    print(f"two jobs, 2 workers:      {t_two_workers:8.2f} s  ratio {t_two_workers / t_one_worker:.2f}x")
    print(f"estimate: {cost.seconds:.2f} s vs measured {peak['seconds']:.2f} s (ratio "
          f"{cost.seconds / peak['seconds']:.2f}); memory {(cost.peak_bytes - cost.weights_bytes) / 2**20:.0f} MB "
          f"vs added {peak['added'] / 2**20:.0f} MB (ratio {(cost.peak_bytes - cost.weights_bytes) / max(1, peak['added']):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
