"""The whole app in a real Chromium: every page from a deep link (with a screenshot of each kept as a test artifact),
selecting a token, switching to compare mode, opening the shared link in a second browser context and seeing the same
view, navigating between pages without losing the sidebar, and a prompt with HTML in the URL shown as text.

Pages are discovered from pages/N_Name.py; Streamlit serves each at /Name (the number prefix dropped).
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (_WS_TRACKER_JS, VIEWPORT, app_exceptions, open_app, rerun, save_screenshot,
                                    wait_for_app)

REPO = Path(__file__).resolve().parents[2]
PAGE_FILES = sorted((REPO / "pages").glob("[0-9]*_*.py"))
TOKEN = '[data-testid="token"]'
DEMO_V7 = "demo: demo v7 facts+retrieval"  # in the repository: these tests need no ../shared
DEMO_V6 = "demo: demo v6 facts+retrieval"
FIRST_RUN_MS = 240_000  # a cold server loads torch and a model on the first run of a page (loaded 2-core machine)
RUN_MS = 180_000


def url_path(page_file: Path) -> str:
    """Streamlit's URL of pages/N_Name.py: /Name."""
    return "/" + re.sub(r"^\d+_", "", page_file.stem)


def uses_frame(page_file: Path) -> bool:
    return "page_setup(" in page_file.read_text(encoding="utf-8")


ALL_PATHS = ["/"] + [url_path(p) for p in PAGE_FILES]
FRAME_PATHS = ["/"] + [url_path(p) for p in PAGE_FILES if uses_frame(p)]


def _error_boxes(page) -> list[str]:
    return page.locator('[data-testid="stAlertContentError"]').all_inner_texts()


def _assert_clean(page, streamlit_server, base_url, what: str) -> None:
    exc = app_exceptions(page)
    assert exc == [], f"{what}: {exc}\n{streamlit_server.logs(base_url)}"
    errors = _error_boxes(page)
    assert errors == [], f"{what}: error boxes {errors}"


def _widgets_drawn(page, timeout_ms: float = 60_000) -> None:
    """Widgets load their code lazily: in a fresh browser context a settled run can still show placeholders
    (stSkeleton) for a moment. Wait until none is left."""
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout_ms)


def _open(page, url: str, timeout_ms: float = FIRST_RUN_MS) -> None:
    open_app(page, url, timeout_ms)
    _widgets_drawn(page)


def _query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def _link(base_url: str, path: str, **params) -> str:
    return f"{base_url}{path}" + (f"?{urlencode(params, quote_via=quote)}" if params else "")


# querySelectorAll that also looks inside shadow roots (the token view is a v2 component: its own shadow root).
_DEEP_ALL_JS = """
const deepAll = (sel, root) => {
  root = root || document;
  const out = [...root.querySelectorAll(sel)];
  for (const el of root.querySelectorAll('*')) if (el.shadowRoot) out.push(...deepAll(sel, el.shadowRoot));
  return out;
};
"""


def _wait_tokens(page, n_views: int, timeout_ms: float = 60_000) -> None:
    """The token views draw after the script run (a component): wait until `n_views` of them hold tokens."""
    page.wait_for_function(
        "n => {" + _DEEP_ALL_JS + "return deepAll('.tv').filter("
        "v => v.querySelector('[data-testid=\"token\"]')).length >= n; }", arg=n_views, timeout=timeout_ms)


# What a user sees of the view's state: every widget's value, the token views (selected token starred), headings.
_VIEW_STATE_JS = """
() => {""" + _DEEP_ALL_JS + """
  const all = (sel, root) => [...(root || document).querySelectorAll(sel)];
  const label = e => ((e.querySelector('[data-testid="stWidgetLabel"]') || {}).innerText || '').trim();
  return {
    selects: all('[data-testid="stSelectbox"]').map(e => [label(e), (e.querySelector('input') || {}).value]),
    numbers: all('[data-testid="stNumberInput"]').map(e => [label(e), (e.querySelector('input') || {}).value]),
    sliders: all('[data-testid="stSlider"]').map(e => [label(e), e.innerText]),
    texts: all('[data-testid="stTextArea"], [data-testid="stTextInput"]').map(
      e => [label(e), (e.querySelector('textarea, input') || {}).value]),
    radios: all('[data-testid="stRadio"]').map(e => [label(e), all('[data-testid="stRadioOption"]', e)
      .filter(o => o.getAttribute('data-selected') === 'true').map(o => o.innerText.trim())]),
    checks: all('[data-testid="stCheckbox"] input, [data-testid="stToggle"] input, input[role="switch"]').map(
      i => i.checked),
    tokens: deepAll('.tv').map(v => all('[data-testid="token"]', v).map(
      s => s.textContent + (s.classList.contains('sel') ? '*' : '')).join('|')),
    headings: all('[data-testid="stMain"] h1, [data-testid="stMain"] h2, [data-testid="stMain"] h3').map(
      h => h.innerText.trim()),
  };
}
"""


