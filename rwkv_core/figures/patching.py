"""Plotly figures for patching between two prompts and for the state experiments (pure builders: data in,
`go.Figure` out, no Streamlit).

Heat maps: rows are the clean prompt's tokens top to bottom (marked spans starred), columns layers from 0, the
colour the normalised logit difference (0 = corrupted run, 1 = clean run) on a diverging scale centred at 0, hover
with the token, the layer, the normalised value and the raw LD; cells not computed are blank. Every label from a
prompt passes through `common.token_label` / `escape_label` (Plotly renders text as HTML).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import plotly.graph_objects as go

from rwkv_core.analysis.patching import PatchResult, StateEditResult
from rwkv_core.figures.common import escape_label, token_label

SITE_TITLES = {"resid": "Residual stream after block l", "att": "Time-mix output", "ffn": "Channel-mix output",
               "state": "Recurrent state after the token"}
METHOD_TITLES = {"exact": "exact patching", "atp": "attribution patching (AtP)"}


def row_labels(result: PatchResult) -> list[str]:
    """'t: token' for every clean token, escaped (spaces as ␣), tokens of the marked clean span starred."""
    span = (result.settings.get("alignment") or {}).get("clean_span") or (0, 0)
    return [f"{t}: {token_label(lab)}" + ("*" if span[0] <= t < span[1] else "")
            for t, lab in enumerate(result.clean_labels)]


def _ld_label(result: PatchResult) -> str:
    s = result.settings
    return f"logit {escape_label(repr(s.get('answer', '?')))} − logit {escape_label(repr(s.get('counter', '?')))}"


def patch_heatmap(result: PatchResult, site: str, *, title: Optional[str] = None,
                  height: Optional[int] = None) -> go.Figure:
    """One site's normalised grid [T, L] of a PatchResult (exact or AtP)."""
    grid = result.grid(site)  # [T, L]
    raw = result.raw[site]
    T, L = grid.shape
    ticks = row_labels(result)
    finite = grid[np.isfinite(grid)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    custom = np.stack([np.array([[tk] * L for tk in ticks], dtype=object), raw.astype(object)], -1)
    heat = go.Heatmap(
        z=grid, x=list(range(L)), y=list(range(T)), customdata=custom, colorscale="RdBu", reversescale=True,
        zmin=-lim, zmax=lim, zmid=0.0, colorbar=dict(title=dict(text="normalised LD", side="right")),
        hovertemplate=("token %{customdata[0]}<br>layer %{x}<br>normalised = %{z:.4g}<br>LD = "
                       "%{customdata[1]:.4g}<extra></extra>"), xgap=1, ygap=1)
    fig = go.Figure(heat)
    if title is None:
        what = "estimate" if result.method == "atp" else "patched"
        title = (f"{SITE_TITLES.get(site, site)}: {METHOD_TITLES[result.method]} ({what}; 0 = corrupted "
                 f"{result.corrupt_value:.3g}, 1 = clean {result.clean_value:.3g})")
    fig.update_layout(
        title=dict(text=escape_label(title), font=dict(size=13)), height=height or max(260, 70 + 20 * T),
        margin=dict(l=10, r=10, t=50, b=40),
        xaxis=dict(title="layer", tickmode="linear", tick0=0, dtick=1 if L <= 24 else 5, range=[-0.5, L - 0.5]),
        yaxis=dict(tickmode="array", tickvals=list(range(T)) if T <= 64 else None,
                   ticktext=ticks if T <= 64 else None, autorange="reversed", title=_ld_label(result)))
    return fig


def agreement(atp: PatchResult, exact: PatchResult, site: str, k: int = 5) -> tuple[float, int, list[tuple]]:
    """(Pearson correlation of the normalised grids over the cells both computed from the prompts' first
    difference on (before it both are the corrupted run exactly), how many cells, the k cells where they disagree
    most as (token, layer, exact, atp)); correlation NaN below 3 cells."""
    a, e = atp.grid(site), exact.grid(site)
    ok = np.isfinite(a) & np.isfinite(e)
    ok[:int(exact.settings.get("first_difference", 0))] = False
    n = int(ok.sum())
    r = float(np.corrcoef(a[ok], e[ok])[0, 1]) if n >= 3 and np.ptp(a[ok]) > 0 and np.ptp(e[ok]) > 0 else float("nan")
    diff = np.where(ok, np.abs(a - e), -1.0)
    order = np.argsort(diff, axis=None)[::-1][:min(k, n)]
    worst = [(int(t), int(l), float(e[t, l]), float(a[t, l])) for t, l in zip(*np.unravel_index(order, diff.shape))]
    return r, n, worst


def atp_vs_exact_scatter(atp: PatchResult, exact: PatchResult, site: str, *, height: int = 320) -> go.Figure:
    """Every cell both computed: exact (x) against AtP (y), the diagonal y = x, hover with token and layer."""
    a, e = atp.grid(site), exact.grid(site)
    ok = np.isfinite(a) & np.isfinite(e)
    ts, ls = np.nonzero(ok)
    ticks = row_labels(exact)
    r, n, _ = agreement(atp, exact, site)
    lo = float(min(a[ok].min(), e[ok].min(), 0.0)) if n else 0.0
    hi = float(max(a[ok].max(), e[ok].max(), 1.0)) if n else 1.0
    fig = go.Figure([
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#999", dash="dot"), name="AtP = exact",
                   hoverinfo="skip"),
        go.Scatter(x=e[ok], y=a[ok], mode="markers", name="cells", marker=dict(size=6, color="#2166ac"),
                   customdata=np.stack([np.array([ticks[t] for t in ts], dtype=object), ls.astype(object)], -1),
                   hovertemplate=("token %{customdata[0]}<br>layer %{customdata[1]}<br>exact = %{x:.4g}<br>"
                                  "AtP = %{y:.4g}<extra></extra>"))])
    fig.update_layout(title=dict(text=f"{SITE_TITLES.get(site, site)}: AtP against exact, r = {r:.3f} over {n} cells",
                                 font=dict(size=13)), height=height, margin=dict(l=10, r=10, t=50, b=40),
                      xaxis=dict(title="exact (normalised LD)"), yaxis=dict(title="AtP estimate (normalised LD)"),
                      showlegend=False)
    return fig


