"""Plotly figures of the logit lens view: the tokens x stages heat map (hover: the ten most likely tokens at the
cell) with where the answer forms, and one token's curve over the stages.

Pure functions, arrays in, a figure out. Token texts and hover text pass through `common.escape_label` /
`common.token_label`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from rwkv_core.figures.common import escape_label, token_axis, token_label
from rwkv_core.figures.scores import diverging_colorscale

MEASURES = ("prob", "logp", "rank")  # what a lens cell shows of the wanted token
MEASURE_NAMES = {"prob": "probability", "logp": "log-probability", "rank": "log10(rank + 1)"}
LOGP_FLOOR = -20.0  # the log-probability colour scale stops here (anything below is as good as impossible)


def measure_values(logp: np.ndarray, rank: Optional[np.ndarray], measure: str) -> np.ndarray:
    """The heat map's values from the wanted token's log-probabilities (and ranks): probability, log-probability
    or log10(rank + 1) (0 = top-1); NaN where there is no wanted token."""
    if measure == "prob":
        return np.exp(np.asarray(logp, dtype=np.float64))
    if measure == "logp":
        return np.asarray(logp, dtype=np.float64)
    if measure == "rank":
        if rank is None:
            raise ValueError("this lens has no ranks")
        r = np.asarray(rank, dtype=np.float64)
        return np.where(r >= 0, np.log10(np.maximum(r, 0) + 1), np.nan)
    raise ValueError(f"measure must be one of {MEASURES}")


def top_texts(top_ids: np.ndarray, top_logp: Optional[np.ndarray], display) -> np.ndarray:
    """Hover text of every cell: its ten most likely tokens (with probabilities where known), one per line.
    top_ids [T, S, K]; display(id) -> token text. Returns [S, T] strings (the heat map's orientation)."""
    T, S, K = top_ids.shape
    names = {int(i): escape_label(display(int(i))) for i in np.unique(top_ids)}
    out = np.empty((S, T), dtype=object)
    for t in range(T):
        for s in range(S):
            if top_logp is None:
                out[s, t] = "<br>".join(names[int(i)] for i in top_ids[t, s])
            else:
                out[s, t] = "<br>".join(f"{names[int(i)]}  {np.exp(lp):.3f}" for i, lp in zip(top_ids[t, s],
                                                                                                top_logp[t, s]))
    return out


def lens_heatmap(values: np.ndarray, stages: Sequence[str], token_texts: Sequence[str], *, measure: str,
                 hover: Optional[np.ndarray] = None, formed: Optional[np.ndarray] = None, first: int = 0,
                 title: str = "", diff: bool = False, colorblind: bool = False,
                 sel: Optional[int] = None) -> go.Figure:
    """Tokens (across) x stages (down from the embedding) heat map of the wanted token's `measure`.

    values [T, S] (`measure_values`); stages: the stage names; token_texts: the T shown tokens' texts (raw); hover
    [S, T] strings (`top_texts`) shown under the value; formed [T] stage index where the answer forms (drawn as x);
    first: the index of the first shown token (a window of a longer prompt); diff: values are B - A (a diverging
    scale around 0); sel: the selected token (framed)."""
    Z = np.asarray(values, dtype=np.float64).T  # [S, T]
    cats, xaxis = token_axis([token_label(t) for t in token_texts], first)
    ylabels = [("embed" if s == "embed" else f"L{s}") for s in stages]
    name = MEASURE_NAMES[measure]
    if diff:
        finite = np.abs(Z[np.isfinite(Z)])
        zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        scale = dict(colorscale=diverging_colorscale(colorblind), zmin=-zmax, zmax=zmax)
        name = f"Δ {name} (B − A)"
    elif measure == "prob":
        scale = dict(colorscale="Viridis", zmin=0.0, zmax=1.0)
    elif measure == "logp":
        scale = dict(colorscale="Viridis", zmin=LOGP_FLOOR, zmax=0.0)
    else:
        scale = dict(colorscale="Viridis", reversescale=True, zmin=0.0)
    hm = dict(z=Z.astype(np.float32), x=cats, y=ylabels, colorbar=dict(title=dict(text=name, side="right")), **scale)
    if hover is not None:
        fig = go.Figure(go.Heatmap(customdata=hover, hovertemplate="token %{x}<br>stage %{y}<br>" + name
                                   + ": %{z:.4g}<br><b>top-10</b><br>%{customdata}<extra></extra>", **hm))
    else:
        fig = go.Figure(go.Heatmap(hovertemplate="token %{x}<br>stage %{y}<br>" + name + ": %{z:.4g}<extra></extra>",
                                   **hm))
    if formed is not None:
        f = np.asarray(formed)
        fig.add_trace(go.Scatter(x=cats, y=[ylabels[int(s)] for s in f], mode="markers", name="answer forms",
                                 marker=dict(symbol="x-thin", size=7, line=dict(width=2, color="white")),
                                 hovertemplate="token %{x}: the final top-1 is top-1 from stage %{y} on"
                                               "<extra></extra>"))
    if sel is not None and first <= sel < first + Z.shape[1]:
        i = sel - first
        fig.add_shape(type="rect", x0=i - 0.5, x1=i + 0.5, y0=-0.5, y1=len(stages) - 0.5,
                      line=dict(color="rgb(31,119,180)", width=2))
    fig.update_layout(title=escape_label(title, ""), xaxis=xaxis, height=160 + 26 * len(stages),
                      yaxis=dict(type="category", autorange="reversed", title="stage"),
                      margin=dict(l=60, r=20, t=50, b=40), showlegend=False)
    return fig


def stage_curve(curves: dict[str, np.ndarray], stages: Sequence[str], *, measure: str, title: str = "") -> go.Figure:
    """One line per run of the selected token's wanted-token `measure` over the stages (`measure_values` of one
    token's row): curves {run label: [S]}."""
    fig = go.Figure()
    xs = [("embed" if s == "embed" else f"L{s}") for s in stages]
    name = MEASURE_NAMES[measure]
    for label, y in curves.items():
        fig.add_trace(go.Scatter(x=xs, y=np.asarray(y, dtype=np.float64), mode="lines+markers",
                                 name=escape_label(label), hovertemplate=f"{escape_label(label)}: stage %{{x}}<br>"
                                 f"{name}: %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=escape_label(title, ""), xaxis=dict(type="category", title="stage"),
                      yaxis=dict(title=name), height=300, margin=dict(l=60, r=20, t=50, b=40))
    return fig
