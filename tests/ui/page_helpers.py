"""What the page tests (tests/ui/test_page_*.py) read off a page run under Streamlit's AppTest: the plotly figures
as JSON, their arrays as numpy, the token views; and a run that must come out clean."""
from __future__ import annotations

import base64
import json

import numpy as np


def run_clean(at):
    """Run once more and require a clean page: no exception, no error box."""
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def chart_specs(at) -> list[dict]:
    """Every plotly figure on the page, as its JSON spec."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def chart_title(fig: dict) -> str:
    return (fig.get("layout", {}).get("title") or {}).get("text", "")


def chart_titles(at) -> list[str]:
    return [chart_title(f) for f in chart_specs(at)]


def plotly_array(x) -> np.ndarray:
    """A plotly JSON array as float numpy: a (nested) list with None for gaps, or the typed-array form
    {"dtype", "bdata" (base64), "shape"} that plotly >= 6 writes."""
    if isinstance(x, dict) and "bdata" in x:
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        shape = x.get("shape")
        if shape:
            a = a.reshape([int(n) for n in str(shape).split(",")] if isinstance(shape, str) else shape)
        return a.astype(float)
    return np.array([np.nan if v is None else v for v in x] if np.ndim(x) == 1 else
                    [[np.nan if v is None else v for v in row] for row in x], dtype=float)


def token_views(at) -> list[dict]:
    """The data of every token view component on the page (tokens, colours, values, selection)."""
    return [json.loads(c.proto.json) for c in at.get("bidi_component")]


def page_session(page, timeout_s: float = 120, **state):
    """A fresh session of one page script (opened as the main script), with these session-state values set first:
    what a user's earlier choices are to the page."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=timeout_s)
    for k, v in state.items():
        at.session_state[k] = v
    return at



def app_session(page: str = "app.py", timeout_s: float = 300, **query):
    """A fresh session of the multipage app (app.py the main script) that opens `page` (relative to the repository,
    such as "pages/4_Causal_tracing.py") on its first run, with these URL query parameters: what a link does."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=timeout_s)
    for k, v in query.items():
        at.query_params[k] = v
    if page != "app.py":
        at.switch_page(page)
    return at

# ------------------------------------------------------------------------------------------------ score pages

V52 = "shared: tiny-rwkv-5v2-730K-FP32.bin"  # 12 layers x 8 heads: what the score page tests' numbers assume


def score_page_session(page, **state):
    """A score page (Attention, Influence spans) on the shared v5.2 model unless told otherwise: not the app's
    default, the demo model, whose shape may change when it is retrained. Skipped where ../shared is absent."""
    from tests.conftest import shared_file

    shared_file("tiny-rwkv-5v2-730K-FP32.bin")
    state.setdefault("model", V52)
    return page_session(page, **state)


def score_heatmaps(at) -> list[dict]:
    """The full-matrix heat maps of a score page (titles 'X: A[j, i], ...' / 'B − A: ...')."""
    return [c for c in chart_specs(at) if "[j, i]" in c["layout"]["title"]["text"]]


def heatmap_z(fig: dict) -> np.ndarray:
    """The z matrix of a figure's first trace."""
    return plotly_array(fig["data"][0]["z"])