def kl_figure(result: StateEditResult, *, height: int = 280) -> go.Figure:
    """KL(edited || base) of the next-token distribution at every position of the prompt the edit ran on."""
    T = len(result.labels)
    ticks = [f"{t}: {token_label(lab)}" for t, lab in enumerate(result.labels)]
    fig = go.Figure(go.Bar(
        x=list(range(T)), y=result.kl, marker_color=["#bbb" if t < result.start else "#b2182b" for t in range(T)],
        customdata=np.array(ticks, dtype=object),
        hovertemplate="token %{customdata}<br>KL = %{y:.4g} nats<extra></extra>"))
    what = "state transplant" if result.settings.get("experiment") == "transplant" else "steering"
    fig.update_layout(title=dict(text=f"How much the {what} changes each next-token prediction (KL, nats)",
                                 font=dict(size=13)), height=height, margin=dict(l=10, r=10, t=50, b=40),
                      xaxis=dict(title="position", tickmode="array" if T <= 64 else "auto",
                                 tickvals=list(range(T)) if T <= 64 else None, ticktext=ticks if T <= 64 else None),
                      yaxis=dict(title="KL(edited ‖ base)"))
    return fig


def top_predictions_figure(result: StateEditResult, display: Callable[[int], str], position: int = -1, *,
                           height: int = 300) -> go.Figure:
    """Grouped bars at one position (default the last): the probabilities of the base and edited runs' top
    tokens, each run's own top-K and the other's."""
    t = position % len(result.labels)
    ids: list[int] = []
    for i in list(result.top_base_ids[t]) + list(result.top_edit_ids[t]):
        if int(i) not in ids:
            ids.append(int(i))
    pb = dict(zip(map(int, result.top_base_ids[t]), result.top_base_p[t]))
    pe = dict(zip(map(int, result.top_edit_ids[t]), result.top_edit_p[t]))
    names = [f"{token_label(display(i))} ({i})" for i in ids]
    last = t == len(result.labels) - 1
    fig = go.Figure([
        go.Bar(name="base", x=names, y=[pb.get(i, np.nan) for i in ids], marker_color="#999",
               hovertemplate="%{x}<br>base p = %{y:.4g}<extra></extra>"),
        go.Bar(name="edited", x=names, y=[pe.get(i, np.nan) for i in ids], marker_color="#b2182b",
               hovertemplate="%{x}<br>edited p = %{y:.4g}<extra></extra>")])
    where = "after the last token" if last else f"after token {t}"
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=50, b=40),
                      title=dict(text=f"Next-token predictions {where} (top {result.top_base_ids.shape[1]} of each; "
                                      "blank = not in that run's top)", font=dict(size=13)),
                      yaxis=dict(title="probability"), xaxis=dict(title="token"))
    return fig

