"""The sidebar navigation in a real Chromium: the home page is listed as "Home" (not "app", the name of its file), on
a fresh server's first run from a saved link as well as after it, and every page keeps its URL path."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import APP_SCRIPT, app_exceptions, open_app, rerun, wait_for_app

NAV_TITLES = ["Home", "Attention", "Influence spans", "Time decay", "Causal tracing", "Logit lens", "State",
              "Patching", "Batch tracing"]
RUN_MS = 180_000


def _nav_titles(page) -> list[str]:
    nav = page.get_by_test_id("stSidebarNav")
    expect(nav).to_be_visible(timeout=RUN_MS)
    return [t.strip() for t in nav.get_by_test_id("stSidebarNavLink").all_inner_texts()]


def test_the_nav_lists_home_from_a_saved_link_on_a_fresh_server(streamlit_server, page):
    # its own server: the first run of a server (Streamlit runs pages/1_Attention.py itself) is what is tested
    url = streamlit_server(APP_SCRIPT, env={"RWKV_INSPECTOR_TEST_NAV": "1"})
    try:
        open_app(page, f"{url}/Attention?tok=3", RUN_MS)
        titles = _nav_titles(page)
        assert titles == NAV_TITLES, titles
        assert not any(t.lower() == "app" for t in titles)
        expect(page.get_by_role("heading", name="Attention scores (R·W·K)")).to_be_visible()
        assert page.url.startswith(f"{url}/Attention?"), page.url

        nav = page.get_by_test_id("stSidebarNav")
        with rerun(page, RUN_MS):
            nav.get_by_role("link", name="Home").click()
        page.wait_for_url(re.compile(re.escape(url) + r"/?(\?|$)"))
        wait_for_app(page, RUN_MS)
        expect(page.get_by_test_id("stMain").get_by_role("heading", name="RWKV Inspector", exact=True)).to_be_visible()
        assert _nav_titles(page) == NAV_TITLES

        with rerun(page, RUN_MS):  # now app.py routes: a view still opens at its old path
            nav.get_by_role("link", name="Influence spans").click()
        page.wait_for_url(re.compile(re.escape(url) + r"/Influence_spans(\?|$)"))
        wait_for_app(page, RUN_MS)
        expect(page.get_by_role("heading", name="Influence spans (W·K norm)")).to_be_visible()
        assert _nav_titles(page) == NAV_TITLES
        assert page.title().startswith("Influence spans")

        open_app(page, f"{url}/Time_decay", RUN_MS)  # a saved link after the router took over
        expect(page.get_by_role("heading", name="Time decay", exact=True)).to_be_visible()
        assert _nav_titles(page) == NAV_TITLES
        assert app_exceptions(page) == [], streamlit_server.logs(url)
    finally:
        streamlit_server.stop(url)
