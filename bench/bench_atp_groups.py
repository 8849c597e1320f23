"""Benchmark: attribution patching of a causal trace (`atp_trace`) in groups of noise rows within a memory budget,
its peak memory and time against `estimate_atp_trace`.

A random RWKV checkpoint (`random_state_dict`, default 12 x 768, vocabulary 65,536, the World tokenizer), a prompt
of T tokens ("The Eiffel Tower is located in ..." repeated, then "The tower is located in the city of"; the
subject "The Eiffel Tower" at its start), the answer " Paris", n noise samples, the page's three grids (block
"both", att and ffn windows of 10). The estimate is made as the Causal tracing page makes it (this model's measured
speed, `--threads` worker threads, the job budget `--budget-gb`); then, as the job worker runs it, `prepare_trace`
and `atp_trace` with the estimate's group budget (`JobCost.batch_bytes`). Peak memory: the process's high-water mark
(VmHWM, reset after the model is built: /proc/self/clear_refs) above its resident size then, against the
estimate's peak less the weights. Run (a shared machine: OMP_WAIT_POLICY=PASSIVE, nice):

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python bench/bench_atp_groups.py [--T 1031] [--samples 10] [--budget-gb 8]
        [--threads 2] [--layers 12] [--width 768] [--version 7]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.analysis.patching.attribution import atp_group_rows, atp_trace
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs import cost as COST
from rwkv_core.model.rwkv import RWKV

TEXT = ("The Eiffel Tower is located in the city of Paris, where the river runs past the old mill and the children "
        "of the village watch the boats go by. ")
SUBJECT = "The Eiffel Tower"
GB = 2**30


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1031)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--budget-gb", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--version", default="7")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sd = random_state_dict(a.version, n_layer=a.layers, n_embd=a.width, head_size=64, vocab_size=65536, seed=1)
    model = RWKV.from_state_dict(detect_config(sd), sd)
    del sd
    tok = tokenizer_for(65536, kind="world")
    question = " The tower is located in the city of"
    ids = list(tok.encode(TEXT * (a.T // 10 + 2)).ids)[:a.T - len(tok.encode(question))]
    prompt = tok.decode(ids) + question  # T tokens (+-1 where the two parts meet)
    T, K, n = len(tok.encode(prompt)), len(tok.encode(" Paris")), a.samples
    s0, s1 = TR.locate_subject(tok.encode(prompt), SUBJECT)[0]
    specs = [TR.TraceSpec("block", "both"), TR.TraceSpec("att", window=10), TR.TraceSpec("ffn", window=10)]
    est = COST.estimate_atp_trace(model, T, K, n, specs, int(a.budget_gb * GB), subject_tokens=s1 - s0,
                                  threads=a.threads)
    torch.set_num_threads(a.threads)
    groups = atp_group_rows(model.cfg, T + K - 1, n, est.batch_bytes, ("block", "att", "ffn"), True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far (building the model) is forgotten
    base = status("VmRSS:")
    w0, c0 = time.perf_counter(), time.process_time()
    setup = TR.prepare_trace(model, tok, prompt, SUBJECT, " Paris", samples=n, seed=1, memory_budget=est.batch_bytes)
    w1 = time.perf_counter()
    res = atp_trace(setup, specs, memory_budget=est.batch_bytes)
    w2, c2 = time.perf_counter(), time.process_time()
    added = status("VmHWM:") - base
    assert res[0].settings["atp_group_rows"] == list(groups)
    print(json.dumps({
        "shape": f"{a.layers}x{a.width} v{a.version}", "T": T, "K": K, "subject": [s0, s1], "samples": n, "threads": a.threads,
        "budget_gb": a.budget_gb, "groups (fwd+bwd, state)": list(groups), "refusal": est.refusal,
        "estimate": {"peak_gb": round(est.peak_bytes / GB, 2), "peak_less_weights_gb":
                     round((est.peak_bytes - est.weights_bytes) / GB, 2), "seconds": round(est.seconds, 1)},
        "measured": {"added_peak_gb": round(added / GB, 2), "peak_with_weights_gb":
                     round((added + est.weights_bytes) / GB, 2), "prepare_s": round(w1 - w0, 1),
                     "atp_s": round(w2 - w1, 1), "wall_s": round(w2 - w0, 1), "cpu_s": round(c2 - c0, 1)},
    }, indent=1))


if __name__ == "__main__":
    main()
