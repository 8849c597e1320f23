"""The Causal tracing page under Streamlit's AppTest: the reverse-digits model by registry name, subject and answer
(given, or the defaults that follow the prompt), a trace and its figures, a display option that redraws from the
cached results, and compare mode tracing both prompts.

Runs on the shared digit-reversal model (skipped with a reason where ../shared is absent); the tracing numbers
themselves are tested in tests/analysis/test_tracing.py.
"""
from __future__ import annotations

import pytest

from tests.conftest import shared_file
from tests.ui.page_helpers import app_session

DIGITS_MODEL = "shared: 260123_reverse_L2_only_rwkv7.pth"


def _page(**query):
    return app_session("pages/4_Causal_tracing.py", **query)


def _press_trace(at):
    next(b for b in at.button if b.label == "Trace").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_end_to_end():
    """The page on the shared frame: the reverse-digits model by registry name, the prompt from the sidebar, the
    subject and answer given; a display option redraws from the cached results."""
    pytest.importorskip("streamlit")
    shared_file("260123_reverse_L2_only_rwkv7.pth")

    at = _page()
    at.session_state["model"] = DIGITS_MODEL
    at.session_state["prompt"] = "12345,54"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [t for t in at.text_input if t.key in ("ct_checkpoint", "ct_tokenizer")]  # no path field any more
    at.text_input(key="ct_subject").set_value("3")
    at.text_input(key="ct_answer").set_value("3")
    _press_trace(at)
    assert len(at.get("plotly_chart")) >= 4  # three heat maps + the ablation bars
    assert not at.error, [e.value for e in at.error]
    labels = {m.label: m.value for m in at.metric}
    assert float(labels["clean p('3')"]) > 0.99
    assert at.query_params["ct_subject"] == "3" and at.query_params["ct_answer"] == "3"
    # a display option redraws from the cached results
    results_before = dict(at.session_state["ct_results"])
    at.selectbox(key="ct_metric").set_value("logprob").run()
    assert not at.exception and len(at.get("plotly_chart")) >= 4
    assert list(at.session_state["ct_results"]) == list(results_before)
    key = next(iter(results_before))
    assert key[0][0] == DIGITS_MODEL and key[1] == "12345,54"
    assert at.session_state["ct_results"][key]["results"] is results_before[key]["results"]


def test_page_defaults_follow_the_prompt_and_compare_mode_traces_both():
    """Defaults: the registry's tracing example for its own prompt, else the first word and the greedy next token.
    Compare mode traces both prompts; an error of run B (subject not in prompt B) stays in its column."""
    pytest.importorskip("streamlit")
    shared_file("260123_reverse_L2_only_rwkv7.pth")

    at = _page(model=DIGITS_MODEL, prompt="31415926,")
    at.run()
    assert not at.exception and not at.error
    assert (at.text_input(key="ct_subject").value, at.text_input(key="ct_answer").value) == ("1", "6")
    at.text_area(key="prompt").set_value("12345,54").run()
    assert not at.exception and not at.error
    assert at.text_input(key="ct_subject").value == "12345,54"
    answer = at.text_input(key="ct_answer").value
    assert len(answer) == 1 and answer in "0123456789,#"

    at = _page(model=DIGITS_MODEL, prompt="12345,54", compare="prompt", prompt_b="5467,76", ct_subject="3",
               ct_answer="3", ct_samples="2")
    at.run()
    assert not at.exception and not at.error
    assert at.text_input(key="ct_subject").value == "3" and at.number_input(key="ct_samples").value == 2
    _press_trace(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "3" in errors[0], errors  # B's prompt has no '3'
    assert len(at.get("plotly_chart")) >= 4  # A's heat maps and bars
    at.text_input(key="ct_subject").set_value("5")
    at.text_input(key="ct_answer").set_value("5")
    _press_trace(at)
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 8  # both runs
    assert len(at.session_state["ct_results"]) == 2


def test_stop_keeps_the_cells_already_traced(monkeypatch):
    """Stop during a trace (the Stop button's callback, pressed at the progress bar's third update) cancels the job
    in its worker: the cells traced so far come back and stay on the page as incomplete grids, and the warning says
    how many were done. Runs on the app's default model and prompt (the demo RWKV-7 and its tracing example)."""
    pytest.importorskip("streamlit")
    from inspector_ui.views import tracing as view

    updates: list[tuple] = []
    real_progress_text = view.progress_text

    def stop_at_third_update(*args, **kwargs) -> str:
        updates.append(args)
        if len(updates) == 3:
            view._request_stop()
        return real_progress_text(*args, **kwargs)

    monkeypatch.setattr(view, "progress_text", stop_at_third_update)
    at = _page(ct_samples="40")  # a longer job: Stop comes before its end
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    _press_trace(at)
    monkeypatch.setattr(view, "progress_text", real_progress_text)
    assert len(updates) >= 3
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]

    entries = list(at.session_state["ct_results"].values())
    assert len(entries) == 1 and "results" in entries[0]
    results = entries[0]["results"]
    assert not any(r.complete for r in results)
    done, total = view.cells_done(results)
    assert 0 < done < total
    assert any(f"Stopped after {done} of {total} cells" in w.value for w in at.warning), [w.value for w in at.warning]
    assert len(at.get("plotly_chart")) >= 3  # the partial heat maps are drawn


