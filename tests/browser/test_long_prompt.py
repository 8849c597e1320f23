"""A 4,096-token prompt in a real Chromium (the byte-level demo model: one token per character): the token view is a
box of a few lines with its own scroll bar, and after a click on a token, and after "go to token" by position and by
text, the selected token is scrolled into that box and it and the overview plot below it are on the screen together."""
from __future__ import annotations

from urllib.parse import quote

from playwright.sync_api import expect

from tests.browser.conftest import app_exceptions, open_app, rerun

T = 4096
WORDS = "the cat sat on a mat while the river ran past the old mill and a dog slept".split()
NEEDLE, NEEDLE_AT = "Zanzibar", 1000  # the only place this text is in the prompt
RUN_MS = 240_000
MAX_BOX_PX = 6 * 28 + 10  # the score pages' token view: six lines of 28 px (and its border)


def _prompt() -> str:
    words, text = WORDS * 400, ""
    for w in words:
        text += w + " "
    text = text[:NEEDLE_AT] + NEEDLE + text[NEEDLE_AT + len(NEEDLE):]
    return text[:T]


def _on_screen_together(page, index: int) -> None:
    """Token `index` is the selected one, wholly visible (inside the box and the window), and so is a good part of
    the overview plot below the token view."""
    sel = page.locator('[data-testid="token"].sel')
    expect(sel).to_have_count(1, timeout=RUN_MS)
    assert sel.get_attribute("data-index") == str(index)
    expect(sel).to_be_in_viewport(ratio=1.0)
    box = page.get_by_test_id("token-box")
    assert box.bounding_box()["height"] <= MAX_BOX_PX
    plot = page.locator(".js-plotly-plot").first  # the overview grid, right below the token view
    expect(plot).to_be_in_viewport(ratio=0.5)
    expect(page.get_by_text(f"Selected: token {index} ")).to_be_visible()
    assert f"tok={index}" in page.url


def _go(page, query: str) -> None:
    field = page.get_by_role("textbox", name="Go to token")
    field.fill(query)
    with rerun(page, RUN_MS):
        field.press("Enter")


def test_4096_tokens_keep_the_selection_and_its_plot_on_screen(base_url, page, streamlit_server):
    text = _prompt()
    assert len(text) == T and text.count(NEEDLE) == 1
    open_app(page, f"{base_url}/Attention?prompt={quote(text)}&tok=2000&layer=3&head=1", RUN_MS)
    tokens = page.locator('[data-testid="token"]')
    expect(tokens.first).to_be_attached(timeout=RUN_MS)
    assert tokens.count() == T
    box = page.get_by_test_id("token-box")
    size = box.evaluate("b => ({client: b.clientHeight, scroll: b.scrollHeight})")
    assert box.bounding_box()["height"] <= MAX_BOX_PX and size["scroll"] > 8 * size["client"], size  # unbounded: ~1,800 px
    # where a user works: the "go to token" line at the top of the window, the token view and the plots below it
    page.get_by_test_id("stForm").first.evaluate("f => f.scrollIntoView({block: 'start'})")
    _on_screen_together(page, 2000)  # the selection from the link, scrolled into the box

    # a click on another token of the box: selected, still in view, the plot too
    visible = box.evaluate("""b => { const r = b.getBoundingClientRect();
        return [...b.querySelectorAll('.tok')].filter(t => { const q = t.getBoundingClientRect();
          return q.top > r.top + 30 && q.bottom < r.bottom - 30 && !t.classList.contains('sel'); })
          .map(t => Number(t.dataset.index)); }""")
    target = visible[len(visible) // 2]
    with rerun(page, RUN_MS):
        tokens.nth(target).click()
    _on_screen_together(page, target)

    _go(page, "3500")  # by position: far from the box's scroll position
    _on_screen_together(page, 3500)
    _go(page, NEEDLE.lower())  # by text: the next match after 3500, wrapping round to the start
    _on_screen_together(page, NEEDLE_AT)
    assert app_exceptions(page) == [], streamlit_server.logs(base_url)