def _view_state(page) -> dict:
    return page.evaluate(_VIEW_STATE_JS)


def _new_page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(_WS_TRACKER_JS)
    context.set_default_timeout(60_000)
    return context, context.new_page()


# ------------------------------------------------------------------------------------------------ deep links


def test_page_urls_are_discovered():
    assert {"/Attention", "/Influence_spans", "/Time_decay"} <= set(ALL_PATHS)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_deep_link_opens_the_page(path, base_url, page, streamlit_server):
    """A first visit to the page's own URL (no parameters: the defaults) runs clean; the screenshot is kept as
    test-artifacts/screenshots/page-<Name>.png."""
    _open(page, base_url + path)
    assert urlsplit(page.url).path == path
    _assert_clean(page, streamlit_server, base_url, path)
    expect(page.locator('[data-testid="stMain"] h1').first).to_be_visible()
    if path in FRAME_PATHS:
        q = _query(page.url)
        assert q.get("model") and q.get("compare") == "off", page.url  # the view is in the URL at once
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_test_id("stTextArea").filter(has_text="Prompt").first).to_be_visible()
    if page.locator(TOKEN).count():
        expect(page.locator(TOKEN).first).to_be_visible()
    path_png = save_screenshot(page, f"page-{path.strip('/') or 'home'}")
    assert path_png.exists() and path_png.stat().st_size > 5000


# ------------------------------------------------------------------------------------------------ shared links


@pytest.mark.parametrize("path", FRAME_PATHS)
def test_select_compare_and_share(path, base_url, browser, page, streamlit_server):
    """Select a token (where the selection is view state), switch to compare mode, give prompt B, then open the
    current URL in a second browser context: the same model, prompts, mode, widget values and selected tokens."""
    prompt_a, prompt_b = "31415926,", "2718281828,"
    _open(page, _link(base_url, path, model=DEMO_V7, prompt=prompt_a, layer=0, head=1))
    _assert_clean(page, streamlit_server, base_url, f"{path} opened")
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_role("combobox", name="Model", exact=True)).to_have_value(DEMO_V7)

    selectable = "tok" in _query(page.url)  # the score pages keep the selected token in the URL
    if selectable:
        _wait_tokens(page, 1)
        with rerun(page, RUN_MS):
            page.locator(TOKEN).nth(2).click()
        expect(page.locator(TOKEN).nth(2)).to_have_class(re.compile(r"\bsel\b"))
        assert _query(page.url)["tok"] == "2", page.url
        q = _query(page.url)
        assert (q["layer"], q["head"]) == ("0", "1")

    with rerun(page, RUN_MS):
        sidebar.get_by_test_id("stRadioOption").filter(has_text=re.compile(r"^\s*prompt\s*$")).click()
    _assert_clean(page, streamlit_server, base_url, f"{path} compare=prompt")
    assert _query(page.url)["compare"] == "prompt"
    box_b = sidebar.get_by_test_id("stTextArea").filter(has_text="Prompt B").locator("textarea")
    expect(box_b).to_be_visible()
    with rerun(page, RUN_MS):
        box_b.fill(prompt_b)
        box_b.press("Control+Enter")
    _widgets_drawn(page)
    _assert_clean(page, streamlit_server, base_url, f"{path} prompt B")
    q = _query(page.url)
    assert (q["model"], q["prompt"], q["prompt_b"], q["compare"]) == (DEMO_V7, prompt_a, prompt_b, "prompt")
    n_views = page.locator(".tv").count()
    if n_views:
        _wait_tokens(page, n_views)
    shared_url = page.url
    seen = _view_state(page)
    assert [prompt_a, prompt_b] == [v for k, v in seen["texts"] if k in ("Prompt", "Prompt B")]
    if selectable:
        assert any(t.split("|")[2].endswith("*") for t in seen["tokens"]), seen["tokens"]
    save_screenshot(page, f"shared_view{path.replace('/', '_') or '_home'}-A")

    context2, page2 = _new_page(browser)
    try:
        _open(page2, shared_url)
        _assert_clean(page2, streamlit_server, base_url, f"{path} shared link")
        if n_views:
            _wait_tokens(page2, n_views)
        seen2 = _view_state(page2)
        save_screenshot(page2, f"shared_view{path.replace('/', '_') or '_home'}-B")
        assert seen2 == seen, {k: (seen[k], seen2[k]) for k in seen if seen[k] != seen2[k]}
        assert _query(page2.url) == _query(shared_url)
    finally:
        context2.close()


