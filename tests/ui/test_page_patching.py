"""The Patching page under Streamlit's AppTest: the demo model's fact pair filled in by default, AtP beside exact
patching with the engine's numbers, the URL state, a display option redrawing from the kept results, exact
patching on listed tokens of a long prompt, the state transplant and steering, and bad input as one line.
The numbers themselves are tested in tests/analysis/test_patching.py, test_attribution.py and test_transplant.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from rwkv_core.analysis import patching as PA
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import ByteTokenizer
from tests.conftest import REPO
from tests.ui.page_helpers import chart_specs, page_session, plotly_array

CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"


PAGE = REPO / "pages" / "7_Patching.py"


def _page(**query):
    """The page as the main script (as the score pages' tests open theirs); the URL's query parameters set."""
    at = page_session(PAGE, timeout_s=600)
    for k, v in query.items():
        at.query_params[k] = v
    return at


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _press(at, label: str):
    next(b for b in at.button if b.label == label).click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_defaults_patch_and_figures_equal_the_engine():
    at = _ok(_page().run())
    ss = at.session_state
    assert ss["pt_corrupt"] == CORRUPT and ss["pt_answer"] == " Paris" and ss["pt_counter"] == " Rome"
    assert ss["pt_align"] == "spans" and ss["pt_cspan"] == "The Eiffel Tower" and ss["pt_rspan"] == "The Colosseum"
    _ok(_press(at, "Patch"))
    figs = chart_specs(at)
    heat = [f for f in figs if f["data"][0]["type"] == "heatmap"]
    assert len(heat) == 8  # 4 sites x (AtP, exact)
    model = load_model(REPO / "models" / "demo-v7.pth")
    pair = PA.prepare_pair(model, ByteTokenizer(), CLEAN, CORRUPT, " Paris", " Rome", align_by="spans",
                           clean_span="The Eiffel Tower", corrupt_span="The Colosseum")
    labels = {m.label: m.value for m in at.metric}
    assert float(labels["LD clean"]) == pytest.approx(pair.clean_value, rel=1e-3)
    exact = PA.patch_grids(pair, ("state",))
    shown = next(f for f in heat if "Recurrent state" in f["layout"]["title"]["text"]
                 and "exact" in f["layout"]["title"]["text"])
    np.testing.assert_allclose(plotly_array(shown["data"][0]["z"]), exact.grid("state"), atol=1e-4)
    assert any("correlation r = " in c.value for c in at.caption)
    qp = {k: at.query_params[k] for k in at.query_params}
    assert qp["pt_corrupt"] == CORRUPT and qp["pt_sites"] == "resid|att|ffn|state" and qp["pt_align"] == "spans"
    # a display option redraws from the kept results
    kept = dict(at.session_state["pt_results"])
    at.radio(key="pt_imgfmt").set_value("svg").run()
    _ok(at)
    assert len([f for f in chart_specs(at) if f["data"][0]["type"] == "heatmap"]) == 8
    key = next(iter(kept))
    assert at.session_state["pt_results"][key] is kept[key]


def test_opened_from_a_link_with_settings():
    at = _ok(_page(pt_corrupt="The Louvre is located in the city of", pt_answer=" Paris", pt_counter=" London",
                   pt_align="end", pt_sites="resid|state").run())
    assert at.session_state["pt_corrupt"] == "The Louvre is located in the city of"
    assert [s for s in PA.SITES if at.session_state[f"pt_site_{s}"]] == ["resid", "state"]
    assert at.session_state["pt_align"] == "end"
    _ok(_press(at, "Patch"))
    assert len([f for f in chart_specs(at) if f["data"][0]["type"] == "heatmap"]) == 4


def test_long_prompt_exact_on_listed_tokens_atp_everywhere():
    long_clean = "Facts. " * 6 + CLEAN  # 42 + 43 bytes: longer than EXACT_FULL_TOKENS
    at = _page()
    at.session_state["prompt"] = long_clean
    at.run()
    at.text_area(key="pt_corrupt").set_value("Facts. " * 6 + CORRUPT)
    for site in ("att", "ffn", "state"):
        at.checkbox(key=f"pt_site_{site}").uncheck()
    at.text_input(key="pt_tokens").set_value("80-84")
    _ok(_press(at, "Patch"))
    entry = next(iter(at.session_state["pt_results"].values()))
    exact, atp = entry["exact"].grid("resid"), entry["atp"].grid("resid")
    rows = sorted(set(np.nonzero(np.isfinite(exact))[0]))
    assert rows == [80, 81, 82, 83, 84] and np.isfinite(atp[45:]).all()
    # nothing listed: the marked span, the last token and a few between (not every token)
    at.text_input(key="pt_tokens").set_value("")
    _ok(_press(at, "Patch"))
    entry = next(iter(at.session_state["pt_results"].values()))
    rows = sorted(set(np.nonzero(np.isfinite(entry["exact"].grid("resid")))[0]))
    # clean 42..44 ('The' of the 16-token span) have no partner in the 13-token corrupted span
    assert {45, 57, 84} <= set(rows) and 42 not in rows and len(rows) < 30 and entry["tokens"] == rows


@pytest.mark.parametrize("field,value,message", [
    ("pt_counter", " Paris", "no different token"),
    ("pt_tokens", "3, x", "list token positions"),
    ("pt_rspan", "The Pantheon", "does not occur in the corrupted prompt")])
def test_bad_input_is_one_line(field, value, message):
    at = _page().run()
    widget = at.text_input(key=field)
    widget.set_value(value)
    _press(at, "Patch")
    assert [e.value for e in at.error] and message in at.error[0].value and "\n" not in at.error[0].value


def test_state_transplant_and_steering():
    at = _ok(_page().run())
    _ok(_press(at, "Transplant"))
    titles = [f["layout"]["title"]["text"] for f in chart_specs(at)]
    assert any("state transplant changes" in t for t in titles) and any("Next-token predictions" in t for t in titles)
    at.number_input(key="pt_pos").set_value(4)
    _ok(_press(at, "Steer"))
    assert any("steering changes" in f["layout"]["title"]["text"] for f in chart_specs(at))
    at.text_input(key="pt_layers").set_value("9")
    _press(at, "Transplant")
    assert at.error and "layers must be between 0 and 3" in at.error[0].value

