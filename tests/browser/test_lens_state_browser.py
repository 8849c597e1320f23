"""The Logit lens and State pages in a real Chromium: opened first, from a link, a token click that moves the view,
compare mode, and a trace file uploaded with the lens and stored states. The numbers themselves are checked under
AppTest (tests/ui/test_page_logit_lens.py, tests/ui/test_page_state.py) and against oracles (tests/analysis).

Runs on the demo RWKV-7 model of the repository (no ../shared needed).
"""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import app_exceptions, open_app, rerun, save_screenshot, wait_for_app

DEMO_V7 = "demo: demo v7 facts+retrieval"
PROMPT = "The Eiffel Tower is located in the city of Paris"
TOKEN = '[data-testid="token"]'
RUN_MS = 180_000


def _clean(page, streamlit_server, base_url, what: str) -> None:
    assert app_exceptions(page) == [], f"{what}\n{streamlit_server.logs(base_url)}"
    assert page.get_by_test_id("stAlertContentError").count() == 0, what


def _titles(page) -> str:
    return " ".join(page.locator(".gtitle").all_text_contents())


def _open_and_click(page, streamlit_server, base_url, link: str, first: int, then: int, before_click=None) -> None:
    """Open the link (its token `first` selected), then click token `then`: selected, and in the URL."""
    open_app(page, link, RUN_MS)
    _clean(page, streamlit_server, base_url, "link")
    tokens = page.locator(TOKEN)
    expect(tokens.first).to_be_visible(timeout=30_000)
    expect(tokens.nth(first)).to_have_class("tok sel", timeout=30_000)
    if before_click is not None:
        assert f"@{first}" in before_click()
    with rerun(page, RUN_MS):
        tokens.nth(then).click()
    expect(tokens.nth(then)).to_have_class("tok sel", timeout=30_000)
    assert f"tok={then}" in page.url


def _compare(page, streamlit_server, base_url, link: str, title: str) -> None:
    """The link in compare mode with a second prompt of the same length: both runs and B − A are drawn."""
    open_app(page, f"{link}&compare=prompt&prompt_b={quote('The Colosseum is located in the city of Rome!!!!')}",
             RUN_MS)
    _clean(page, streamlit_server, base_url, "compare")
    expect(page.locator(TOKEN).first).to_be_visible(timeout=30_000)
    titles = _titles(page)
    assert f"A: {title}" in titles and f"B: {title}" in titles and "B − A" in titles


def test_logit_lens_opened_first_then_a_click_and_compare(base_url, page, streamlit_server):
    open_app(page, f"{base_url}/Logit_lens", RUN_MS)  # the app's default model and prompt
    _clean(page, streamlit_server, base_url, "opened first")
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    assert "logit lens" in _titles(page)
    link = f"{base_url}/Logit_lens?model={quote(DEMO_V7)}&prompt={quote(PROMPT)}&lm=logp&tok=5"
    t = PROMPT.index("Paris") - 1
    _open_and_click(page, streamlit_server, base_url, link, 5, t)
    expect(page.get_by_role("radio", name="log-probability")).to_be_checked()
    line = page.get_by_test_id("stMarkdownContainer").filter(has_text=f"at token {t} ")
    expect(line.first).to_contain_text("the answer forms at stage", timeout=30_000)
    expect(line.first.locator("code")).to_have_text("'P'")  # the final top-1 at the space before "Paris"
    heat = page.locator(".js-plotly-plot").first
    hover = heat.evaluate("gd => gd.data[0].customdata[gd.data[0].customdata.length - 1][%d]" % t)
    assert hover.startswith("P  ")  # the last stage's top-10 at that cell, most likely first
    save_screenshot(page, "logit_lens_after_click", full_page=False)
    _compare(page, streamlit_server, base_url, link, "logit lens")


def test_state_page_link_click_and_compare(base_url, page, streamlit_server):
    link = f"{base_url}/State?model={quote(DEMO_V7)}&prompt={quote(PROMPT)}&layer=2&head=1&tok=10"
    _open_and_click(page, streamlit_server, base_url, link, 10, 20, before_click=lambda: _titles(page))
    assert "layer=2" in page.url
    expect(page.locator(".gtitle", has_text="A: S after 'l'@20").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text(re.compile("how well the state has learned"))).to_be_visible()
    save_screenshot(page, "state_after_click", full_page=False)
    _compare(page, streamlit_server, base_url, link, "S after")


@pytest.mark.slow  # the trace-file path of both pages is covered under AppTest in the default run
def test_a_trace_file_with_lens_and_states_opens_on_both_pages(base_url, page, streamlit_server, tmp_path):
    from inspector_ui.registry import list_models
    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.trace_file import COMPACT, build_trace, save_trace

    trace = tmp_path / "lens_state.npz"
    model = load_model(list_models()[DEMO_V7].path)
    tokens = list(PROMPT.encode())
    save_trace(build_trace(model, tokens, token_texts=list(PROMPT), tokenizer_kind="bytes",
                           checkpoint_name="demo-v7.pth", lens=True, state=True, **COMPACT), trace)
    open_app(page, f"{base_url}/Logit_lens?source=trace+file", RUN_MS)
    sidebar, main = page.get_by_test_id("stSidebar"), page.get_by_test_id("stMain")
    sidebar.locator('input[type="file"]').set_input_files(str(trace))
    expect(sidebar.get_by_text(re.compile(r"Trace file lens_state\.npz"))).to_be_visible(timeout=RUN_MS)
    wait_for_app(page, RUN_MS)
    _clean(page, streamlit_server, base_url, "lens from a trace")
    expect(main.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    assert "A: logit lens" in _titles(page)
    with rerun(page, RUN_MS):
        sidebar.get_by_test_id("stSidebarNav").locator('a[href$="State"]').click()
    page.wait_for_url(re.compile(r"State(\?|$)"))
    wait_for_app(page, RUN_MS)
    _clean(page, streamlit_server, base_url, "state from a trace")
    expect(main.get_by_text(re.compile(r"stores this layer's state after token\(s\) \[47\]"))).to_be_visible(
        timeout=30_000)
    assert "A: S after" in _titles(page)
