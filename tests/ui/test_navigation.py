"""Streamlit's page navigation: the home page is titled "Home" (not "app", its file's name) and every view keeps the
URL path it had, whether app.py routes or Streamlit runs a page file itself (a server's first run, AppTest)."""
from __future__ import annotations

from tests.ui.page_helpers import app_session

EXPECTED = [("Home", ""), ("Attention", "Attention"), ("Influence spans", "Influence_spans"),
            ("Time decay", "Time_decay"), ("Causal tracing", "Causal_tracing"), ("Logit lens", "Logit_lens"),
            ("State", "State"), ("Patching", "Patching"), ("Batch tracing", "Batch_tracing")]


def _nav(at) -> list[tuple[str, str]]:
    """(title, URL path) of every page the last run declared, in order."""
    return [(p.get("page_name"), p.get("url_pathname")) for p in at._registered_pages.values()]


def test_home_is_titled_home_and_the_views_keep_their_paths():
    at = app_session(timeout_s=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert _nav(at) == EXPECTED
    assert at.title[0].value == "RWKV Inspector"


def test_a_saved_link_declares_the_same_pages():
    at = app_session("pages/2_Influence_spans.py", timeout_s=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Influence spans (W·K norm)"
    assert _nav(at) == EXPECTED
    assert all(title.lower() != "app" for title, _ in _nav(at))