def test_subject_replacement_default_fits_and_a_wrong_length_is_one_warning_line():
    """On the app's default prompt the offered replacement subject takes the subject's 16 byte tokens, so subject
    replacement traces at once; a replacement of another length gets one warning line naming both counts (not a red
    error)."""
    pytest.importorskip("streamlit")
    at = _page()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert at.text_input(key="ct_subject").value == "The Eiffel Tower"
    alt = at.text_input(key="ct_alt").value
    assert len(alt.encode()) == len("The Eiffel Tower") and alt != "The Eiffel Tower"
    at.radio(key="ct_corruption").set_value("replace")
    _press_trace(at)
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 3

    at.text_input(key="ct_alt").set_value("The Colosseum")
    _press_trace(at)
    assert not at.error, [e.value for e in at.error]
    lines = [w.value for w in at.warning if "The Colosseum" in w.value]
    assert len(lines) == 1 and "13 token(s)" in lines[0] and "16" in lines[0] and "\n" not in lines[0], lines


def test_window_default_fits_a_small_model_and_a_link_keeps_its_window():
    """On the 4-layer demo a window of 10 layers would cover every layer (both window grids flat): the default is
    half the layers. ROME's 10 stays for deep models, and a window given in the link wins."""
    pytest.importorskip("streamlit")
    from rwkv_core.analysis.tracing import default_window

    assert [default_window(n) for n in (1, 2, 4, 12, 24, 48)] == [1, 1, 2, 6, 10, 10]
    at = _page()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert at.number_input(key="ct_window").value == 2
    at = _page(ct_window="4")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert at.number_input(key="ct_window").value == 4 and at.query_params["ct_window"] == "4"


def test_the_page_draws_without_the_job_manager_and_then_warms_it(monkeypatch):
    """Starting Ray and its workers takes seconds: the page's renders must not wait for it while this session has no
    job (they draw the settings, the cost and any results), and each render asks for the manager to be started in
    the background once it has drawn. Pressing Trace is what needs it (default model, in the repository)."""
    pytest.importorskip("streamlit")
    from inspector_ui.views import tracing as view

    def no_manager():
        raise AssertionError("a render without a job of this session asked for the job manager")

    warmed: list[int] = []
    monkeypatch.setattr(view, "get_jobs", no_manager)
    monkeypatch.setattr(view, "warm_jobs", lambda: warmed.append(len(view.st.session_state.get("ct_jobs", {}))))
    at = _page()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert any(c.value.startswith("Cost: ") and " cells · about " in c.value for c in at.caption), [c.value for c in at.caption]
    at.selectbox(key="ct_metric").set_value("logprob").run()  # another render, still no job
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert warmed == [0, 0]  # asked after each render, with no job of this session
    next(b for b in at.button if b.label == "Trace").click()
    at.run()
    assert at.exception  # Trace does need it (the app shows our AssertionError, its text redacted)


