"""Plotly figures of a fact-set trace (pure builders, no Streamlit): ROME's Figure 2 for an RWKV model.

`aie_heatmap`: the average indirect effect of restoring one layer (or window) at each of ROME's six token classes,
rows the classes top to bottom, columns the layers from 0, the colour scale of the restore kind as on the Causal
tracing page (Purples: layer, state, residual; Reds: time-mix window; Greens: channel-mix window), the hover giving
the bootstrap interval and the number of facts averaged. `aie_lines`: the AIE at one token class by layer, one line
per restore kind with its interval as a band (ROME's bottom row: the state and the residual told apart)."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import plotly.graph_objects as go

from rwkv_core.analysis.factset.effects import TOKEN_CLASSES, AverageEffect

KIND_COLORSCALES = {"block": "Purples", "state": "Purples", "resid": "Purples", "att": "Reds", "ffn": "Greens"}
KIND_LINE_COLORS = {"block": "#54278f", "state": "#2171b5", "resid": "#756bb1", "att": "#cb181d", "ffn": "#238b45"}
KIND_LABELS = {"block": "layer (residual and state)", "state": "recurrent state", "resid": "residual stream",
               "att": "time-mix window", "ffn": "channel-mix window"}


def aie_heatmap(aie: AverageEffect, kind: str, n_facts: int, *, title: Optional[str] = None,
                height: int = 300) -> go.Figure:
    """Heat map [6 token classes, L layers] of the average indirect effect of one restore kind."""
    mean = np.asarray(aie.mean, dtype=float)  # [6, L]
    K, L = mean.shape
    rows = [f"{name} ({int(c)})" for name, c in zip(TOKEN_CLASSES, aie.count)]
    custom = np.stack([np.asarray(aie.low, dtype=float), np.asarray(aie.high, dtype=float),
                       np.repeat(np.asarray(aie.count, dtype=float)[:, None], L, axis=1)], axis=-1)  # [6, L, 3]
    finite = mean[np.isfinite(mean)]
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1e-9
    heat = go.Heatmap(
        z=mean, x=list(range(L)), y=list(range(K)), customdata=custom, colorscale=KIND_COLORSCALES.get(kind, "Purples"),
        zmin=0.0, zmax=zmax, colorbar=dict(title=dict(text="AIE", side="right")),
        hovertemplate=("%{y}<br>layer %{x}<br>AIE = %{z:.4g}<br>95% interval %{customdata[0]:.4g} .. "
                       "%{customdata[1]:.4g}<br>facts averaged %{customdata[2]:.0f}<extra></extra>"),
        xgap=1, ygap=1)
    fig = go.Figure(heat)
    if title is None:
        title = f"Average indirect effect of the {KIND_LABELS.get(kind, kind)} over {n_facts} known facts"
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)), height=height, margin=dict(l=10, r=10, t=50, b=40),
        xaxis=dict(title="restored layer" if kind in ("block", "state", "resid") else "centre of the restored window",
                   tickmode="linear", tick0=0, dtick=1 if L <= 24 else 5, range=[-0.5, L - 0.5]),
        yaxis=dict(tickmode="array", tickvals=list(range(K)), ticktext=rows, autorange="reversed"))
    return fig


def aie_lines(aie: Mapping[str, AverageEffect], token_class: int, n_facts: int, *, title: Optional[str] = None,
              height: int = 320) -> go.Figure:
    """The AIE at one token class (an index of TOKEN_CLASSES) by layer: one line per restore kind, its bootstrap
    interval as a band."""
    fig = go.Figure()
    for kind, a in aie.items():
        mean = np.asarray(a.mean, dtype=float)[token_class]  # [L]
        low, high = np.asarray(a.low, dtype=float)[token_class], np.asarray(a.high, dtype=float)[token_class]
        L = mean.shape[0]
        color = KIND_LINE_COLORS.get(kind, "#444444")
        x = list(range(L))
        fig.add_trace(go.Scatter(x=x + x[::-1], y=np.concatenate([high, low[::-1]]), fill="toself", opacity=0.2,
                                 line=dict(width=0), fillcolor=color, hoverinfo="skip", showlegend=False,
                                 legendgroup=kind))
        fig.add_trace(go.Scatter(
            x=x, y=mean, mode="lines+markers", name=KIND_LABELS.get(kind, kind), line=dict(color=color),
            legendgroup=kind, customdata=np.stack([low, high], axis=-1),
            hovertemplate=(f"{KIND_LABELS.get(kind, kind)}<br>layer %{{x}}<br>AIE = %{{y:.4g}}<br>95% interval "
                           "%{customdata[0]:.4g} .. %{customdata[1]:.4g}<extra></extra>")))
    if title is None:
        title = f"Average indirect effect at the {TOKEN_CLASSES[token_class]}, over {n_facts} known facts"
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height, margin=dict(l=10, r=10, t=50, b=40),
                      xaxis=dict(title="layer", tickmode="linear", tick0=0),
                      yaxis=dict(title="AIE of p(answer)", zeroline=True),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig
