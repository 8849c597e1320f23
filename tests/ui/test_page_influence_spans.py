"""The Influence spans page (W·K norm) under Streamlit's AppTest: span curves, reach, relative / log options, and
two models side by side.

Runs on the shared tiny models (skipped with a reason where ../shared is absent).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO
from tests.ui.page_helpers import (
    chart_specs,
    heatmap_z,
    plotly_array,
    run_clean,
    score_heatmaps,
    score_page_session,
    token_views,
)

SPAN_PAGE = str(REPO / "pages" / "2_Influence_spans.py")
DIGITS = "shared: 260123_reverse_L2_only_rwkv7.pth"


def _xtitle(fig: dict) -> str:
    return fig["layout"].get("xaxis", {}).get("title", {}).get("text", "")


def test_spans_page_curves_reach_and_options():
    at = run_clean(score_page_session(SPAN_PAGE, model="shared: tiny-rwkv-6v0-1m-FP32.bin"))
    tv = token_views(at)[0]
    T = len(tv["tokens"])
    assert tv["selected"] == T // 4
    assert min(v for v in tv["values"]) >= 0  # spans are norms
    charts = chart_specs(at)
    curves = [c for c in charts if _xtitle(c).startswith("distance")]
    assert len(curves) == 1 and len(curves[0]["data"]) == 8  # one curve per head
    assert plotly_array(curves[0]["data"][0]["y"])[0] == pytest.approx(1.0)  # relative curves start at 1
    reach = [c for c in charts if "reach to" in c["layout"]["title"]["text"]]
    assert len(reach) == 1
    z0 = heatmap_z(score_heatmaps(at)[0])
    assert np.nanmin(z0) >= 0
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 8

    at.session_state["rel"] = False
    at.session_state["logy"] = True
    at.session_state["head"] = 3
    at.session_state["tok"] = 5
    at.session_state["ov"] = "end"
    at.session_state["thr"] = 0.3
    run_clean(at)
    charts = chart_specs(at)
    curves = [c for c in charts if _xtitle(c).startswith("distance")][0]
    assert curves["layout"]["yaxis"]["type"] == "log"
    assert curves["data"][3]["line"]["width"] > curves["data"][0]["line"]["width"]  # the open head stands out
    assert plotly_array(curves["data"][0]["y"])[0] != pytest.approx(1.0)
    assert "30%" in [c for c in charts if "reach to" in c["layout"]["title"]["text"]][0]["layout"]["title"]["text"]
    assert not np.allclose(np.nan_to_num(heatmap_z(score_heatmaps(at)[0])), np.nan_to_num(z0))  # head 3, not head 0
    assert token_views(at)[0]["selected"] == 5


def test_spans_page_compare_models():
    at = run_clean(score_page_session(SPAN_PAGE, compare="model", model_b=DIGITS, prompt="31415926,"))
    # 5v2 (12 layers x 8 heads) against the 2-layer digits model: both shown, no difference view
    assert len(token_views(at)) == 2
    at.session_state["layer"] = 5
    run_clean(at)
    assert any("has no layer 5" in w.value for w in at.warning)


def test_token_view_values_are_the_open_heads_spans():
    """The token view colours the selected token's row S[sel, i] (earlier tokens) and column S[j, sel] (later ones)
    of the open layer and head: equal to the engine's full span matrix (demo v7, in the repository). The row is
    computed for the open layer alone, so a layer change must bring that layer's row."""
    from rwkv_core.analysis import scores as S
    from rwkv_core.io.checkpoint import load_model
    from tests.ui.page_helpers import page_session

    prompt = "The Eiffel Tower is in Paris. The Colosseum is in Rome. " * 2
    sel = 40
    model = load_model(str(REPO / "models" / "demo-v7.pth"))
    at = None
    for layer, head in ((1, 2), (3, 0)):
        if at is None:
            at = run_clean(page_session(SPAN_PAGE, model="demo: demo v7 facts+retrieval", prompt=prompt, tok=sel,
                                        layer=layer, head=head))
        else:
            at.session_state["layer"], at.session_state["head"] = layer, head
            run_clean(at)
        tv = token_views(at)[0]
        assert tv["selected"] == sel
        si = S.capture_score_inputs(model, list(prompt.encode()), layers=[layer])[0]
        full = S.full_spans(si, head).numpy()  # [T, T]: S[j, i]
        T = full.shape[0]
        expect = np.where(np.arange(T) <= sel, full[sel, :], full[:, sel])
        np.testing.assert_allclose(tv["values"], expect, rtol=1e-3)  # the view carries 4 significant digits