def test_default_answer_after_the_home_page_runs_no_forward_of_its_own():
    """The default answer is the prompt's greedy next token: after the home page made the prompt's predictions,
    the Causal tracing page takes it from them instead of running the prompt again (the default model, in the
    repository; a prompt that is not the registry's tracing example)."""
    pytest.importorskip("streamlit")
    import torch

    from rwkv_core.model.rwkv import RWKV

    prompt_runs: list[int] = []

    def count(module, args):
        if isinstance(module, RWKV) and args and isinstance(args[0], (list, tuple)):
            prompt_runs.append(len(args[0]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        at = app_session("app.py", prompt="The history of the language model")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert prompt_runs, "the home page made no predictions"
        before = list(prompt_runs)
        at.switch_page("pages/4_Causal_tracing.py")
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    finally:
        handle.remove()
    answer = at.text_input(key="ct_answer").value
    assert answer  # the greedy next token, as text
    assert prompt_runs == before, prompt_runs[len(before):]  # no run over the prompt on the tracing page


FILLER = "On Monday morning, Anna walked to the market and bought three apples. "
FACT = "The Eiffel Tower is located in the city of"


def test_a_long_prompt_states_the_cost_in_hours_and_proposes_tokens_before_any_run():
    """A 990-token prompt on the demo model, its subject at the start (default settings, no job started): before any run the page says what
    the full grid costs in hours and minutes and offers the proposed tokens (listed, with their cost) and
    attribution patching; an edited list changes the rows and the cost and goes into the URL; Trace asks before
    the full grid and starts nothing."""
    pytest.importorskip("streamlit")
    import re

    from rwkv_core.analysis import tracing as TR

    prompt = "The Eiffel Tower stands by the river. " + FILLER * 13 + FACT  # 990 bytes, the subject first at 0..15
    T, s0 = len(prompt), 0
    at = _page(prompt=prompt, ct_subject="The Eiffel Tower", ct_answer=" Paris")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    long_line = next((w.value for w in at.info if w.value.startswith(f"A long prompt ({T:,} tokens)")), "")
    # the time comes from this machine's measured speed: hours on a slow CPU, minutes on a fast one
    assert re.search(rf"the full grid is {3 * T * 4:,} cells, about \*\*(\d+ h \d\d min|\d+ min \d+ s)\*\*",
                     long_line), \
        [w.value for w in at.info]
    proposal = TR.propose_tokens(T, (s0, s0 + 16))
    assert len(proposal) == 22 and proposal[0] == s0 and proposal[-1] == T - 1
    assert at.text_input(key="ct_tokens").value == TR.format_positions(proposal)
    assert at.query_params["ct_tokens"] == TR.format_positions(proposal)
    rows_line = next((c.value for c in at.caption if c.value.startswith(f"22 of {T:,} rows: {s0} 'T'")), "")
    assert f"{T - 1} 'f'" in rows_line and f" · {3 * 22 * 4} cells · about " in rows_line, \
        [c.value for c in at.caption]
    labels = [b.label for b in at.button]
    assert any(lbl.startswith("Trace these tokens (") for lbl in labels), labels
    assert any(lbl.startswith("Attribution patching (") for lbl in labels)
    assert not at.session_state["ct_jobs"] if "ct_jobs" in at.session_state else True

    at.text_input(key="ct_tokens").set_value(f"{s0 + 2}, {s0 + 4}-{s0 + 5}, {T - 1}").run()
    assert not at.exception and not at.error
    assert any(c.value.startswith(f"4 of {T:,} rows: {s0 + 2} 'e', {s0 + 4} 'E', {s0 + 5} 'i', {T - 1} 'f' · 48 "
                                  "cells") for c in at.caption), [c.value for c in at.caption]
    assert at.query_params["ct_tokens"] == f"{s0 + 2}, {s0 + 4}-{s0 + 5}, {T - 1}"

    at.text_input(key="ct_tokens").set_value("3, 5000").run()  # one line, and the proposal is what would run
    assert [e.value for e in at.error] == [f"Token position 5000 is outside the prompt (positions 0 to {T - 1}); the "
                                           "proposal is used instead."]
    assert any(c.value.startswith(f"22 of {T:,} rows") for c in at.caption)
    at.text_input(key="ct_tokens").set_value("3").run()

    next(b for b in at.button if b.label == "Trace").click()  # the full grid anyway: asks first
    at.run()
    assert not at.exception and not at.error
    assert any(re.match(r"The full grid will take about (\d+ h \d\d min|\d+ min \d+ s)", w.value) for w in at.warning)
    assert not at.session_state["ct_jobs"] if "ct_jobs" in at.session_state else True
    assert not at.session_state["ct_results"]


def test_the_proposed_tokens_trace_only_their_rows_and_attribution_patching_is_labelled(monkeypatch):
    """Choosing the proposed tokens runs a job whose grids have those rows only (the others blank, drawn as one
    blank row per gap); attribution patching draws every cell, labelled a first-order estimate. The
    confirmation threshold at 0 (RWKV_INSPECTOR_CONFIRM_MINUTES=0: every full grid asks first) makes a
    182-token prompt long enough to be quick."""
    pytest.importorskip("streamlit")
    import numpy as np

    from inspector_ui import settings as app_settings
    from rwkv_core.analysis import tracing as TR
    from tests.ui.page_helpers import chart_specs

    monkeypatch.setattr(app_settings, "CONFIRM_SECONDS", 0.0)
    prompt = FILLER * 2 + FACT  # 182 bytes, the subject at 140..155
    at = _page(prompt=prompt, ct_subject="The Eiffel Tower", ct_answer=" Paris", ct_samples="2")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    next(b for b in at.button if b.label.startswith("Trace these tokens")).click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    proposal = TR.propose_tokens(182, (140, 156))
    entry = next(iter(at.session_state["ct_results"].values()))
    results = entry["results"]
    assert len(results) == 3 and entry["job"].tokens == tuple(proposal)
    for r in results:
        assert r.complete and r.traced_tokens == proposal
        assert np.array_equal(np.isfinite(r.grids["prob"]).all(1).nonzero()[0], proposal)
        assert np.isnan(np.delete(r.grids["prob"], proposal, 0)).all()
    assert at.query_params["ct_scope"] == "tokens"
    heat = chart_specs(at)[0]
    ticks = heat["layout"]["yaxis"]["ticktext"]
    gaps = 1 + sum(b - a > 1 for a, b in zip(proposal, proposal[1:]))  # the tokens before 140, and between rows
    assert ticks[0] == "⋯ 140 not traced" and ticks[1] == "140 T*" and ticks[18] == "⋯ 4 not traced"
    assert len(ticks) == len(proposal) + gaps and ticks[-1] == "181 f"

    next(b for b in at.button if b.label.startswith("Attribution patching")).click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert any(i.value.startswith("**Attribution patching: a first-order estimate, not exact.**") for i in at.info)
    titles = [f["layout"]["title"]["text"] for f in chart_specs(at)]
    assert sum(t.startswith("Attribution patching (first-order estimate, not exact)") for t in titles) == 3
    atp = next(iter(at.session_state["ct_results"].values()))["results"]
    assert atp[0].settings["method"] == "atp" and np.isfinite(atp[0].grids["prob"]).all()
