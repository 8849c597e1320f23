"""What every Plotly figure of the inspector shares: safe labels, the camera button, token ticks and clicks.

Plotly renders hover text, tick labels and titles as a small subset of HTML, so every piece of text that comes from a
prompt (token texts, subjects, answers) passes through `escape_label`: a prompt containing `<script>` or `<b>` shows
those characters literally, and whitespace and control characters stay visible. Pure functions, no Streamlit.
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Optional, Sequence

import plotly.graph_objects as go

MAX_TICK_LABELS = 64  # token axes label every token with its text up to this many tokens
IMAGE_FORMATS = ("png", "svg")
# The browser draws every marker of an SVG scatter as its own element: ~12,000 markers (1,000 tokens x 12 heads)
# cost Chromium seconds on every rerun. Beyond this many points, markers go to WebGL or are left out.
SVG_MARKER_LIMIT = 2_000


def escape_label(text: Optional[str], empty: str = "∅") -> str:
    """Text made safe and visible for Plotly: HTML-escaped (& < >), newline as ↩, tab as ⇥, carriage return as ␍,
    other control characters as \\xNN; `empty` (default ∅, an empty token) for None or ""."""
    if text is None or text == "":
        return empty
    out = []
    for ch in str(text):
        if ch == "\n":
            out.append("↩")
        elif ch == "\t":
            out.append("⇥")
        elif ch == "\r":
            out.append("␍")
        elif ord(ch) < 32 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return html.escape("".join(out), quote=False)


def token_label(text: Optional[str]) -> str:
    """A token's text as a tick label on a token axis: `escape_label` with every space shown as ␣, so a space token
    is a visible tick (and, starred as part of a subject, "␣*" rather than a bare "*")."""
    return escape_label(None if text is None else str(text).replace(" ", "␣"))


def image_config(filename: str, fmt: str = "png", scale: int = 2) -> dict:
    """`config=` of a Plotly chart whose camera button downloads the figure as `fmt` ("png" or "svg") under a file
    name made of letters, digits, - and _ (at most 80 characters)."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError("image format must be 'png' or 'svg'")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in filename)[:80] or "figure"
    return {"displaylogo": False, "toImageButtonOptions": {"format": fmt, "filename": safe, "scale": scale}}


def token_categories(labels: Sequence[str], first: int = 0) -> list[str]:
    """'index: text' for token positions first, first + 1, ... (labels already escaped): tick texts, and the
    categories of a token axis (unique by their index)."""
    return [f"{first + i}: {s}" for i, s in enumerate(labels)]


def token_axis(labels: Sequence[str], first: int = 0) -> tuple[list[str], dict]:
    """A token axis of categories 'index: text' (labels already escaped): the categories, to use as the traces'
    coordinates (hover shows them, so no per-point text travels), and the axis settings (every tick labelled up to
    `MAX_TICK_LABELS` tokens). Ranges and shapes on such an axis count positions from 0."""
    cats = token_categories(labels, first)
    ticks = dict(tickmode="array", tickvals=cats, ticktext=cats) if len(cats) <= MAX_TICK_LABELS else dict(nticks=24)
    return cats, dict(type="category", categoryorder="array", categoryarray=cats, **ticks)


def click_overlay(**scatter: Any) -> go.Scatter | go.Scattergl:
    """Invisible markers that make cells clickable (heat maps send no click events in Streamlit): an SVG scatter,
    or a WebGL one beyond `SVG_MARKER_LIMIT` points, where SVG would cost the browser seconds per rerun."""
    n = len(scatter.get("x", ()))
    return (go.Scattergl if n > SVG_MARKER_LIMIT else go.Scatter)(mode="markers", showlegend=False, **scatter)


def cell_from_selection(selection: Optional[Mapping[str, Any]],
                        axes: tuple[str, str] = ("x", "y")) -> Optional[tuple[int, int]]:
    """The cell of the first clicked point of a Streamlit Plotly selection (`event.selection`, a dict with
    "points"), or None.

    Heat maps send no click events, so the clickable figures lay an invisible marker on every cell whose customdata
    starts with the cell's two numbers; a point without customdata gives its coordinates in the order `axes`
    (("y", "x") where the rows come first, as in the layer x head grid)."""
    points = (selection or {}).get("points") or []
    for p in points:
        custom = p.get("customdata")
        if isinstance(custom, dict):  # Streamlit hands a row of 2-D customdata over as {"0": .., "1": ..}
            custom = [custom.get(str(i), custom.get(i)) for i in range(len(custom))]
        try:
            if isinstance(custom, (list, tuple)) and len(custom) >= 2:
                return int(round(float(custom[0]))), int(round(float(custom[1])))
            first, second = p.get(axes[0]), p.get(axes[1])
            if first is not None and second is not None:
                return int(round(float(first))), int(round(float(second)))
        except (TypeError, ValueError):
            continue
    return None
