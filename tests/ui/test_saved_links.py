"""Links saved before the package reorganisation (commit c13cb5f: inspector_ui/frame.py, pages with their full code)
open the same view after it.

A user's bookmark is a page address plus query parameters; the parameters are the session-state keys of the widgets
they restore. The links below are fixed: each one is what the old version published for a view with non-default
choices, recorded by running the old pages under AppTest with these very parameters (the published query string came
back identical, and so did the widget values listed). The old Time decay page published nothing of its own (only the
sidebar's keys), so its link is the sidebar's; its control widgets keep their keys (`decay_*`), which tests and
session state address, and those are checked too.

Everything runs on the 2-layer digit-reversal RWKV-7 model of ../shared (skipped with a reason where absent).
"""
from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import REPO, shared_file
from tests.ui.page_helpers import app_session

DIGITS = "shared: 260123_reverse_L2_only_rwkv7.pth"
TIMEOUT_S = 300  # one run on a loaded 2-core machine, model load included

# The sidebar of a saved link: a model by name, weights in bf16, two prompts side by side.
SIDEBAR_LINK = {"source": "model", "model": DIGITS, "device": "cpu", "dtype": "bf16", "compare": "prompt",
                "prompt": "31415926,", "prompt_b": "2718281828,"}
SIDEBAR_WIDGETS = {"source": "model", "model": DIGITS, "device": "cpu", "dtype": "bf16", "compare": "prompt",
                   "prompt": "31415926,", "prompt_b": "2718281828,"}

# page -> (query string the old version published, widget values it showed for it, other old widget keys)
SAVED_LINKS: dict[str, tuple[dict[str, str], dict[str, Any], tuple[str, ...]]] = {
    "app.py": (dict(SIDEBAR_LINK), dict(SIDEBAR_WIDGETS), ()),
    "pages/1_Attention.py": (
        {**SIDEBAR_LINK, "layer": "0", "head": "1", "tok": "3", "scale": "-1", "cb": "True", "ov": "col",
         "img": "svg", "diag": "False"},
        {**SIDEBAR_WIDGETS, "layer": 0, "head": 1, "tok": 3, "scale": "-1", "cb": True, "ov": "col", "img": "svg",
         "diag": False},
        ()),
    "pages/2_Influence_spans.py": (
        {**SIDEBAR_LINK, "layer": "1", "head": "1", "tok": "5", "scale": "1", "cb": "True", "ov": "end",
         "img": "svg", "thr": "0.25", "rel": "False", "logy": "True"},
        {**SIDEBAR_WIDGETS, "layer": 1, "head": 1, "tok": 5, "scale": "1", "cb": True, "ov": "end", "img": "svg",
         "thr": 0.25, "rel": False, "logy": True},
        ()),
    "pages/3_Time_decay.py": (
        dict(SIDEBAR_LINK), dict(SIDEBAR_WIDGETS),
        ("decay_paper_y", "decay_head_filter", "decay_heat_sorted", "decay_img_fmt", "decay_dyn_layer",
         "decay_sel_token", "decay_sel_head", "decay_spec_y", "decay_spec_sort", "decay_ret_source", "decay_ret_agg",
         "decay_ret_log", "decay_state_layer", "decay_state_metric", "decay_state_log")),
    "pages/4_Causal_tracing.py": (
        {**SIDEBAR_LINK, "ct_subject": "4159", "ct_answer": "9", "ct_answer2": "5", "ct_corruption": "replace",
         "ct_alt": "7777", "ct_samples": "4", "ct_noise": "2.5", "ct_seed": "7", "ct_site": "embed",
         "ct_mode": "state", "ct_window": "1", "ct_vfirst": "False", "ct_metric": "logprob", "ct_imgfmt": "svg",
         "ct_abl_target": "ffn", "ct_abl_repl": "mean", "ct_extra": "resid and state separately|window 1"},
        {**SIDEBAR_WIDGETS, "ct_subject": "4159", "ct_answer": "9", "ct_answer2": "5", "ct_corruption": "replace",
         "ct_alt": "7777", "ct_samples": 4, "ct_noise": 2.5, "ct_seed": 7, "ct_site": "embed", "ct_mode": "state",
         "ct_window": 1, "ct_vfirst": False, "ct_metric": "logprob", "ct_imgfmt": "svg",
         "ct_extra": ["resid and state separately", "window 1"]},
        ()),
}
# The ablation controls (ct_abl_target, ct_abl_repl) are drawn once a trace has run; their URL values are checked in
# session state.
STATE_ONLY = {"pages/4_Causal_tracing.py": {"ct_abl_target": "ffn", "ct_abl_repl": "mean"}}


def _open(page: str, query: dict[str, str]):
    """A fresh session of the multipage app asked for `page` with these query parameters (what a bookmark does)."""
    shared_file("260123_reverse_L2_only_rwkv7.pth")
    return app_session(page, TIMEOUT_S, **query)


def widget_values(at) -> dict[str, Any]:
    """Every keyed widget on the page (main area and sidebar, nested blocks included) by key, with its value."""
    out: dict[str, Any] = {}

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                walk(child)
        key = getattr(node, "key", None)
        if key is not None and hasattr(node, "value"):
            out[key] = node.value

    walk(at.main)
    walk(at.sidebar)
    return out


def _published(at) -> dict[str, str]:
    return {k: at.query_params[k] for k in at.query_params}


@pytest.mark.parametrize("page", list(SAVED_LINKS))
def test_a_link_saved_before_the_reorganisation_opens_the_same_view(page):
    assert (REPO / page).is_file(), f"{page} is gone: a saved link to it now opens nothing"
    query, widgets, other_keys = SAVED_LINKS[page]
    at = _open(page, query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error and not at.warning, ([e.value for e in at.error], [w.value for w in at.warning])

    shown = widget_values(at)
    assert {k: shown.get(k, "<no such widget>") for k in widgets} == widgets
    missing = [k for k in other_keys if k not in shown]
    assert not missing, f"widgets of the old page no longer on {page}: {missing}"
    for k, v in STATE_ONLY.get(page, {}).items():
        assert at.session_state[k] == v, k
    assert _published(at) == query  # the page republishes the link as it was: a copied link is the same link

    at.run()  # and keeps it on the next run
    assert not at.exception, [e.value for e in at.exception]
    assert _published(at) == query
    assert {k: widget_values(at).get(k) for k in widgets} == widgets


def test_a_saved_trace_file_link_opens_the_trace_upload():
    """source=trace file: the sidebar offers the trace upload (the old version's only view of that link)."""
    at = _open("app.py", {"source": "trace file"})
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert widget_values(at)["source"] == "trace file"
    assert any("trace file" in i.value.lower() for i in at.info), [i.value for i in at.info]
    assert at.query_params["source"] == "trace file"
