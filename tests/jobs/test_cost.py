"""The cost estimate: the refusal's suggestions are the largest settings that fit, the capture limit is exact, and
the peak memory a trace adds to a process is within 2x of the estimate (the demo model, and the 0.1B width)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import load_model
from rwkv_core.jobs import cost as COST
from tests.jobs.conftest import DEMO_V7

SPECS = [TR.TraceSpec("block", "both", 2)]
GB = 2**30


def test_a_refused_trace_names_the_largest_samples_and_prompt_that_fit():
    model = load_model(DEMO_V7)
    T, K, n = 2000, 1, 20
    fits = lambda T_, n_, budget: COST.estimate_trace(model, T_, K, 0, n_, SPECS, budget, speed=SPEED).fits  # noqa
    need = COST.estimate_trace(model, T, K, 0, n, SPECS, 1 << 40, speed=SPEED).peak_bytes
    budget = need // 2
    cost = COST.estimate_trace(model, T, K, 0, n, SPECS, budget, speed=SPEED)
    assert not cost.fits and "\n" not in cost.refusal
    assert f"the job memory budget is {budget / GB:.1f} GB" in cost.refusal
    k = int(re.search(r"use at most (\d+) noise samples?", cost.refusal).group(1))
    t = int(re.search(r"a prompt of at most (\d+) tokens", cost.refusal).group(1))
    assert fits(T, k, budget) and not fits(T, k + 1, budget)
    assert fits(t, n, budget) and not fits(t + 1, n, budget)
    ok = COST.estimate_trace(model, T, K, 0, n, SPECS, need, speed=SPEED)
    assert ok.fits and ok.peak_bytes <= need


def test_the_capture_limit_is_the_longest_prompt_that_fits():
    model = load_model(DEMO_V7)
    cfg = model.cfg
    budget = 64 * 2**20
    line = COST.capture_refusal(cfg, 100_000, cfg.n_layer, budget)
    fit = int(re.search(r"at most ([\d,]+) tokens", line).group(1).replace(",", ""))
    assert COST.capture_refusal(cfg, fit, cfg.n_layer, budget) is None
    assert COST.capture_refusal(cfg, fit + 1, cfg.n_layer, budget) is not None


SPEED = COST.Speed(1e-7, 1e-4, 1e-6, "cpu")

MEASURE = """
import json, resource, sys, torch
torch.set_num_threads(1)
from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs import cost as COST
path, T, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = load_model(path)
tok = tokenizer_for(m.cfg.vocab_size, kind="bytes")
prompt = ("Paris is where the river runs and " * 200)[:T - 3] + " in"
spec = [TR.TraceSpec("block", "both", 2)]
enc = tok.encode(prompt)
est = COST.estimate_trace(m, len(enc), 1, 0, n, spec, 1 << 40, speed=COST.Speed(1e-7, 1e-4, 1e-6, "cpu"),
                          subject_tokens=5)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # the peak so far (the checkpoint load) is forgotten
base = status("VmRSS:")
s = TR.prepare_trace(m, tok, prompt, "Paris", " F", samples=n, memory_budget=est.batch_bytes)
cells = []
TR.trace_grids(s, spec, memory_budget=est.batch_bytes, progress=lambda d, t: cells.append(d),
               should_stop=lambda: len(cells) >= 3)
added = status("VmHWM:") - base
print(json.dumps({"estimate": est.peak_bytes - est.weights_bytes, "added": added}))
"""


@pytest.mark.parametrize("shape", ["demo", pytest.param("12x768", marks=pytest.mark.slow)])  # 12 x 768: ~1 min
def test_the_memory_estimate_is_within_2x_of_the_measured_peak(shape, tmp_path):
    if shape == "demo":
        path, T, n = str(DEMO_V7), 600, 10
    else:
        from rwkv_core.io.synthetic import write_random_checkpoint

        path, T, n = str(tmp_path / "v7-12x768.pth"), 300, 4
        write_random_checkpoint(path, "7", n_layer=12, n_embd=768, head_size=64, vocab_size=256, seed=0)
    assert 0.5 <= estimate_over_measured(shape, MEASURE, path, T, n) <= 2.0


def estimate_over_measured(name: str, script: str, *args) -> float:
    """Run a measuring script in a fresh process; its estimate / the bytes it measured (printed for the log)."""
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = got["estimate"] / got["added"]
    print(f"{name}: estimate {got['estimate'] / 2**20:.0f} MB, measured {got['added'] / 2**20:.0f} MB ({ratio:.2f})")
    return ratio


CAPTURE = """
import json, sys, torch
torch.set_num_threads(1)
from rwkv_core.analysis import scores as S
from rwkv_core.io.checkpoint import load_model
from rwkv_core.jobs import cost as COST
path, T = sys.argv[1], int(sys.argv[2])
m = load_model(path)
tokens = torch.randint(0, m.cfg.vocab_size, (T,), generator=torch.Generator().manual_seed(0)).tolist()
m(tokens[:8])  # torch's own first-call allocations, not the capture's
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # the peak so far (the checkpoint load) is forgotten
base = status("VmRSS:")
logits, inputs = S.capture_with_logits(m, tokens)
added = status("VmHWM:") - base
print(json.dumps({"estimate": COST.capture_bytes(m.cfg, T, m.cfg.n_layer), "added": added}))
"""


def test_the_capture_estimate_is_within_2x_of_the_measured_peak(tmp_path):
    """What the score pages' capture budget is checked against: the bytes a capture of every layer adds to the
    process (its inputs laid out token-major, the logits), measured by the kernel's high-water mark."""
    from rwkv_core.io.synthetic import write_random_checkpoint

    path = tmp_path / "v7-6x512.pth"
    write_random_checkpoint(str(path), "7", n_layer=6, n_embd=512, head_size=64, vocab_size=256, seed=0)
    assert 0.5 <= estimate_over_measured("capture", CAPTURE, path, 1500) <= 2.0
