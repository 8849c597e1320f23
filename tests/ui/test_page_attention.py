"""The Attention page (R·W·K scores) under Streamlit's AppTest: layer, head, token, diagonal, scale and palette
choices, the URL, compare mode, v4 groups and the digit-reversal model.

Runs on the shared tiny models (skipped with a reason where ../shared is absent). What is checked is what a user sees
change: the heat map's z data and title, the token view's colours and selection, the figures present.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO
from tests.ui.page_helpers import (
    chart_specs,
    heatmap_z,
    run_clean,
    score_heatmaps,
    score_page_session,
    token_views,
)

ATTN_PAGE = str(REPO / "pages" / "1_Attention.py")
DIGITS = "shared: 260123_reverse_L2_only_rwkv7.pth"
V4 = "shared: tiny-rwkv-4v0-660K-FP32.bin"


def test_attention_page_select_layer_head_options():
    at = run_clean(score_page_session(ATTN_PAGE))
    tv = token_views(at)[0]
    T = len(tv["tokens"])
    assert tv["selected"] == T - 1 == at.session_state["tok"]  # something real at once: the last token
    assert sum(c not in (None, "rgba(0,0,0,0)") for c in tv["colors"]) > 0
    heat = score_heatmaps(at)[0]
    z0 = heatmap_z(heat)
    assert z0.shape == (T, T) and np.isnan(z0[np.triu_indices(T, 1)]).all()
    assert "layer 11, head 0" in heat["layout"]["title"]["text"]
    grid = [c for c in chart_specs(at) if c["layout"]["title"]["text"].startswith("A: token")][0]
    assert grid["layout"]["clickmode"] == "event+select"
    assert heatmap_z(grid).shape == (12, 8)  # layers x heads of the 5v2 model

    # select a token through session state: colours, values and the heat map's frames move
    at.session_state["tok"] = 20
    run_clean(at)
    tv2 = token_views(at)[0]
    assert tv2["selected"] == 20
    assert tv2["colors"] != tv["colors"] and tv2["values"] != tv["values"]
    assert tv2["colors"][20] is None  # the selected token is drawn blue by the view itself
    shapes = score_heatmaps(at)[0]["layout"]["shapes"]
    assert any(abs(s["y0"] - 19.5) < 1e-9 for s in shapes)
    np.testing.assert_allclose(heatmap_z(score_heatmaps(at)[0]), z0, equal_nan=True)  # same head: same matrix

    # another layer and head: another matrix
    at.session_state["layer"] = 3
    at.session_state["head"] = 5
    run_clean(at)
    heat = score_heatmaps(at)[0]
    assert "layer 3, head 5" in heat["layout"]["title"]["text"]
    z1 = heatmap_z(heat)
    assert not np.allclose(np.nan_to_num(z1), np.nan_to_num(z0))
    assert np.abs(np.diag(z1)).max() > 0

    # the diagonal (bonus) off: zero diagonal, the rest unchanged
    at.session_state["diag"] = False
    run_clean(at)
    z2 = heatmap_z(score_heatmaps(at)[0])
    assert np.abs(np.diag(z2)).max() == 0
    off = np.tril_indices(z1.shape[0], -1)
    np.testing.assert_allclose(z2[off], z1[off], rtol=1e-5, atol=1e-7)
    assert "no diagonal" in score_heatmaps(at)[0]["layout"]["title"]["text"]

    # a fixed intensity scale and the colour-blind palette change the colours
    before = token_views(at)[0]["colors"]
    at.session_state["scale"] = "-2"
    run_clean(at)
    scaled = token_views(at)[0]["colors"]
    assert scaled != before
    at.session_state["cb"] = True
    run_clean(at)
    cb = token_views(at)[0]["colors"]
    assert any(c and c.startswith("rgba(230,97,1") for c in cb) and not any(c and "214,39,40" in c for c in cb)
    assert score_heatmaps(at)[0]["data"][0]["zmax"] == pytest.approx(100.0)  # 10^-(-2): the colour scale follows
    # the overview shows what reads the selected token instead; the camera button saves SVG
    at.session_state["ov"] = "col"
    at.session_state["img"] = "svg"
    run_clean(at)
    configs = [json.loads(c.proto.config) for c in at.get("plotly_chart")]
    assert configs and all(c["toImageButtonOptions"]["format"] == "svg" for c in configs)
    qp = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert (qp["layer"], qp["head"], qp["tok"], qp["diag"], qp["ov"]) == ("3", "5", "20", "False", "col")  # shareable


def test_attention_page_from_url_query_params():
    at = score_page_session(ATTN_PAGE)
    for k, v in {"layer": "2", "head": "6", "tok": "7", "diag": "False", "scale": "0", "cb": "True"}.items():
        at.query_params[k] = v
    run_clean(at)
    assert (at.session_state["layer"], at.session_state["head"], at.session_state["tok"]) == (2, 6, 7)
    assert at.session_state["diag"] is False and at.session_state["cb"] is True
    assert token_views(at)[0]["selected"] == 7
    heat = score_heatmaps(at)[0]
    assert "layer 2, head 6" in heat["layout"]["title"]["text"] and heat["data"][0]["zmax"] == pytest.approx(1.0)
    # nonsense in the URL falls back to valid values instead of failing
    at2 = score_page_session(ATTN_PAGE)
    for k, v in {"layer": "99", "head": "x", "tok": "-4", "scale": "7"}.items():
        at2.query_params[k] = v
    run_clean(at2)
    assert at2.session_state["layer"] in range(12) and at2.session_state["head"] in range(8)
    assert 0 <= at2.session_state["tok"] and at2.session_state["scale"] == "auto"


def test_attention_compare_two_prompts_shared_scale_and_difference():
    prompt = "The Eiffel Tower is located in the city of Paris."
    at = run_clean(score_page_session(ATTN_PAGE, compare="prompt", prompt=prompt, prompt_b=prompt.replace("Paris", "Pisa!")))
    tvs = token_views(at)
    assert len(tvs) == 3  # A, B and the difference (same token count, same model)
    heats = score_heatmaps(at)
    assert len(heats) == 3 and heats[2]["layout"]["title"]["text"].startswith("B − A")
    assert heats[0]["data"][0]["zmax"] == heats[1]["data"][0]["zmax"]  # one colour scale for both runs
    za, zb, zd = (heatmap_z(h) for h in heats)
    np.testing.assert_allclose(zd, zb - za, rtol=1e-5, atol=1e-6, equal_nan=True)
    T = za.shape[0]
    tail = slice(prompt.index("Paris"), T)
    assert np.allclose(np.nan_to_num(zd[: prompt.index("Paris")]), 0)  # identical prefix: no difference
    assert np.abs(np.nan_to_num(zd[tail])).max() > 0
    # a different length: two columns, no difference view
    at.session_state["prompt_b"] = "Hello there."
    run_clean(at)
    assert len(token_views(at)) == 2 and len(score_heatmaps(at)) == 2
    assert token_views(at)[1]["selected"] == len("Hello there.") - 1  # B clamps the selection to its length
    T_a = len(prompt)
    assert at.session_state["tok"] == T_a - 1
    run_clean(at)  # ... and that clamped view does not count as a click that moves the shared selection
    assert at.session_state["tok"] == T_a - 1 and token_views(at)[0]["selected"] == T_a - 1


def test_attention_v4_groups_and_digits_reversal():
    at = run_clean(score_page_session(ATTN_PAGE, model=V4))
    assert any("no heads" in i.value for i in at.info)
    rows = heatmap_z(score_heatmaps(at)[0])
    np.testing.assert_allclose(np.nansum(rows, 1), 1.0, rtol=1e-4)  # v4 weights: rows sum to 1 (group mean)

    at = run_clean(score_page_session(ATTN_PAGE, model=DIGITS, prompt="31415926,62951413", layer=0, head=0, diag=False))
    z = np.nan_to_num(heatmap_z(score_heatmaps(at)[0]))
    n = 8  # digits before ','
    reads = [int(np.argmax(z[j, :n])) for j in range(n + 1, 16)]
    # the queries after ',' read the input backwards: a falling line (the reversal) in layer 0, head 0
    assert np.corrcoef(np.arange(len(reads)), reads)[0, 1] < -0.8, reads


def test_compare_model_opens_on_another_model_with_its_own_scale_when_the_versions_differ():
    """Compare = model opens with model B another offered model than A (the v6 demo beside the v7 demo), not A again
    (a zero difference). v7 scores run far larger than v6 ones, so each run has its own colour scale, and the v7
    caption names run A. In compare = prompt the difference is labelled as the score it is, run B − run A."""
    from tests.ui.page_helpers import app_session

    at = run_clean(app_session("pages/1_Attention.py", compare="model"))
    model_a, model_b = at.selectbox(key="model").value, at.selectbox(key="model_b").value
    assert model_a.startswith("demo:") and "v7" in model_a
    assert model_b.startswith("demo:") and "v6" in model_b
    heats = score_heatmaps(at)
    assert len(heats) == 2  # no difference of two architectures
    for heat in heats:
        assert heat["data"][0]["zmax"] == pytest.approx(float(np.nanmax(np.abs(heatmap_z(heat)))), rel=1e-5)
    assert heats[0]["data"][0]["zmax"] != pytest.approx(heats[1]["data"][0]["zmax"], rel=1e-3)
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Run A (v7): A uses the modified key") for c in captions), captions
    assert not any(c.startswith("v7: A uses") for c in captions), captions
    assert any("its own colour scale" in c for c in captions), captions

    prompt = "The Eiffel Tower is located in the city of"
    at = run_clean(app_session("pages/1_Attention.py", compare="prompt", prompt=prompt,
                               prompt_b=prompt.replace("Eiffel", "Effiel")))
    headers = [h.value for h in at.subheader if h.value.startswith("Difference")]
    assert headers and headers[0].startswith("Difference of the scores A: run B − run A (layer "), headers


def test_long_prompt_heat_map_is_the_window_of_the_whole_prompts_scores():
    """On a prompt longer than the heat map's window the page computes the window's matrix from the window's
    inputs alone: it must equal that window of the whole prompt's A (demo v7, in the repository)."""
    from inspector_ui.views.scores import MAX_HEATMAP, heat_window
    from rwkv_core.analysis import scores as S
    from rwkv_core.io.checkpoint import load_model
    from tests.ui.page_helpers import page_session

    prompt = ("The Eiffel Tower is in Paris. " * 30)[: MAX_HEATMAP + 130]  # one token per byte
    at = run_clean(page_session(ATTN_PAGE, model="demo: demo v7 facts+retrieval", prompt=prompt, tok=200,
                                layer=2, head=1))
    T = len(prompt)
    a, b = heat_window(T, 200)
    assert (a, b) != (0, T)
    z = heatmap_z(score_heatmaps(at)[0])
    assert z.shape == (b - a, b - a)
    model = load_model(str(REPO / "models" / "demo-v7.pth"))
    si = S.capture_score_inputs(model, list(prompt.encode()), layers=[2])[0]
    full = S.full_scores(si, 1).numpy()[a:b, a:b]
    full[np.triu_indices(b - a, 1)] = np.nan
    np.testing.assert_allclose(z, full, rtol=2e-4, atol=1e-6 * np.nanmax(np.abs(full)), equal_nan=True)


def test_opened_after_the_home_page_the_capture_runs_no_head_and_the_hover_is_the_homes():
    """The home page made the prompt's predictions; the Attention page's capture then skips the head over the
    prompt (a quarter of a 0.1B forward at 1,000 tokens), and its token view hovers the same predictions."""
    import torch

    from rwkv_core.model.rwkv import RWKV
    from tests.ui.page_helpers import app_session, page_session

    demo = "demo: demo v7 facts+retrieval"
    prompt = "The Eiffel Tower is in the city of Paris, and the Colosseum is in Rome."
    home = run_clean(app_session(model=demo, prompt=prompt))
    heads: list[int] = []
    unembed = RWKV.unembed

    def counting(self, resid):
        heads.append(resid.shape[-2] if resid.dim() > 1 else 1)
        return unembed(self, resid)

    RWKV.unembed = counting
    try:
        at = run_clean(page_session(ATTN_PAGE, model=demo, prompt=prompt))
    finally:
        RWKV.unembed = unembed
    assert heads == [], heads  # no head over any token: the predictions were the home page's
    assert token_views(at)[0]["tips"] == token_views(home)[0]["tips"]
    assert score_heatmaps(at) and token_views(at)[0]["tips"] is not None
