"""Plotly figures of the state view: one head's state matrix (v4: the group's numerator, denominator and exponent),
per-token curves of every head (norm, effective rank, RWKV-7's regression errors) and a query's read-out.

Pure functions, arrays in, a figure out; token texts pass through `common.escape_label` / `common.token_label`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from rwkv_core.figures.common import SVG_MARKER_LIMIT, escape_label, token_axis, token_label
from rwkv_core.figures.scores import diverging_colorscale


def state_matrix_figure(M: np.ndarray, *, rows: str, cols: str, title: str = "", colorblind: bool = False,
                        zmax: Optional[float] = None, row_labels: Optional[Sequence[str]] = None) -> go.Figure:
    """A head's state [rows, cols] as a diverging heat map around 0 (rows down); `rows`/`cols` name the axes (key,
    value; v4: the three state vectors across the group's channels), row_labels name the rows where given."""
    Z = np.asarray(M, dtype=np.float64)
    finite = np.abs(Z[np.isfinite(Z)])
    zm = zmax if zmax is not None and zmax > 0 else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    y = list(row_labels) if row_labels is not None else None
    fig = go.Figure(go.Heatmap(z=Z.astype(np.float32), y=y, colorscale=diverging_colorscale(colorblind), zmin=-zm,
                               zmax=zm, hovertemplate=f"{rows} %{{y}}<br>{cols} %{{x}}<br>value %{{z:.4g}}"
                                                      "<extra></extra>"))
    fig.update_layout(title=escape_label(title, ""), xaxis=dict(title=cols), height=420 if y is None else 240,
                      yaxis=dict(title=rows, autorange="reversed", **({} if y is None else {"type": "category"})),
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig


def head_curves_figure(values: np.ndarray, token_texts: Sequence[str], *, y_name: str, open_head: int,
                       sel: Optional[int] = None, title: str = "", heads_word: str = "head",
                       log_y: bool = False) -> go.Figure:
    """Per-token curves [T, H] of every head (the open head drawn thick), the selected token marked."""
    V = np.asarray(values, dtype=np.float64)
    T, H = V.shape
    cats, xaxis = token_axis([token_label(t) for t in token_texts])
    fig = go.Figure()
    for h in range(H):
        fig.add_trace(go.Scatter(x=cats, y=V[:, h], mode="lines", name=f"{heads_word} {h}",
                                 line=dict(width=3 if h == open_head else 1),
                                 opacity=1.0 if h == open_head else 0.45,
                                 hovertemplate=f"{heads_word} {h}, token %{{x}}<br>{y_name}: %{{y:.4g}}<extra></extra>"))
    if sel is not None and 0 <= sel < T:
        fig.add_vline(x=sel, line=dict(color="rgb(31,119,180)", width=1, dash="dot"))
    fig.update_layout(title=escape_label(title, ""), xaxis=xaxis, yaxis=dict(title=y_name, type="log" if log_y
                                                                              else "linear"),
                      height=330, margin=dict(l=60, r=20, t=50, b=40), legend=dict(font=dict(size=10)))
    return fig


def regression_figure(before: np.ndarray, after: np.ndarray, token_texts: Sequence[str], *, head: int,
                      sel: Optional[int] = None, title: str = "") -> go.Figure:
    """RWKV-7's online-regression errors of one head over the tokens: before and after each token's update [T]."""
    cats, xaxis = token_axis([token_label(t) for t in token_texts])
    mode = "lines" if len(cats) > SVG_MARKER_LIMIT // 4 else "lines+markers"
    fig = go.Figure()
    for y, name in ((before, "before the token's update"), (after, "after it")):
        fig.add_trace(go.Scatter(x=cats, y=np.asarray(y, dtype=np.float64), mode=mode, name=name,
                                 hovertemplate=f"token %{{x}}<br>{name}: %{{y:.4g}}<extra></extra>"))
    if sel is not None and 0 <= sel < len(cats):
        fig.add_vline(x=sel, line=dict(color="rgb(31,119,180)", width=1, dash="dot"))
    fig.update_layout(title=escape_label(title, ""), xaxis=xaxis, height=330,
                      yaxis=dict(title=f"‖S κ̂ − v‖ / ‖v‖, head {head}", rangemode="tozero"),
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig


def readout_figure(out: np.ndarray, title: str = "") -> go.Figure:
    """A read-out vector [N] (value space) as bars."""
    y = np.asarray(out, dtype=np.float64)
    fig = go.Figure(go.Bar(x=np.arange(len(y)), y=y, hovertemplate="value channel %{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(title=escape_label(title, ""), xaxis=dict(title="value channel"), height=260,
                      margin=dict(l=60, r=20, t=50, b=40))
    return fig
