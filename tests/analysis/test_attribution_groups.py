"""Attribution patching of causal traces in groups of noise rows (`atp_trace(memory_budget=...)`): every grid equals
the one run of all rows up to float rounding, for each recovery base (logprob by the chain rule); the cost estimate
picks a smaller group for a smaller budget and refuses only when one row does not fit; a job runs it grouped."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.analysis.patching.attribution import atp_group_rows, atp_row_bytes, atp_trace
from rwkv_core.io.synthetic import random_state_dict, write_random_checkpoint
from rwkv_core.io.tokenizer import ByteTokenizer
from rwkv_core.jobs import cost as COST
from rwkv_core.jobs.specs import ModelSpec, TraceJob
from rwkv_core.jobs.worker import JobRunner
from tests.analysis.test_tracing import _one_thread, small_model  # noqa: F401 (the autouse fixture: one thread)

BYTES = ByteTokenizer()
PROMPT, SUBJECT = "ab cdef gh", "cd"
SPECS = (TR.TraceSpec("block", "both"), TR.TraceSpec("block", "state"), TR.TraceSpec("block", "resid"),
         TR.TraceSpec("att", window=2), TR.TraceSpec("ffn", window=3))
N = 5


def assert_same(a: list[TR.TraceResult], b: list[TR.TraceResult], tol: float = 1e-6) -> None:
    """Every grid of a equals b's within tol relative, or tol x the grid's largest value (cells near 0); the
    estimate itself (the grid minus the corrupted value) too."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.kind, x.mode, x.window) == (y.kind, y.mode, y.window)
        assert np.isfinite(x.grids[x.metric]).all()
        for m in TR.METRICS:
            pairs = [(x.grids[m], y.grids[m])]
            if m == x.metric:
                pairs.append((x.grids[m] - x.corrupt[m], y.grids[m] - y.corrupt[m]))
            for u, v in pairs:
                scale = np.nanmax(np.abs(v)) if np.isfinite(v).any() else 0.0
                np.testing.assert_allclose(u, v, rtol=tol, atol=tol * scale, equal_nan=True, err_msg=m)


@pytest.mark.parametrize("version,answer2,recovery_of", [
    ("6", None, "auto"), ("6", "Q", "auto"), ("7", None, "auto"), ("7", "Q", "auto"),
    ("7", None, "logprob"), ("6", None, "first_prob")])
def test_groups_of_rows_equal_one_run_of_all(version, answer2, recovery_of):
    """Groups of 1 and of 3 of the 5 samples (forward/backward and state pass alike, and mixed) give every grid of
    all 5 at once; logprob's single group is log(mean p) itself, so its groups check the chain rule."""
    model = small_model(version)
    specs = SPECS + ((TR.TraceSpec("block", "resid", restore_v_first=False),) if version == "7" else ())
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", answer2=answer2, samples=N, seed=3,
                             recovery_of=recovery_of)
    base = setup.recovery_base()
    assert base == {"auto": "logit_diff" if answer2 else "prob"}.get(recovery_of, recovery_of)
    whole = atp_trace(setup, specs, group_rows=(N, N))
    assert whole[0].settings["atp_group_rows"] == [N, N]
    assert abs(setup.clean[base] - setup.corrupt[base]) > 1e-2 * abs(setup.clean[base])  # something to estimate
    for groups in ((1, 1), (3, 3), (3, 1)):
        got = atp_trace(setup, specs, group_rows=groups)
        assert got[0].settings["atp_group_rows"] == list(groups)
        assert_same(got, whole)


def test_the_memory_budget_sets_the_groups():
    """atp_trace's memory_budget: rows per group from `atp_row_bytes` (at least one, at most n); the grids the same."""
    model = small_model("7")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", samples=N, seed=3)
    main, state = atp_row_bytes(model.cfg, setup.S, ("block",), True)
    specs = [TR.TraceSpec("block", "both")]
    one = atp_trace(setup, specs, memory_budget=1)
    assert one[0].settings["atp_group_rows"] == [1, 1]
    two = atp_trace(setup, specs, memory_budget=2 * max(main, state))
    assert two[0].settings["atp_group_rows"] == [2, atp_group_rows(model.cfg, setup.S, N, 2 * max(main, state),
                                                                    ("block",), True)[1]]
    assert atp_trace(setup, specs)[0].settings["atp_group_rows"] == [N, N]  # the 1 GB default: all rows
    assert_same(one, two)


