"""The Time decay page's CSV downloads in a real Chromium: the page hands Streamlit callables (built on click, not on
every rerun), so a click must still bring the full table: the per-token table of the layer shown and the state
sizes of every layer, on the demo RWKV-7 (in the repository)."""
from __future__ import annotations

import csv
import io
from urllib.parse import urlencode

from tests.browser.conftest import app_exceptions, open_app

DEMO_V7 = "demo: demo v7 facts+retrieval"  # in the repository; 4 layers x 128 channels (4 heads of 32)
FIRST_RUN_MS = 240_000  # a cold server loads torch and a model on the first run of a page (loaded 2-core machine)


def _download(page, label: str) -> list[dict]:
    """Click the download button whose label starts with `label`; the CSV it brings, as rows."""
    button = page.get_by_test_id("stDownloadButton").filter(has_text=label).first
    with page.expect_download(timeout=120_000) as info:
        button.click()
    path = info.value.path()
    return list(csv.DictReader(io.StringIO(open(path, encoding="utf-8").read())))


def test_decay_csv_built_on_click(base_url, page):
    prompt = "31415926,"  # 9 tokens (one per byte)
    open_app(page, f"{base_url}/Time_decay?{urlencode({'model': DEMO_V7, 'prompt': prompt})}", FIRST_RUN_MS)
    assert not app_exceptions(page)
    rows = _download(page, "Per-token decays and retention, layer 3")
    assert len(rows) == 9 * 128  # T x C of the layer shown (the last)
    assert {"layer", "token", "head", "channel", "decay", "half_life", "retention_from_0"} <= set(rows[0])
    assert {r["layer"] for r in rows} == {"3"} and 0 < float(rows[0]["decay"]) < 1
    rows = _download(page, "State sizes, all layers")
    assert len(rows) == 4 * 9 * 4  # L x T x H
    assert all(float(r["frobenius"]) >= float(r["max_abs"]) > 0 for r in rows)
    assert not app_exceptions(page)


def test_decay_closed_sections_are_drawn_when_opened(base_url, page):
    """The bonus heat map and the per-head summary wait in closed expanders (no figure for the browser on a first
    render); a click opens them and the server draws them then."""
    prompt = "31415926,"
    open_app(page, f"{base_url}/Time_decay?{urlencode({'model': DEMO_V7, 'prompt': prompt})}", FIRST_RUN_MS)
    from playwright.sync_api import expect

    charts = page.get_by_test_id("stPlotlyChart")
    expect(charts).to_have_count(6, timeout=60_000)  # paper, heat map, tokens x heads, spectrum, retention, state
    bonus = page.get_by_test_id("stExpander").filter(has_text="Bonus of the current token")
    assert bonus.get_by_test_id("stPlotlyChart").count() == 0
    bonus.get_by_text("Bonus of the current token").click()
    bonus.get_by_test_id("stPlotlyChart").first.wait_for(timeout=60_000)
    expect(charts).to_have_count(7)
    summary = page.get_by_test_id("stExpander").filter(has_text="Per-head summary over the prompt")
    summary.get_by_text("Per-head summary over the prompt").click()
    summary.get_by_test_id("stDataFrame").first.wait_for(timeout=60_000)
    assert not app_exceptions(page)


def test_attention_csvs_built_on_click(base_url, page):
    """The Attention page hands its CSVs over as callables too: a click brings the open head's token values (equal
    to the engine's A: the selected token's row for earlier tokens, its column for later ones) and the layer x head
    overview."""
    import numpy as np

    from rwkv_core.analysis import scores as S
    from rwkv_core.io.checkpoint import load_model
    from tests.conftest import REPO

    prompt = "The Eiffel Tower is in Paris."
    sel, layer, head = 10, 2, 1
    query = {"model": DEMO_V7, "prompt": prompt, "layer": layer, "head": head, "tok": sel}
    open_app(page, f"{base_url}/Attention?{urlencode(query)}", FIRST_RUN_MS)
    assert not app_exceptions(page)
    rows = _download(page, "Token values (CSV)")
    T = len(prompt)  # one token per byte
    assert [int(r["token"]) for r in rows] == list(range(T)) and rows[sel]["role"] == "selected"
    si = S.capture_score_inputs(load_model(str(REPO / "models" / "demo-v7.pth")), list(prompt.encode()),
                                layers=[layer])[0]
    A = S.full_scores(si, head).numpy()  # [T, T]: A[j, i]
    expect = np.where(np.arange(T) <= sel, A[sel, :], A[:, sel])
    np.testing.assert_allclose([float(r["A"]) for r in rows], expect, rtol=1e-4, atol=1e-7)
    rows = _download(page, "Overview (CSV)")
    assert len(rows) == 4 * 4  # layers x heads of the demo model
    assert not app_exceptions(page)
