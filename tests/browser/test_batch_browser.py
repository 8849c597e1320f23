"""The Batch tracing page in a real Chromium: a run started from the page (its id in the URL), a second user's run
started while the first runs (both on the shared job workers), the first page reloaded by its URL mid-run and
followed to the end, ROME's figure with the bootstrap interval on hover, the fact table with its links."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import expect

import pytest

from tests.browser.conftest import APP_SCRIPT, app_exceptions, open_app, rerun

RUN_MS = 400_000  # a busy 2-core machine: two small fact sets on one worker


def _start(page, url: str) -> str:
    open_app(page, url, timeout_ms=RUN_MS)
    expect(page.get_by_text("cells · about")).to_be_visible(timeout=RUN_MS)  # the cost, before anything runs
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_url(re.compile(r"bt_run="), timeout=RUN_MS)
    return parse_qs(urlparse(page.url).query)["bt_run"][0]


@pytest.mark.slow  # a server of its own and two fact sets: ~1.5 min (the AppTests cover the flow in the default run)
@pytest.mark.timeout(900)
def test_two_users_runs_a_reload_mid_run_and_rome_figure(browser, page, streamlit_server, tmp_path):
    # a server of its own: its job worker free of other tests' traces, its run folders in tmp_path
    base_url = streamlit_server(APP_SCRIPT, env={"RWKV_INSPECTOR_FACTSET_DIR": str(tmp_path)})
    first = _start(page, f"{base_url}/Batch_tracing?bt_count=3&bt_kinds=block%7Cffn&bt_samples=2")
    expect(page.get_by_text("Tracing facts")).to_be_visible(timeout=RUN_MS)
    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page2 = other.new_page()
        second = _start(page2, f"{base_url}/Batch_tracing?bt_count=1&bt_kinds=state&bt_samples=2")
        assert second != first
        # the first user reloads by the run's link while it runs: the page finds the run and follows it
        run_url = page.url
        with rerun(page, timeout_ms=RUN_MS):
            page.goto(run_url)
        plots = page.locator(".js-plotly-plot")
        expect(plots.nth(1)).to_be_attached(timeout=RUN_MS)  # the AIE lines and the first kind's heat map
        expect(page.get_by_text("facts traced")).to_be_visible()
        assert "3 / 3" in page.locator('[data-testid="stMetricValue"]').first.inner_text()
        heat = plots.nth(1)
        heat.scroll_into_view_if_needed()
        heat.hover()
        expect(page.locator(".hoverlayer .hovertext").first).to_contain_text("facts averaged", timeout=30_000)
        assert "95% interval" in page.locator(".hoverlayer .hovertext").first.text_content()
        # the second user's run ended too, with its own figure
        expect(page2.locator(".js-plotly-plot").nth(1)).to_be_attached(timeout=RUN_MS)
        assert "1 / 1" in page2.locator('[data-testid="stMetricValue"]').first.inner_text()
        assert app_exceptions(page) == [] and app_exceptions(page2) == [], streamlit_server.logs(base_url)
    finally:
        other.close()
        streamlit_server.stop(base_url)  # its Ray workers and memory go with it