# ------------------------------------------------------------------------------------------------ navigation


def test_navigating_between_pages_keeps_the_sidebar(base_url, page, streamlit_server):
    """Model, prompt and compare mode chosen on the home page are still there after following the page links and
    the sidebar navigation (Streamlit treats same-key widgets on two pages as two widgets)."""
    prompt = "271828,"
    _open(page, _link(base_url, "/", model=DEMO_V7, prompt=prompt))
    _assert_clean(page, streamlit_server, base_url, "home")
    targets = [p for p in FRAME_PATHS if p != "/"]
    main_links = page.get_by_test_id("stMain").get_by_test_id("stPageLink")
    expect(main_links.first).to_be_visible()
    # the home page links each view
    hrefs = main_links.locator("a").evaluate_all("els => els.map(e => new URL(e.href).pathname)")
    for p in ALL_PATHS[1:]:
        assert p in hrefs, (p, hrefs)
    with rerun(page, RUN_MS):
        main_links.locator(f'a[href$="{targets[0].lstrip("/")}"]').first.click()
    page.wait_for_url(re.compile(re.escape(targets[0]) + r"(\?|$)"))
    wait_for_app(page, RUN_MS)
    _widgets_drawn(page)
    for i, target in enumerate(targets):
        if i > 0:
            nav = page.get_by_test_id("stSidebarNav").locator(f'a[href$="{target.lstrip("/")}"]')
            with rerun(page, RUN_MS):
                nav.click()
            page.wait_for_url(re.compile(re.escape(target) + r"(\?|$)"))
            wait_for_app(page, RUN_MS)
            _widgets_drawn(page)
        _assert_clean(page, streamlit_server, base_url, f"navigated to {target}")
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_role("combobox", name="Model", exact=True)).to_have_value(DEMO_V7)
        expect(sidebar.get_by_test_id("stTextArea").filter(has_text="Prompt").locator("textarea").first
               ).to_have_value(prompt)
        q = _query(page.url)
        assert (q.get("model"), q.get("prompt")) == (DEMO_V7, prompt), page.url
        for tv in page.locator(".tv").all():
            assert "".join(tv.locator(TOKEN).all_text_contents()) == prompt


# ------------------------------------------------------------------------------------------------ HTML as text


HOSTILE_A = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOSTILE_B = '</textarea><b>bold</b><svg onload="window.__pwned=3">'


@pytest.mark.parametrize("path", ["/"] + [p for p in FRAME_PATHS if p != "/"][:3])
def test_script_in_the_url_prompt_is_text(path, base_url, page, streamlit_server):
    link = _link(base_url, path, model=DEMO_V6, prompt=HOSTILE_A, compare="prompt",
                 prompt_b=HOSTILE_B)
    _open(page, link)
    _assert_clean(page, streamlit_server, base_url, path)
    sidebar = page.get_by_test_id("stSidebar")
    areas = sidebar.get_by_test_id("stTextArea").locator("textarea")
    assert [areas.nth(i).input_value() for i in range(areas.count())] == [HOSTILE_A, HOSTILE_B]
    views = page.locator(".tv")
    if views.count():
        _wait_tokens(page, views.count())
        texts = ["".join(v.locator(TOKEN).all_text_contents()) for v in views.all()]
        assert set(texts) <= {HOSTILE_A, HOSTILE_B} and HOSTILE_A in texts, texts
    page.wait_for_timeout(1000)  # give anything that would run (onerror, onload) the time to
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    app = page.get_by_test_id("stApp")
    assert app.locator("img[onerror], svg[onload], b").filter(has_text="bold").count() == 0
    assert app.locator("img[onerror], svg[onload]").count() == 0
    assert page.evaluate("() => [...document.scripts].some(s => s.textContent.includes('__pwned'))") is False
