"""Benchmark: facts per minute of a fact-set trace (`rwkv_core.analysis.factset.run_fact_set`) on the Ray workers of
this machine, 1 worker (all the cores) against 2 workers (the cores shared), same facts, same run.

Models: the demo model (models/demo-v7.pth, 4 x 128, byte tokenizer) and a random RWKV-7 checkpoint of the 0.1B
shape (12 x 768, vocabulary 65,536, World tokenizer; written to a temporary folder). Facts: the first `--facts` of the
demo fact set (rwkv_core/demo/data/facts-heldout.jsonl), `--kinds` restore kinds, `--samples` noise samples. Each
configuration starts its own JobManager (Ray local, started once), so a worker's first model load is inside the
time, as a user's first run has it. The random model's facts are traced with the same prompts (its answers are
nonsense, its cost is real).

Run: `python -m bench.bench_factset [--facts 6] [--samples 3] [--kinds block,state] [--models demo,12x768]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from rwkv_core.analysis import factset as FS
from rwkv_core.jobs.manager import ClusterSettings, JobManager
from rwkv_core.jobs.specs import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def model_for(name: str, tmp: Path) -> tuple[ModelSpec, int]:
    if name == "demo":
        return ModelSpec(str(ROOT / "models" / "demo-v7.pth"), "bytes"), 4
    L, C = (int(x) for x in name.split("x"))
    from rwkv_core.io.synthetic import write_random_checkpoint

    path = tmp / f"random-v7-{L}x{C}.pth"
    if not path.exists():
        write_random_checkpoint(path, "7", n_layer=L, n_embd=C, vocab_size=65536)
    return ModelSpec(str(path), "world"), L


def run_once(spec: ModelSpec, n_layer: int, facts, settings, workers: int, out: Path) -> float:
    jobs = JobManager(ClusterSettings(workers=workers))
    try:
        start = time.perf_counter()
        summary = FS.run_fact_set(spec, n_layer, facts, out, settings, executor=FS.RayExecutor(jobs), n_boot=100)
        seconds = time.perf_counter() - start
        assert summary.progress.done == len(facts), summary.progress
        return seconds
    finally:
        jobs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=6)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--kinds", default="block,state")
    ap.add_argument("--models", default="demo,12x768")
    args = ap.parse_args()
    facts = FS.demo_facts()[0][:args.facts]
    settings = FS.FactSetSettings(kinds=tuple(args.kinds.split(",")), samples=args.samples)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-factset-") as d:
        tmp = Path(d)
        for name in args.models.split(","):
            spec, L = model_for(name, tmp)
            per = {}
            for workers in (1, 2):
                s = run_once(spec, L, facts, settings, workers, tmp / f"out-{name}-{workers}")
                per[workers] = s
                rows.append({"model": name, "workers": workers, "facts": len(facts), "seconds": round(s, 1),
                             "facts_per_min": round(60 * len(facts) / s, 2)})
                print(json.dumps(rows[-1]), flush=True)
            print(f"{name}: 2 workers / 1 worker speed = {per[1] / per[2]:.2f}x", flush=True)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "load_average": os.getloadavg(), "samples": args.samples, "kinds": args.kinds}))


if __name__ == "__main__":
    main()
