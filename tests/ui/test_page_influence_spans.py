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
