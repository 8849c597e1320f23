"""The Patching page in a real Chromium: opened from a link with the demo fact pair, Patch draws AtP and exact heat
maps for every site with their correlation; hovering a cell shows its token, layer and values; a bad counter answer
is one line; the state transplant draws its two charts."""
from __future__ import annotations

from urllib.parse import urlencode

from playwright.sync_api import expect

from tests.browser.conftest import app_exceptions, open_app, rerun

QUERY = {"model": "demo: demo v7 facts+retrieval", "prompt": "The Eiffel Tower is located in the city of",
         "pt_corrupt": "The Colosseum is located in the city of", "pt_answer": " Paris", "pt_counter": " Rome",
         "pt_align": "spans", "pt_cspan": "The Eiffel Tower", "pt_rspan": "The Colosseum"}


def _press(page, label: str) -> None:
    with rerun(page, timeout_ms=300_000):
        page.get_by_role("button", name=label, exact=True).click()


def test_patch_transplant_and_bad_input(base_url, page, streamlit_server):
    open_app(page, f"{base_url}/Patching?{urlencode(QUERY)}", timeout_ms=300_000)
    expect(page.get_by_role("button", name="Patch", exact=True)).to_be_visible(timeout=60_000)
    _press(page, "Patch")
    plots = page.locator(".js-plotly-plot")
    expect(plots.nth(11)).to_be_attached(timeout=120_000)  # 4 sites x (AtP, exact, scatter)
    assert page.get_by_text("correlation r = ").count() == 4
    heat = plots.first
    heat.scroll_into_view_if_needed()
    heat.hover()  # the middle of the AtP residual-stream map
    expect(page.locator(".hoverlayer .hovertext").first).to_contain_text("layer", timeout=20_000)
    hover = page.locator(".hoverlayer .hovertext").first.text_content()
    assert "normalised" in hover and "LD" in hover, hover
    assert app_exceptions(page) == [], streamlit_server.logs(base_url)

    _press(page, "Transplant")
    expect(page.get_by_text("B from A's state")).to_be_visible(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() >= 14

    counter = page.get_by_role("textbox", name="Counter answer (corrupted)")
    counter.fill(" Paris")
    counter.press("Tab")
    _press(page, "Patch")
    err = page.locator('[data-testid="stAlert"]').filter(has_text="no different token")
    expect(err.first).to_be_visible(timeout=60_000)
    assert "\n" not in err.first.inner_text().strip()
    assert app_exceptions(page) == []