def test_the_estimate_picks_smaller_groups_for_a_smaller_budget_and_refuses_only_below_one_row():
    """The 0.1B shape (12 x 768, vocabulary 65,536) at 1,031 tokens and 10 samples, as the page plans it (meta
    tensors: no weights in memory): groups shrink with the budget, the time grows with the state pass's groups,
    and the refusal (one line) comes only when one row does not fit."""
    with torch.device("meta"):
        sd = random_state_dict("7", n_layer=12, n_embd=768, head_size=64, vocab_size=65536, seed=1)
    model = SimpleNamespace(cfg=detect_config(sd), parameters=sd.values)  # what the estimate reads of a model
    speed = COST.Speed(1e-4, 1e-3, 1e-4, "cpu")
    specs = [TR.TraceSpec("block", "both"), TR.TraceSpec("att", window=10), TR.TraceSpec("ffn", window=10)]
    T, K, n = 1031, 1, 10
    GB = COST.GB
    costs = {gb: COST.estimate_atp_trace(model, T, K, n, specs, int(gb * GB), speed, subject_tokens=4)
             for gb in (64, 24, 8, 5)}
    cache, fixed, main_row, state_row = COST.atp_memory(model.cfg, T, K, n, specs, 4)
    weights = COST.weight_bytes(model)
    groups = {}
    for gb, c in costs.items():
        assert c.fits, (gb, c.refusal)
        assert c.peak_bytes <= gb * GB
        groups[gb] = atp_group_rows(model.cfg, T + K - 1, n, c.batch_bytes, ("block", "att", "ffn"), True)
        assert c.peak_bytes == weights + cache + fixed + max(groups[gb][0] * main_row, groups[gb][1] * state_row)
    assert groups[64] == (n, n)  # all rows at once
    assert groups[8][0] < groups[24][0] < n and groups[8][1] < groups[24][1]
    assert groups[5] == (1, 1)
    assert costs[5].seconds > costs[8].seconds > costs[64].seconds  # more state-pass groups
    one_row = weights + cache + fixed + max(main_row, state_row)
    assert COST.estimate_atp_trace(model, T, K, n, specs, one_row, speed, subject_tokens=4).fits
    refused = COST.estimate_atp_trace(model, T, K, n, specs, one_row - 1, speed, subject_tokens=4)
    assert not refused.fits
    line = refused.refusal
    assert "\n" not in line and "even one noise sample at a time" in line and "prompt of at most" in line
    assert "RWKV_INSPECTOR_JOB_MEMORY_GB" in line
    # the refusal's proposals fit
    T_fit = int(line.split("prompt of at most ")[1].split(" tokens")[0].replace(",", ""))
    assert COST.estimate_atp_trace(model, T_fit, K, n, specs, one_row - 1, speed, subject_tokens=4).fits
    assert not COST.estimate_atp_trace(model, T_fit + 1, K, n, specs, one_row - 1, speed, subject_tokens=4).fits


def test_a_job_runs_attribution_patching_in_groups(tmp_path):
    """JobRunner (the worker's class, in this process) passes the job's memory budget to atp_trace: one row per
    group here, the grids those of all rows at once."""
    path = tmp_path / "v6.pth"
    write_random_checkpoint(path, "6", n_layer=2, n_embd=32, head_size=16, vocab_size=256, seed=5)
    prepare = dict(subject=SUBJECT, answer="Zq", samples=3, seed=2)
    specs = (TR.TraceSpec("block", "both"), TR.TraceSpec("att", window=2))
    job = TraceJob(ModelSpec(str(path), "bytes"), PROMPT, tuple(sorted(prepare.items())), specs, 1, method="atp")
    runner = JobRunner(torch_threads=1)
    out = runner.run("g", job)
    assert out.ok, out.error
    assert all(r.settings["atp_group_rows"] == [1, 1] for r in out.value)
    setup = runner._prepared(job)  # the worker's cached runs
    assert_same(out.value, atp_trace(setup, list(specs), group_rows=(3, 3)))
