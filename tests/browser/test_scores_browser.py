"""The score pages in a real Chromium: clicking a token re-colours the others, clicking an overview tile opens that
layer and head, and a prompt with HTML in it is shown as text and runs nothing."""
from __future__ import annotations

from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import app_exceptions, open_app, rerun, save_screenshot

TOKEN = '[data-testid="token"]'
HOSTILE = "<script>window.__pwned=1</script><b>bold</b>"


def _backgrounds(page) -> list[str]:
    """Inline background of every token box ('' for none or fully transparent)."""
    bgs = page.locator(TOKEN).evaluate_all("els => els.map(e => e.style.background)")
    return ["" if b.replace(" ", "") in ("", "rgba(0,0,0,0)") else b for b in bgs]


def _selected(page) -> list[int]:
    return page.locator(TOKEN).evaluate_all(
        "els => els.filter(e => e.classList.contains('sel')).map(e => Number(e.dataset.index))")


def test_click_token_recolours_and_tile_opens_head(base_url, page, streamlit_server):
    model = quote("demo: demo v7 facts+retrieval")  # in the repository; 4 layers x 4 heads: tile (2, 3)
    open_app(page, f"{base_url}/Attention?model={model}&prompt={quote('The cat sat on the mat. The cat ran.')}"
                   "&layer=1&head=1")
    tokens = page.locator(TOKEN)
    expect(tokens.first).to_be_visible(timeout=30_000)  # the component draws after the run
    n = tokens.count()
    assert n == len("The cat sat on the mat. The cat ran.")
    assert _selected(page) == [n - 1], "the last token is selected at first"
    before = _backgrounds(page)
    assert any(before), "the selected token's row colours the earlier tokens"

    with rerun(page):
        tokens.nth(8).click()  # the 's' of "sat"
    expect(tokens.nth(8)).to_have_class("tok sel", timeout=30_000)
    assert _selected(page) == [8]
    after = _backgrounds(page)
    assert after[8] == ""  # the selected token: blue from its class
    changed = [i for i in range(n) if i != 8 and before[i] != after[i]]
    assert len(changed) >= 5, (before, after)
    assert any(after[i] for i in range(9, n)), "later tokens are coloured by who reads the selected one"
    assert "tok=8" in page.url
    assert app_exceptions(page) == [], streamlit_server.logs(base_url)

    # a click on an overview tile (an invisible marker on it) opens that layer and head
    grid = page.locator(".js-plotly-plot").first
    grid.scroll_into_view_if_needed()
    expect(grid).to_be_visible(timeout=30_000)
    pos = grid.evaluate(
        """(gd, lh) => { const fl = gd._fullLayout, r = gd.getBoundingClientRect();
             const cats = fl.yaxis._categories || [];
             const y = fl.yaxis.type === "category" ? cats.indexOf(String(lh[0])) : lh[0];
             return {x: r.left + fl._size.l + fl.xaxis.l2p(lh[1]), y: r.top + fl._size.t + fl.yaxis.l2p(y)}; }""",
        [2, 3])
    with rerun(page):
        page.mouse.click(pos["x"], pos["y"])
    assert "layer=2" in page.url and "head=3" in page.url
    expect(page.get_by_text("Full A matrix of layer 2, head 3")).to_be_visible(timeout=30_000)
    save_screenshot(page, "scores_attention_after_clicks", full_page=False)
    assert app_exceptions(page) == [], streamlit_server.logs(base_url)


@pytest.mark.parametrize("path", ["/Attention", "/Influence_spans"])
def test_html_in_prompt_is_shown_as_text(base_url, page, streamlit_server, path):
    open_app(page, f"{base_url}{path}?prompt={quote(HOSTILE)}")
    tokens = page.locator(TOKEN)
    expect(tokens.first).to_be_visible(timeout=30_000)  # the component draws after the run
    texts = tokens.evaluate_all("els => els.map(e => e.textContent)")
    assert "".join(texts) == HOSTILE  # one byte per token: the literal characters
    assert tokens.locator("b, script").count() == 0
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    # and after a click (the view is drawn again) still nothing runs
    with rerun(page):
        tokens.nth(3).click()
    expect(tokens.nth(3)).to_have_class("tok sel", timeout=30_000)
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert app_exceptions(page) == [], streamlit_server.logs(base_url)
