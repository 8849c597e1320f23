"""The Attention (R·W·K) and Influence spans (W·K norm) pages under Streamlit's AppTest, and the page helpers of
`inspector_ui.views.scores` (trace adapter, reach, colours).

Pages run on the shared tiny models (skipped with a reason where ../shared is absent). What is checked is what a user
sees change: the heat map's z data and title, the token view's colours and selection, the figures present.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from tests.conftest import REPO, shared_file

ATTN_PAGE = str(REPO / "pages" / "1_Attention.py")
SPAN_PAGE = str(REPO / "pages" / "2_Influence_spans.py")
DIGITS = "shared: 260123_reverse_L2_only_rwkv7.pth"
V4 = "shared: tiny-rwkv-4v0-660K-FP32.bin"
V52 = "shared: tiny-rwkv-5v2-730K-FP32.bin"  # 12 layers x 8 heads: what these tests' layer/head numbers assume


def _app(page: str, **state):
    from streamlit.testing.v1 import AppTest

    shared_file("tiny-rwkv-5v2-730K-FP32.bin")
    at = AppTest.from_file(page, default_timeout=120)
    state.setdefault("model", V52)  # not the app's default (the demo model), whose shape may change when retrained
    for k, v in state.items():
        at.session_state[k] = v
    return at


def _run(at):
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _heatmaps(at) -> list[dict]:
    """The full-matrix heat maps (titles 'X: A[j, i], ...' / 'B − A: ...')."""
    return [c for c in _charts(at) if "[j, i]" in c["layout"]["title"]["text"]]


def _arr(x) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata" (base64), "shape"} (plotly >= 6)."""
    if isinstance(x, dict) and "bdata" in x:
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        shape = x.get("shape")
        if shape:
            a = a.reshape([int(n) for n in str(shape).split(",")])
        return a.astype(float)
    return np.array([np.nan if v is None else v for v in x] if np.ndim(x) == 1 else
                    [[np.nan if v is None else v for v in row] for row in x], dtype=float)


def _z(fig: dict) -> np.ndarray:
    return _arr(fig["data"][0]["z"])


def _xtitle(fig: dict) -> str:
    return fig["layout"].get("xaxis", {}).get("title", {}).get("text", "")


def _token_views(at) -> list[dict]:
    return [json.loads(c.proto.json) for c in at.get("bidi_component")]


# ------------------------------------------------------------------------------------------------ Attention page


def test_attention_page_select_layer_head_options():
    at = _run(_app(ATTN_PAGE))
    tv = _token_views(at)[0]
    T = len(tv["tokens"])
    assert tv["selected"] == T - 1 == at.session_state["tok"]  # something real at once: the last token
    assert sum(c not in (None, "rgba(0,0,0,0)") for c in tv["colors"]) > 0
    heat = _heatmaps(at)[0]
    z0 = _z(heat)
    assert z0.shape == (T, T) and np.isnan(z0[np.triu_indices(T, 1)]).all()
    assert "layer 11, head 0" in heat["layout"]["title"]["text"]
    grid = [c for c in _charts(at) if c["layout"]["title"]["text"].startswith("A: token")][0]
    assert grid["layout"]["clickmode"] == "event+select"
    assert _z(grid).shape == (12, 8)  # layers x heads of the 5v2 model

    # select a token through session state: colours, values and the heat map's frames move
    at.session_state["tok"] = 20
    _run(at)
    tv2 = _token_views(at)[0]
    assert tv2["selected"] == 20
    assert tv2["colors"] != tv["colors"] and tv2["values"] != tv["values"]
    assert tv2["colors"][20] is None  # the selected token is drawn blue by the view itself
    shapes = _heatmaps(at)[0]["layout"]["shapes"]
    assert any(abs(s["y0"] - 19.5) < 1e-9 for s in shapes)
    np.testing.assert_allclose(_z(_heatmaps(at)[0]), z0, equal_nan=True)  # same head: same matrix

    # another layer and head: another matrix
    at.session_state["layer"] = 3
    at.session_state["head"] = 5
    _run(at)
    heat = _heatmaps(at)[0]
    assert "layer 3, head 5" in heat["layout"]["title"]["text"]
    z1 = _z(heat)
    assert not np.allclose(np.nan_to_num(z1), np.nan_to_num(z0))
    assert np.abs(np.diag(z1)).max() > 0

    # the diagonal (bonus) off: zero diagonal, the rest unchanged
    at.session_state["diag"] = False
    _run(at)
    z2 = _z(_heatmaps(at)[0])
    assert np.abs(np.diag(z2)).max() == 0
    off = np.tril_indices(z1.shape[0], -1)
    np.testing.assert_allclose(z2[off], z1[off], rtol=1e-5, atol=1e-7)
    assert "no diagonal" in _heatmaps(at)[0]["layout"]["title"]["text"]

    # a fixed intensity scale and the colour-blind palette change the colours
    before = _token_views(at)[0]["colors"]
    at.session_state["scale"] = "-2"
    _run(at)
    scaled = _token_views(at)[0]["colors"]
    assert scaled != before
    at.session_state["cb"] = True
    _run(at)
    cb = _token_views(at)[0]["colors"]
    assert any(c and c.startswith("rgba(230,97,1") for c in cb) and not any(c and "214,39,40" in c for c in cb)
    assert _heatmaps(at)[0]["data"][0]["zmax"] == pytest.approx(100.0)  # 10^-(-2): the colour scale follows
    # the overview shows what reads the selected token instead; the camera button saves SVG
    at.session_state["ov"] = "col"
    at.session_state["img"] = "svg"
    _run(at)
    configs = [json.loads(c.proto.config) for c in at.get("plotly_chart")]
    assert configs and all(c["toImageButtonOptions"]["format"] == "svg" for c in configs)
    qp = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert (qp["layer"], qp["head"], qp["tok"], qp["diag"], qp["ov"]) == ("3", "5", "20", "False", "col")  # shareable


