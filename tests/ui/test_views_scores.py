"""The page helpers of `inspector_ui.views.scores` (trace adapter, reach, colours, the first load's single forward).
The Attention and Influence spans pages themselves are tested in tests/ui/test_page_attention.py and
tests/ui/test_page_influence_spans.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import shared_file

V52 = "shared: tiny-rwkv-5v2-730K-FP32.bin"


def test_trace_inputs_equal_live_capture():
    """Scores from a trace file's arrays (no model) equal those from the live capture, v5.2 and v7."""
    from rwkv_core.analysis import scores as S
    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.trace_file import Trace, build_trace

    for name, tokens in (("tiny-rwkv-5v2-730K-FP32.bin", list(b"Hello, world.")),
                         ("260123_reverse_L2_only_rwkv7.pth", [3, 1, 4, 1, 5, 9, 10, 9, 5])):
        model = load_model(str(shared_file(name)))
        arrays = build_trace(model, tokens, layers=[1])
        meta = json.loads(str(arrays["meta"]))
        trace = Trace({k: v for k, v in arrays.items() if k != "meta"}, meta)
        si_t = S.inputs_from_trace(trace.arrays, model.cfg, trace.layers)[0]  # what the pages use for a trace
        si_m = S.capture_score_inputs(model, tokens, layers=[1])[0]
        for h in range(si_m.H):
            a_t, a_m = S.full_scores(si_t, h), S.full_scores(si_m, h)
            torch.testing.assert_close(a_t, a_m, rtol=1e-4, atol=1e-5 * float(a_m.abs().max()))
            torch.testing.assert_close(S.full_spans(si_t, h), S.full_spans(si_m, h), rtol=1e-4, atol=1e-6)


def test_reach_from_spans_matches_span_reach():
    from inspector_ui.views.scores import reach_from_spans
    from rwkv_core.analysis import scores as S

    rng = np.random.default_rng(0)
    T = 40
    logw = -rng.uniform(0.01, 0.6, size=(T, 2, 4))
    si = S.ScoreInputs.from_arrays("6", r=rng.normal(size=(T, 8)), k=rng.normal(size=(T, 8)),
                                   v=rng.normal(size=(T, 8)), logw=logw.reshape(T, 8), u=rng.normal(size=8), n_head=2)
    Sm = S.full_spans(si, 1).numpy()
    reach, cens = reach_from_spans(Sm, 0.2)
    for i in range(T):
        r, c = S.span_reach(Sm[i:, i], 0.2)
        assert reach[i] == r and cens[i] == c


def test_token_colors_and_scale():
    from inspector_ui.views.scores import scale_factor, token_css

    vals = [0.5, -1.0, 0.0, 2.0, float("nan")]
    f = scale_factor("auto", [np.array([0.5, -1.0, 0.0])])  # the selected token (3) left out by the page
    assert f == 1.0
    cols = token_css(vals, f, selected=3)
    assert cols[0].startswith("rgba(214,39,40") and cols[1].startswith("rgba(44,160,44")
    assert cols[2] == cols[4] == "rgba(0,0,0,0)" and cols[3] is None  # the selected one: blue from the view
    assert token_css([1.0, -1.0], 1.0, colorblind=True)[0].startswith("rgba(230,97,1")
    assert scale_factor("-2", []) == pytest.approx(0.01)  # |A| x 10^s: saturates at |A| = 100


def test_score_capture_gives_the_token_view_its_predictions_without_a_second_forward():
    """A score page's first load: the capture's logits become the token view's top-16 predictions (the same
    numbers a separate forward gives), so the model runs once per prompt, not twice."""
    from inspector_ui import resources, session
    from inspector_ui.views import scores as scores_view

    key = (V52, "cpu", "fp32")
    shared_file("tiny-rwkv-5v2-730K-FP32.bin")
    lm = resources.loaded_model(key)
    tokens = tuple(lm.tokenizer.encode("The Eiffel Tower is located in the city of").ids)
    rid = ("model", *key, "test-first-load")
    calls = []
    forward = lm.model.forward
    lm.model.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)  # counts every forward
    try:
        scores_view._model_inputs.clear()
        session.predictions.clear()
        session._OFFERED.clear()  # no predictions known: the capture runs the head
        inputs = scores_view._model_inputs(rid, lm.model, tokens)
        ids, probs = session.predictions(key, tokens, 16)
        assert len(inputs) == lm.model.cfg.n_layer and len(calls) == 1
        session.predictions.clear()
        session._OFFERED.clear()  # nothing known any more: a forward of its own
        ids2, probs2 = session.predictions(key, tokens, 16)
        assert len(calls) == 2
    finally:
        del lm.model.forward
    assert ids.shape == (len(tokens), 16) and np.array_equal(ids, ids2)
    np.testing.assert_allclose(probs, probs2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("version", ["6", "7"])
def test_row_col_without_the_diagonal_is_the_engines_and_costs_no_second_run(version, monkeypatch):
    """The diagonal toggle: the view's row and column without the diagonal equal the engine's diagonal=False ones,
    from the one computation the page made with it (the bonus entry A[sel, sel] is the only difference)."""
    from inspector_ui.views import scores as scores_view
    from rwkv_core.analysis import scores as S
    from rwkv_core.io.checkpoint import detect_config
    from rwkv_core.io.synthetic import random_state_dict
    from rwkv_core.model.rwkv import RWKV

    sd = random_state_dict(version, n_layer=3, n_embd=64, head_size=16, vocab_size=256, seed=4)
    model = RWKV.from_state_dict(detect_config(sd), sd)
    tokens = list(range(3, 60))
    inputs = S.capture_score_inputs(model, tokens)
    calls = []
    engine = S.row_and_column
    monkeypatch.setattr(S, "row_and_column", lambda *a, **kw: calls.append(kw) or engine(*a, **kw))
    rid = ("model", f"diag-test-{version}")
    for sel in (0, 30, 56):
        with_diag = scores_view.row_col(rid, sel, True, True, inputs)
        without = scores_view.row_col(rid, sel, False, True, inputs)
        want = engine(inputs, sel, diagonal=False, spans="col")
        for name in ("row", "col", "span_col"):
            np.testing.assert_array_equal(without[name], want[name].numpy())
        assert with_diag["row"][..., sel].any() and not without["row"][..., sel].any()
    assert len(calls) == 3  # one per token, none for the toggle
