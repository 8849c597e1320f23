"""Plotly figures for causal tracing and layer ablation (pure builders: data in, `go.Figure` out, no Streamlit).

Heat maps follow ROME's `plot_trace_heatmap` and the RWKV paper's figure: rows are prompt tokens top to bottom with
the subject's tokens starred, columns are layers numbered from 0 (as on every page and in the hook names),
sequential colour maps (Purples for the block / state restores, Reds for time-mix ("attention") windows, Greens for
channel-mix ("MLP") windows), the colour bar titled with the metric, and for probabilities the colour scale starting at
the corrupted run's value (ROME's vmin = low score). Every label that comes from the prompt passes through
`common.escape_label` (token ticks through `common.token_label`, which also shows spaces as ␣): Plotly renders tick
and hover text as HTML.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import plotly.graph_objects as go

from rwkv_core.analysis.tracing import AblationResult, TraceResult
from rwkv_core.figures.common import escape_label, token_label

COLORSCALES = {"block": "Purples", "att": "Reds", "ffn": "Greens", "state": "Purples"}
KIND_NAMES = {"block": "layer", "att": "time-mix (attention)", "ffn": "channel-mix (MLP)"}
MODE_NAMES = {"resid": "residual stream after the block", "state": "recurrent state after the token",
              "both": "residual stream and recurrent state"}


def metric_label(metric: str, answer: str, answer2: Optional[str] = None, recovery_of: Optional[str] = None) -> str:
    """A short axis/colour-bar title for a metric, e.g. p(" Paris"); escaped."""
    a = escape_label(repr(answer))
    if metric == "prob":
        return f"p({a})"
    if metric == "logprob":
        return f"log p({a})"
    if metric == "first_prob":
        return f"p(first token of {a})"
    if metric == "logit_diff":
        return f"logit {a} − logit {escape_label(repr(answer2 or '?'))}"
    if metric == "recovery":
        return f"recovery of {escape_label(recovery_of or 'metric')}"
    return escape_label(metric)


def subject_row_labels(result: TraceResult) -> list[str]:
    """Escaped row labels (`common.token_label`: spaces shown as ␣), subject tokens starred (ROME)."""
    s0, s1 = result.subject
    return [token_label(lab) + ("*" if s0 <= t < s1 else "") for t, lab in enumerate(result.token_labels)]


def drawn_rows(result: TraceResult) -> tuple[list[Optional[int]], list[str]]:
    """The rows a heat map draws and their tick labels: every token (`subject_row_labels`); for a subset trace
    (settings["tokens"]) the traced tokens, labelled with their positions ("16 ␣"), and one blank row "⋯ k not
    traced" for each run of tokens left out (None in the rows).

    Why not all T rows with the untraced ones blank: at 1,000 tokens a row is 24 px and the grid 24,000 px tall,
    its ~20 traced rows lost in blank space and their labels too dense to read. One blank row per gap still shows
    where rows were left out, and how many; the npz and CSV keep all T rows (NaN where not traced)."""
    ticks = subject_row_labels(result)
    if result.settings.get("tokens") is None:
        return list(range(len(ticks))), ticks
    rows: list[Optional[int]] = []
    labels: list[str] = []
    prev = -1
    for t in result.traced_tokens:
        if t > prev + 1:
            rows.append(None)
            labels.append(f"⋯ {t - prev - 1} not traced")
        rows.append(t)
        labels.append(f"{t} {ticks[t]}")
        prev = t
    if prev < len(ticks) - 1:
        rows.append(None)
        labels.append(f"⋯ {len(ticks) - 1 - prev} not traced")
    return rows, labels


def restore_description(result: TraceResult) -> str:
    if result.kind == "block":
        return MODE_NAMES.get(result.mode, result.mode)
    return f"{KIND_NAMES[result.kind]} output, window of {result.window} layer{'s' if result.window != 1 else ''}"


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def trace_heatmap(result: TraceResult, metric: Optional[str] = None, *, title: Optional[str] = None,
                  height: Optional[int] = None) -> go.Figure:
    """Heat map of one trace grid [T, L] for `metric` (default: the result's own)."""
    metric = metric or result.metric
    grid = np.asarray(result.grids[metric], dtype=float)  # [T, L]
    T, L = grid.shape
    low, high = result.corrupt[metric], result.clean[metric]
    answer2 = result.settings.get("answer2")
    label = metric_label(metric, result.answer_label, answer2, result.settings.get("recovery_of"))
    rows, ticks = drawn_rows(result)
    if result.settings.get("tokens") is not None:  # a subset: its rows, a blank (NaN) row for each gap
        grid = np.stack([grid[t] if t is not None else np.full(L, np.nan) for t in rows])  # [R, L]
        T = len(rows)
    zmin = zmax = None
    finite = grid[np.isfinite(grid)]
    if metric in ("prob", "first_prob", "logprob") and math.isfinite(low):
        zmin = low  # ROME: vmin = the corrupted run's score
        if result.settings.get("method") == "atp" and finite.size:  # an estimate may fall below it
            zmin = min(zmin, float(finite.min()))
        zmax = max([high] + ([float(finite.max())] if finite.size else []))
        if zmax <= zmin:
            zmax = zmin + 1e-9
    elif metric == "recovery":
        zmin = min([0.0] + ([float(finite.min())] if finite.size else []))
        zmax = max([1.0] + ([float(finite.max())] if finite.size else []))
    custom = np.array([[ticks[t]] * L for t in range(T)], dtype=object)
    heat = go.Heatmap(
        z=grid, x=list(range(L)), y=list(range(T)), customdata=custom,
        colorscale=COLORSCALES.get(result.kind, "Purples"), zmin=zmin, zmax=zmax,
        colorbar=dict(title=dict(text=label, side="right")),
        hovertemplate=("token %{y}: %{customdata}" if result.settings.get("tokens") is None else "token %{customdata}")
        + "<br>layer %{x}<br>" + label + " = %{z:.4g}<extra></extra>",
        xgap=1, ygap=1)
    fig = go.Figure(heat)
    if title is None:
        title = (f"Restoring the {escape_label(restore_description(result))}: low (corrupted) {_fmt(low)}, "
                 f"high (clean) {_fmt(high)}" + ("" if result.complete else " — stopped early, incomplete"))
        if result.settings.get("method") == "atp":
            title = "Attribution patching (first-order estimate, not exact) — " + title
    xlabel = ("single restored layer" if result.kind == "block"
              else f"centre of a window of {result.window} restored layers")
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)), height=height or max(260, 60 + 24 * T),
        margin=dict(l=10, r=10, t=50, b=40),
        xaxis=dict(title=xlabel, tickmode="linear", tick0=0, dtick=1 if L <= 24 else 5, range=[-0.5, L - 0.5]),
        yaxis=dict(tickmode="array", tickvals=list(range(T)), ticktext=ticks, autorange="reversed"))
    return fig


