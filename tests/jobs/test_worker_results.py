"""Jobs run in a Ray worker give the in-process tracer's numbers; Stop ends them early with the cells done so far."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs.specs import AblationJob, ModelSpec, TraceJob
from rwkv_core.jobs.worker import JobRunner
from tests.jobs.conftest import DEMO_V7

PROMPT = "The Eiffel Tower is located in the city of"
PREPARE = dict(subject="The Eiffel Tower", answer=" Paris", samples=3, noise=3.0, seed=1)
SPECS = (TR.TraceSpec("block", "both", 2), TR.TraceSpec("att", "both", 2), TR.TraceSpec("ffn", "both", 2))


def trace_job(**over) -> TraceJob:
    prepare = dict(PREPARE, **over)
    return TraceJob(ModelSpec(str(DEMO_V7), "bytes"), PROMPT, tuple(sorted(prepare.items())), SPECS, 1 << 28)


@pytest.fixture(scope="module")
def in_process():
    model = load_model(DEMO_V7)
    tok = tokenizer_for(model.cfg.vocab_size, kind="bytes")
    setup = TR.prepare_trace(model, tok, PROMPT, **PREPARE)
    return setup, TR.trace_grids(setup, list(SPECS))


def test_trace_in_a_worker_equals_the_in_process_tracer(manager_factory, in_process):
    setup, expected = in_process
    jobs = manager_factory()
    jid = jobs.submit("alice", trace_job(), "trace")
    st = jobs.wait(jid, timeout=300)
    assert st.state == "done", st.message
    got = st.outcome.value
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g.kind, g.mode, g.window) == (e.kind, e.mode, e.window)
        for m in TR.METRICS:
            np.testing.assert_allclose(g.grids[m], e.grids[m], rtol=1e-6, atol=1e-6, equal_nan=True)
        assert g.subject == e.subject and g.tokens == e.tokens
    assert st.outcome.cells_done == st.outcome.cells_total == len(SPECS) * setup.T * setup.model.cfg.n_layer

    # the ablation that follows reuses the worker's cached runs and equals the in-process one
    jid = jobs.submit("alice", AblationJob(trace_job(), "block", "zero", -1), "ablate")
    st = jobs.wait(jid, timeout=300)
    assert st.state == "done", st.message
    expected_abl = TR.ablate_layers(setup, "block", "zero", reset_token=setup.subject[1] - 1)
    for m, v in expected_abl.delta.items():
        np.testing.assert_allclose(st.outcome.value.delta[m], v, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_input_errors_come_back_as_one_line(manager_factory):
    jobs = manager_factory()
    st = jobs.wait(jobs.submit("bob", trace_job(subject="The Louvre"), "trace"), timeout=300)
    assert st.state == "failed"
    assert st.outcome.error == "the subject 'The Louvre' does not occur in the prompt"
    st = jobs.wait(jobs.submit("bob", trace_job(corruption="replace", alt_subject="Rome"), "trace"), timeout=300)
    assert st.state == "failed" and st.outcome.warning and "same number of tokens" in st.outcome.warning
    assert "\n" not in st.outcome.warning


def test_stop_keeps_the_cells_done_in_process():
    """The runner (the worker's class, in this process): cancel from another thread ends the job after its batch."""
    runner = JobRunner()
    job = TraceJob(ModelSpec(str(DEMO_V7), "bytes"), PROMPT, tuple(sorted(dict(PREPARE, samples=20).items())),
                   SPECS, 1 << 16)  # small batches: many stop checks
    import threading

    def stop_when_started():
        while not (runner.progress("j1") or (0, 0, 0))[0]:
            pass
        runner.cancel("j1")

    threading.Thread(target=stop_when_started, daemon=True).start()
    out = runner.run("j1", job)
    assert out.ok
    assert 0 < out.cells_done < out.cells_total
    assert not out.value[0].complete
    grid = np.concatenate([r.grids["prob"].ravel() for r in out.value])
    assert int(np.isfinite(grid).sum()) == out.cells_done
    assert torch.get_num_threads() >= 1


def test_a_subset_job_and_an_attribution_job_in_process(single_thread):
    """The runner traces only a job's `tokens` (the in-process subset's numbers, its cells counted) and runs
    attribution patching for method "atp" (atp_trace's estimate); the two jobs share the cached runs. One thread
    (tests/conftest.py): tiny tensors on a busy machine."""
    from rwkv_core.analysis.patching.attribution import atp_trace

    model = load_model(DEMO_V7)
    setup = TR.prepare_trace(model, tokenizer_for(model.cfg.vocab_size, kind="bytes"), PROMPT, **PREPARE)
    rows = (3, 16, 41)
    full = TR.trace_grids(setup, list(SPECS), tokens=rows)  # == the full grid's rows (tests/analysis)
    runner = JobRunner(torch_threads=1)
    base = trace_job()
    out = runner.run("s", TraceJob(base.model, base.prompt, base.prepare, base.specs, base.memory_budget, rows))
    assert out.ok and out.cells_done == out.cells_total == len(SPECS) * len(rows) * setup.model.cfg.n_layer
    for g, e in zip(out.value, full):
        assert g.traced_tokens == list(rows) and g.complete
        np.testing.assert_allclose(g.grids["prob"][list(rows)], e.grids["prob"][list(rows)], rtol=1e-6, atol=1e-9)
        assert np.isnan(np.delete(g.grids["prob"], rows, 0)).all()
    out = runner.run("a", TraceJob(base.model, base.prompt, base.prepare, base.specs, base.memory_budget,
                                   method="atp"))
    assert out.ok
    expected = atp_trace(setup, list(SPECS))
    for g, e in zip(out.value, expected):
        assert g.settings["method"] == "atp"
        np.testing.assert_allclose(g.grids["prob"], e.grids["prob"], rtol=1e-5, atol=1e-7)