def test_attention_page_from_url_query_params():
    at = _app(ATTN_PAGE)
    for k, v in {"layer": "2", "head": "6", "tok": "7", "diag": "False", "scale": "0", "cb": "True"}.items():
        at.query_params[k] = v
    _run(at)
    assert (at.session_state["layer"], at.session_state["head"], at.session_state["tok"]) == (2, 6, 7)
    assert at.session_state["diag"] is False and at.session_state["cb"] is True
    assert _token_views(at)[0]["selected"] == 7
    heat = _heatmaps(at)[0]
    assert "layer 2, head 6" in heat["layout"]["title"]["text"] and heat["data"][0]["zmax"] == pytest.approx(1.0)
    # nonsense in the URL falls back to valid values instead of failing
    at2 = _app(ATTN_PAGE)
    for k, v in {"layer": "99", "head": "x", "tok": "-4", "scale": "7"}.items():
        at2.query_params[k] = v
    _run(at2)
    assert at2.session_state["layer"] in range(12) and at2.session_state["head"] in range(8)
    assert 0 <= at2.session_state["tok"] and at2.session_state["scale"] == "auto"


def test_attention_compare_two_prompts_shared_scale_and_difference():
    prompt = "The Eiffel Tower is located in the city of Paris."
    at = _run(_app(ATTN_PAGE, compare="prompt", prompt=prompt, prompt_b=prompt.replace("Paris", "Pisa!")))
    tvs = _token_views(at)
    assert len(tvs) == 3  # A, B and the difference (same token count, same model)
    heats = _heatmaps(at)
    assert len(heats) == 3 and heats[2]["layout"]["title"]["text"].startswith("B − A")
    assert heats[0]["data"][0]["zmax"] == heats[1]["data"][0]["zmax"]  # one colour scale for both runs
    za, zb, zd = (_z(h) for h in heats)
    np.testing.assert_allclose(zd, zb - za, rtol=1e-5, atol=1e-6, equal_nan=True)
    T = za.shape[0]
    tail = slice(prompt.index("Paris"), T)
    assert np.allclose(np.nan_to_num(zd[: prompt.index("Paris")]), 0)  # identical prefix: no difference
    assert np.abs(np.nan_to_num(zd[tail])).max() > 0
    # a different length: two columns, no difference view
    at.session_state["prompt_b"] = "Hello there."
    _run(at)
    assert len(_token_views(at)) == 2 and len(_heatmaps(at)) == 2
    assert _token_views(at)[1]["selected"] == len("Hello there.") - 1  # B clamps the selection to its length
    T_a = len(prompt)
    assert at.session_state["tok"] == T_a - 1
    _run(at)  # ... and that clamped view does not count as a click that moves the shared selection
    assert at.session_state["tok"] == T_a - 1 and _token_views(at)[0]["selected"] == T_a - 1