def ablation_bars(result: AblationResult, metric: str = "prob", *, title: Optional[str] = None,
                  height: int = 320) -> go.Figure:
    """Bars per layer (numbered from 0): the change of `metric` at the answer when that layer is ablated."""
    delta = np.asarray(result.delta[metric], dtype=float)  # [L]
    L = delta.shape[0]
    label = metric_label(metric, result.answer_label)
    what = {"att": "time-mix output", "ffn": "channel-mix output", "block": "whole block output",
            "state": "WKV state"}[result.target]
    how = {"zero": "zero", "mean": "the reference-text mean", "corrupt": "the corrupted run's value",
           "clean": "its own clean value"}[result.replacement]
    if title is None:
        at = f" after token {result.reset_token}" if result.target == "state" else ""
        title = f"Ablating each layer's {what}{at} ({how}): change of {label} (clean {_fmt(result.clean[metric])})"
    colors = ["#b2182b" if v < 0 else "#2166ac" for v in np.nan_to_num(delta)]
    fig = go.Figure(go.Bar(
        x=list(range(L)), y=delta, marker_color=colors,
        customdata=np.asarray(result.ablated[metric], dtype=float),
        hovertemplate="layer %{x}<br>Δ = %{y:.4g}<br>ablated = %{customdata:.4g}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height,
                      margin=dict(l=10, r=10, t=50, b=40),
                      xaxis=dict(title="layer", tickmode="linear", tick0=0, dtick=1 if L <= 24 else 5),
                      yaxis=dict(title=f"Δ {label}", zeroline=True))
    return fig
