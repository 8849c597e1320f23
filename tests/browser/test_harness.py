"""Checks the browser harness itself on a tiny Streamlit script, independent of the project's app."""
from __future__ import annotations

import textwrap

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import app_exceptions, open_app, rerun

TINY_APP = textwrap.dedent(
    """
    import streamlit as st

    st.title("Harness check")
    if "count" not in st.session_state:
        st.session_state.count = 0
    if st.button("Increment"):
        st.session_state.count += 1
    st.write(f"count = {st.session_state.count}")
    st.markdown("escaped: <b>bold?</b> end")
    """
)


@pytest.mark.browser
def test_tiny_app_click_and_escaping(tmp_path, streamlit_server, page, screenshot):
    script = tmp_path / "tiny_app.py"
    script.write_text(TINY_APP)
    url = streamlit_server(script)

    open_app(page, url)
    assert app_exceptions(page) == []
    counter = page.get_by_text("count =", exact=False)
    expect(counter).to_have_text("count = 0")

    button = page.get_by_role("button", name="Increment")
    for expected in (1, 2, 3):
        with rerun(page):
            button.click()
        # No auto-retrying expect here on purpose: after rerun() the text must already be final.
        assert counter.inner_text() == f"count = {expected}"

    # Markdown without unsafe_allow_html: the tag is shown as text, not turned into a <b> element.
    md = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text="escaped:")
    expect(md).to_have_count(1)
    assert "<b>bold?</b>" in md.inner_text()
    assert md.locator("b").count() == 0

    path = screenshot(page)
    assert path.exists() and path.stat().st_size > 1000


SLOW_APP = textwrap.dedent(
    """
    import time
    import streamlit as st

    if st.button("Work"):
        st.write("working")
        time.sleep(2.0)  # long enough for the status widget's running icon to show
        st.write("finished work")
    else:
        st.write("idle")
    """
)


@pytest.mark.browser
def test_wait_for_app_outlasts_a_slow_run(tmp_path, streamlit_server, page):
    script = tmp_path / "slow_app.py"
    script.write_text(SLOW_APP)
    open_app(page, streamlit_server(script))
    assert page.get_by_text("idle").count() == 1

    with rerun(page):
        page.get_by_role("button", name="Work").click()
    # Returned only after the whole run: the last element is there, the stale one is gone.
    assert page.get_by_text("finished work").count() == 1
    assert page.get_by_text("idle").count() == 0
    assert page.locator('[data-testid="stStatusWidgetRunningIcon"]').count() == 0


def test_server_that_cannot_start_reports_its_stderr(tmp_path):
    from tests.browser.conftest import StreamlitServer

    script = tmp_path / "ok.py"
    script.write_text("import streamlit as st\nst.write('hi')\n")
    server = StreamlitServer(script, cwd=tmp_path, extra_args=("--server.no-such-option", "1"))
    try:
        with pytest.raises(RuntimeError) as info:
            server.wait_healthy(timeout_s=30)
    finally:
        server.stop()
    msg = str(info.value)
    assert "exited with code" in msg
    assert "no-such-option" in msg.lower() or "no such option" in msg.lower()


@pytest.mark.browser
def test_script_errors_are_reported_and_redacted(tmp_path, streamlit_server, page):
    broken = tmp_path / "raises.py"
    broken.write_text("import streamlit as st\nst.write('before')\nraise ValueError('secret detail 42')\n")
    url = streamlit_server(broken)
    open_app(page, url)
    errors = app_exceptions(page)
    assert len(errors) == 1
    # .streamlit/config.toml: client.showErrorDetails = "none" keeps the message out of the browser...
    assert "secret detail 42" not in page.content()
    # ...and the harness still gets it from the server log.
    assert "secret detail 42" in streamlit_server.logs(url)

    uncompilable = tmp_path / "syntax.py"
    uncompilable.write_text("import streamlit as st\nst.write('never'\n")
    open_app(page, streamlit_server(uncompilable))
    assert any("compilationError" in e for e in app_exceptions(page))