def test_attention_v4_groups_and_digits_reversal():
    at = _run(_app(ATTN_PAGE, model=V4))
    assert any("no heads" in i.value for i in at.info)
    rows = _z(_heatmaps(at)[0])
    np.testing.assert_allclose(np.nansum(rows, 1), 1.0, rtol=1e-4)  # v4 weights: rows sum to 1 (group mean)

    at = _run(_app(ATTN_PAGE, model=DIGITS, prompt="31415926,62951413", layer=0, head=0, diag=False))
    z = np.nan_to_num(_z(_heatmaps(at)[0]))
    n = 8  # digits before ','
    reads = [int(np.argmax(z[j, :n])) for j in range(n + 1, 16)]
    # the queries after ',' read the input backwards: a falling line (the reversal) in layer 0, head 0
    assert np.corrcoef(np.arange(len(reads)), reads)[0, 1] < -0.8, reads


# ------------------------------------------------------------------------------------------------ Influence spans page


def test_spans_page_curves_reach_and_options():
    at = _run(_app(SPAN_PAGE, model="shared: tiny-rwkv-6v0-1m-FP32.bin"))
    tv = _token_views(at)[0]
    T = len(tv["tokens"])
    assert tv["selected"] == T // 4
    assert min(v for v in tv["values"]) >= 0  # spans are norms
    charts = _charts(at)
    curves = [c for c in charts if _xtitle(c).startswith("distance")]
    assert len(curves) == 1 and len(curves[0]["data"]) == 8  # one curve per head
    assert _arr(curves[0]["data"][0]["y"])[0] == pytest.approx(1.0)  # relative curves start at 1
    reach = [c for c in charts if "reach to" in c["layout"]["title"]["text"]]
    assert len(reach) == 1
    z0 = _z(_heatmaps(at)[0])
    assert np.nanmin(z0) >= 0
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 8

    at.session_state["rel"] = False
    at.session_state["logy"] = True
    at.session_state["head"] = 3
    at.session_state["tok"] = 5
    at.session_state["ov"] = "end"
    at.session_state["thr"] = 0.3
    _run(at)
    charts = _charts(at)
    curves = [c for c in charts if _xtitle(c).startswith("distance")][0]
    assert curves["layout"]["yaxis"]["type"] == "log"
    assert curves["data"][3]["line"]["width"] > curves["data"][0]["line"]["width"]  # the open head stands out
    assert _arr(curves["data"][0]["y"])[0] != pytest.approx(1.0)
    assert "30%" in [c for c in charts if "reach to" in c["layout"]["title"]["text"]][0]["layout"]["title"]["text"]
    assert not np.allclose(np.nan_to_num(_z(_heatmaps(at)[0])), np.nan_to_num(z0))  # head 3, not head 0
    assert _token_views(at)[0]["selected"] == 5


def test_spans_page_compare_models():
    at = _run(_app(SPAN_PAGE, compare="model", model_b=DIGITS, prompt="31415926,"))
    # 5v2 (12 layers x 8 heads) against the 2-layer digits model: both shown, no difference view
    assert len(_token_views(at)) == 2
    at.session_state["layer"] = 5
    _run(at)
    assert any("has no layer 5" in w.value for w in at.warning)


# ------------------------------------------------------------------------------------------------ helpers


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
        inputs = scores_view._model_inputs(rid, lm.model, tokens)
        ids, probs = session.predictions(key, tokens, 16)
        assert len(inputs) == lm.model.cfg.n_layer and len(calls) == 1
        session.predictions.clear()  # nothing offered any more: a forward of its own
        ids2, probs2 = session.predictions(key, tokens, 16)
        assert len(calls) == 2
    finally:
        del lm.model.forward
    assert ids.shape == (len(tokens), 16) and np.array_equal(ids, ids2)
    np.testing.assert_allclose(probs, probs2, rtol=1e-6, atol=1e-7)
