""""Go to token" on the score pages: a position or a text selects a token as a click would (the URL follows), the
next match wraps round, and a position out of range or a text not in the prompt leaves the selection and says why in
one line. Also `find_token` itself. Runs on the demo model in the repository (no ../shared needed)."""
from __future__ import annotations

import re

import pytest

from inspector_ui.widgets import find_token
from tests.ui.page_helpers import app_session, run_clean, token_views

PROMPT = "The cat sat on the mat. The cat ran."  # the demo models read bytes: token i is character i
ATTN = "pages/1_Attention.py"
SPAN = "pages/2_Influence_spans.py"


# ------------------------------------------------------------------------------------------------ find_token


def test_a_number_is_a_position_and_text_the_next_match_wrapping_round():
    texts = list(PROMPT)
    assert find_token("5", texts, 0).index == 5
    assert find_token(" 12 ", texts, 0).index == 12
    cats = [i for i in range(len(PROMPT)) if PROMPT.startswith("cat", i)]  # [4, 28]
    assert find_token("cat", texts, 0).index == cats[0]
    assert find_token("CAT", texts, cats[0]).index == cats[1]  # after the selection, any case
    res = find_token("cat", texts, cats[1])
    assert res.index == cats[0] and "from the start again" in res.message and "1 of 2" in res.message
    assert find_token("mat.", texts, 0).index == PROMPT.index("mat.")  # across tokens: where the match starts
    words = ["The", " cat", " sat", ".", " The", " cat"]
    assert find_token("at.", words, 0).index == 2  # inside a token: that token
    assert find_token('"5"', ["a", "5", "b"], 2).index == 1  # quoted digits are text


def test_no_match_and_out_of_range_leave_the_selection_with_one_line():
    texts = list(PROMPT)
    for query, words in (("zebra", "No match for 'zebra'"), (str(len(PROMPT)), f"There is no token {len(PROMPT)}"),
                         ("-1", "There is no token -1")):
        res = find_token(query, texts, 3)
        assert res.index is None and res.problem and res.message.startswith(words) and "\n" not in res.message
    assert find_token("   ", texts, 3).index is None and not find_token("", texts, 3).message


# ------------------------------------------------------------------------------------------------ the pages


def _go(at, query: str, prefix: str = "att"):
    at.text_input(key=f"{prefix}_goto_q").set_value(query)
    at.button(key=f"{prefix}_goto_go").click()
    return run_clean(at)


def _shown(elements) -> list[str]:
    """The texts of these Markdown elements as a reader sees them (escapes removed)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]


def _selected(at) -> int:
    return token_views(at)[0]["selected"]


def test_go_to_token_by_position_and_text_selects_it_like_a_click():
    at = run_clean(app_session(ATTN, prompt=PROMPT, tok="0", timeout_s=180))
    assert _selected(at) == 0
    _go(at, "12")
    assert at.session_state["tok"] == 12 and _selected(at) == 12 and at.query_params["tok"] == "12"  # in the link
    assert any("token 12 " in m.value for m in at.markdown), [m.value for m in at.markdown]  # "Selected: token 12 'a'"
    _go(at, "cat")  # the next "cat" after token 12
    assert _selected(at) == PROMPT.index("cat", 12) == at.session_state["tok"]
    _go(at, "cat")  # Go again: the next one, wrapping round
    assert _selected(at) == PROMPT.index("cat")
    assert any("from the start again" in c for c in _shown(at.caption))
    titles = [h.value for h in at.subheader]
    assert any(t.startswith("Overview") and f"token {PROMPT.index('cat')} " in t for t in titles), titles


def test_go_to_token_out_of_range_or_no_match_says_so_in_one_line():
    at = run_clean(app_session(ATTN, prompt=PROMPT, tok="7", timeout_s=180))
    _go(at, "999")
    assert _selected(at) == 7 == at.session_state["tok"]
    assert _shown(at.warning) == [f"There is no token 999: this prompt has tokens 0–{len(PROMPT) - 1}."]
    _go(at, "zebra")
    assert _selected(at) == 7
    assert _shown(at.warning) == ["No match for 'zebra' in the prompt."]
    at.run()  # the message is about that try only
    assert not at.warning


def test_go_to_token_on_the_influence_spans_page():
    at = run_clean(app_session(SPAN, prompt=PROMPT, timeout_s=180))
    _go(at, "mat", prefix="spn")
    assert _selected(at) == PROMPT.index("mat") == at.session_state["tok"]


@pytest.mark.parametrize("query", ["0", "The"])
def test_the_first_token_is_reachable(query):
    assert find_token(query, list(PROMPT), None).index == 0
