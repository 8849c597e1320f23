"""A trace file uploaded in a real Chromium stays open across pages (the sidebar's navigation) until Close: before,
each page had its own uploader and the file was gone after every page switch. (The selections kept across pages:
tests/ui/test_trace_upload.py.)

Runs on the demo RWKV-7 model of the repository (no ../shared needed).
"""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import APP_SCRIPT, app_exceptions, open_app, rerun, wait_for_app

DEMO_V7 = "demo: demo v7 facts+retrieval"
RUN_MS = 180_000


def _trace_file(path) -> None:
    """The default download (top-16 logits, float16) of the demo model's Eiffel Tower prompt, written to `path`."""
    from inspector_ui.registry import list_models
    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.trace_file import COMPACT, build_trace, save_trace

    model = load_model(list_models()[DEMO_V7].path)
    tokens = list(b"The Eiffel Tower is located in the city of")
    save_trace(build_trace(model, tokens, token_texts=[chr(t) for t in tokens], tokenizer_kind="bytes",
                           checkpoint_name="demo-v7.pth", **COMPACT), path)


def _clean(page, streamlit_server, base_url, what: str) -> None:
    assert app_exceptions(page) == [], f"{what}\n{streamlit_server.logs(base_url)}"
    assert page.get_by_test_id("stAlertContentError").count() == 0, what


def test_an_uploaded_trace_stays_open_across_pages_until_closed(base_url, page, streamlit_server, tmp_path):
    trace = tmp_path / "eiffel.npz"
    _trace_file(trace)
    open_app(page, f"{base_url}/?source=trace+file", RUN_MS)
    sidebar, main = page.get_by_test_id("stSidebar"), page.get_by_test_id("stMain")
    expect(main.get_by_text("Upload a trace file")).to_be_visible()
    sidebar.locator('input[type="file"]').set_input_files(str(trace))  # uploads, then a rerun opens it
    expect(sidebar.get_by_text(re.compile(r"Trace file eiffel\.npz"))).to_be_visible(timeout=RUN_MS)
    wait_for_app(page, RUN_MS)
    _clean(page, streamlit_server, base_url, "uploaded")
    for target, shows in (("Attention", r"A\[j, i\], layer 3, head 0"), ("Influence_spans", r"S\[j, i\]"),
                          ("Time_decay", r"Median half-life per token and head"), ("Attention", r"A\[j, i\]")):
        with rerun(page, RUN_MS):
            sidebar.get_by_test_id("stSidebarNav").locator(f'a[href$="{target}"]').click()
        page.wait_for_url(re.compile(target + r"(\?|$)"))
        wait_for_app(page, RUN_MS)
        _clean(page, streamlit_server, base_url, target)
        expect(sidebar.get_by_text(re.compile(r"Trace file eiffel\.npz"))).to_be_visible()
        assert main.get_by_text("Upload a trace file").count() == 0, target
        assert sidebar.locator('input[type="file"]').count() == 0, target
        expect(main.get_by_test_id("stPlotlyChart").first).to_be_visible()
        assert re.search(shows, main.inner_text() + " ".join(
            main.locator(".gtitle").all_text_contents())), target
    with rerun(page, RUN_MS):
        sidebar.get_by_role("button", name="Close the trace file").click()
    wait_for_app(page, RUN_MS)
    expect(main.get_by_text("Upload a trace file")).to_be_visible()
    expect(sidebar.locator('input[type="file"]')).to_have_count(1)


def test_a_trace_uploaded_first_thing_from_a_link_on_a_fresh_server_stays(page, streamlit_server, tmp_path):
    """A fresh server runs a linked view's file itself on its first run and routes through app.py after that: a
    trace uploaded as the very first action there must not be lost to that switch (nor the URL's choices)."""
    trace = tmp_path / "eiffel.npz"
    _trace_file(trace)
    url = streamlit_server(APP_SCRIPT, env={"RWKV_INSPECTOR_TEST_FIRST_RUN_UPLOAD": "1"})  # a server of its own
    try:
        open_app(page, f"{url}/Attention?source=trace+file&head=1", RUN_MS)
        sidebar, main = page.get_by_test_id("stSidebar"), page.get_by_test_id("stMain")
        expect(main.get_by_text("Upload a trace file")).to_be_visible()
        assert page.url.startswith(f"{url}/Attention?") and "head=1" in page.url, page.url
        sidebar.locator('input[type="file"]').set_input_files(str(trace))
        expect(sidebar.get_by_text(re.compile(r"Trace file eiffel\.npz"))).to_be_visible(timeout=RUN_MS)
        wait_for_app(page, RUN_MS)
        _clean(page, streamlit_server, url, "uploaded on the first run")
        assert main.get_by_text("Upload a trace file").count() == 0
        expect(main.get_by_test_id("stPlotlyChart").first).to_be_visible()
        assert re.search(r"A\[j, i\], layer \d+, head 1", main.inner_text() + " ".join(
            main.locator(".gtitle").all_text_contents()))
    finally:
        streamlit_server.stop(url)
