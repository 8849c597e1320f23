"""The trace round trip: a trace file made by the app's own download (home page: options, Prepare, the file the
download button hands out) and opened as a trace file (Source = trace file) shows on every page the numbers the live
model shows: the home page's top-16 predictions, the Attention and Influence spans pages' figures and token colours
for several layers, heads and tokens, the Time decay page's per-token views. Causal tracing needs the model and says
so. The numbers compared are those the views compute (the figures' arrays and the token views' values), not images.

The demo models of the repository (4 layers x 128, byte vocabulary), on the default download (top-16 logits,
float16: within float16 rounding) and on the full one (full logits, float32: equal to float32 rounding). The size at
the 0.1B shape with 1,031 tokens: bench/bench_trace_download.py.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.ui.page_helpers import app_session, chart_specs, chart_title, plotly_array, run_clean, token_views

V7, V6 = "demo: demo v7 facts+retrieval", "demo: demo v6 facts+retrieval"
# per page: the display choices compared, each a dict of widget key -> value set in both sessions
CHOICES = {
    "app.py": [{}],
    "pages/1_Attention.py": [{}, {"layer": 1, "head": 2, "tok": 20}, {"layer": 0, "head": 3, "tok": 41}],
    "pages/2_Influence_spans.py": [{}, {"layer": 3, "head": 1, "tok": 3}, {"layer": 2, "head": 0, "tok": 30}],
    "pages/3_Time_decay.py": [{}, {"decay_dyn_layer": 0, "decay_sel_token": 7, "decay_sel_head": 1,
                                   "decay_ret_source": 2},
                              {"decay_dyn_layer": 2, "decay_sel_token": 30, "decay_ret_source": 12}],
}


def _downloaded(model: str, full: bool) -> bytes:
    """The trace file of the model's default prompt as the home page makes it: Prepare, then the file the download
    button gives (`traces.prepared_file` is what its callable returns)."""
    from inspector_ui import traces

    at = run_clean(app_session(model=model))
    if full:
        at.radio(key="trace_logits_A").set_value("full [T, V]")
        at.checkbox(key="trace_f16_A").uncheck()
        run_clean(at)
    at.button(key="trace_prepare_A").click()
    run_clean(at)
    key, progress = at.session_state["trace_build_A"]
    deadline = time.monotonic() + 120
    while not progress.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert progress.phase == "done", progress.error
    run_clean(at)
    assert at.get("download_button")
    return traces.prepared_file(key)


def _set(at, choices: dict) -> None:
    for key, value in choices.items():
        widget = next(w for w in (at.selectbox, at.number_input) for w in w if w.key == key)
        widget.set_value(value)
    run_clean(at)


def _numbers(at) -> dict[str, np.ndarray]:
    """Every number a page shows: the figures' numeric x/y/z arrays (by figure title, data trace name and axis; the
    static-decay parts a trace lacks are left out) and the token views' values and hover probabilities."""
    out: dict[str, np.ndarray] = {}
    for fig in chart_specs(at):
        title = chart_title(fig).replace(" vs static", "")
        for i, trace in enumerate(fig["data"]):
            if "static" in str(trace.get("name", "")).lower():
                continue
            for axis in ("x", "y", "z"):
                try:
                    a = plotly_array(trace[axis])
                except (KeyError, TypeError, ValueError):
                    continue
                out[f"{title} | {trace.get('name') or i} | {axis}"] = a
    for j, tv in enumerate(token_views(at)):
        if tv.get("values") is not None:
            out[f"token view {j} values"] = np.array([np.nan if v is None else v for v in tv["values"]], float)
        if tv.get("tips"):
            out[f"token view {j} tip ids"], out[f"token view {j} tip p"] = _tips(tv["tips"], len(tv["tokens"]))
    return out


def _tips(tips, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The hover predictions of a token view, ids and probabilities [T, k]: from rows per position ([id, text, p,
    next] each) or the compact form the token view decodes (`widgets.tip_rows`)."""
    if isinstance(tips, dict):
        from inspector_ui.widgets import tip_rows

        tips = [tip_rows(tips, i) for i in range(n_tokens)]
    return (np.array([[row[0] for row in t] for t in tips], float),
            np.array([[row[2] for row in t] for t in tips], float))


def _close(live: np.ndarray, traced: np.ndarray, rel: float) -> float:
    """The largest difference relative to the array's largest magnitude (NaN where both are NaN)."""
    assert live.shape == traced.shape
    both = np.isfinite(live) & np.isfinite(traced)
    assert np.array_equal(np.isfinite(live), np.isfinite(traced))
    scale = max(float(np.abs(live[both]).max(initial=0.0)), 1e-30)
    return float(np.abs(live[both] - traced[both]).max(initial=0.0)) / scale


@pytest.mark.parametrize("model,full", [(V7, False), (V7, True), (V6, False)],
                         ids=["v7-default", "v7-full-float32", "v6-default"])
def test_every_page_of_a_downloaded_trace_shows_the_live_numbers(model, full):
    data = _downloaded(model, full)
    # float32 rounding (the live decay page computes from the decay's logit in float64, a trace from float32 w);
    # float16 rounding of r, k, v, a and ln w, through the scores
    tol = 1e-4 if full else 4e-3
    worst: dict[str, float] = {}
    for page, choice_list in CHOICES.items():
        live = run_clean(app_session(page, model=model))
        traced = run_clean(app_session(page, source="trace file"))
        traced.sidebar.file_uploader(key="trace_upload").set_value(("trace.npz", data, "application/octet-stream"))
        run_clean(traced)
        for choices in choice_list:
            _set(live, choices)
            _set(traced, choices)
            a, b = _numbers(live), _numbers(traced)
            assert set(b) <= set(a) and len(b) >= (1 if page == "app.py" else 3), (page, sorted(a), sorted(b))
            if page != "pages/3_Time_decay.py":
                assert set(a) == set(b), (page, sorted(set(a) ^ set(b)))
            for name in b:
                if name.endswith("tip ids"):  # the top-16 ids: equal (the stored top-k are the live top-k)
                    assert np.array_equal(a[name], b[name]), (page, choices, name)
                    continue
                err = _close(a[name], b[name], tol)
                worst[f"{page} {choices} {name}"] = err
                assert err <= (max(tol, 2e-4) if name.endswith("tip p") else tol), (page, choices, name, err)
    assert len(worst) > 40
    print(f"{model} full={full}: worst relative difference {max(worst.values()):.2e} ({max(worst, key=worst.get)})")
    traced = run_clean(app_session("pages/4_Causal_tracing.py", source="trace file"))
    traced.sidebar.file_uploader(key="trace_upload").set_value(("trace.npz", data, "application/octet-stream"))
    run_clean(traced)
    assert any("needs a live model" in i.value for i in traced.info)
