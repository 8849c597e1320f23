"""Plotly figures of the decay page: pure functions, arrays in, `go.Figure` out (no model, no Streamlit).

Every trace carries a hover template with its numbers. Layers are coloured on a sequential scale (RWKV-4 paper
figure), heads with a qualitative palette. Layers and heads are numbered from 0, as in the hook names.
Inputs are the arrays of `rwkv_core.analysis.decay` (decay lambda, log10 half-life, ...); shapes are given per function.
Token labels come in raw and are escaped here (`common.escape_label`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from rwkv_core.figures.common import SVG_MARKER_LIMIT, click_overlay, escape_label, token_axis

LAYER_COLORSCALE = "Viridis"
CLICKABLE_TOKENS = 256  # the tokens x heads heat map takes clicks up to this many tokens (columns >= ~3 px)
HALF_LIFE_COLORSCALE = "Viridis"  # small half-life (fast forgetting) dark
DECAY_COLORSCALE = "Viridis"
STATIC_COLOR = "#636363"


def layer_colors(n_layer: int) -> list[str]:
    """One colour per layer, sampled along the sequential LAYER_COLORSCALE (layer 0 first)."""
    if n_layer <= 1:
        return sample_colorscale(LAYER_COLORSCALE, [0.0])
    return sample_colorscale(LAYER_COLORSCALE, [i / (n_layer - 1) for i in range(n_layer)])


def head_colors(n_head: int) -> list[str]:
    """One colour per head from a qualitative palette (Dark24 beyond 10 heads)."""
    palette = qualitative.Plotly if n_head <= 10 else qualitative.Dark24
    return [palette[h % len(palette)] for h in range(n_head)]


def _channel_slice(n_channel: int, head_size: int, head: Optional[int]) -> slice:
    if head is None:
        return slice(0, n_channel)
    if not 0 <= head < n_channel // head_size:
        raise ValueError(f"head {head} out of range 0..{n_channel // head_size - 1}")
    return slice(head * head_size, (head + 1) * head_size)


# ------------------------------------------------------------------------------------------------ static views


def _head_channels(decay: np.ndarray, log10_half_life: np.ndarray, head_size: int,
                   head: Optional[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """decay and log10 half-life [L, C] as float64, cut to one head's channels when `head` is given, and the
    original channel numbers [C'] of what is kept."""
    decay = np.asarray(decay, dtype=np.float64)
    log10_half_life = np.asarray(log10_half_life, dtype=np.float64)
    sl = _channel_slice(decay.shape[1], head_size, head)
    return decay[:, sl], log10_half_life[:, sl], np.arange(decay.shape[1])[sl]


def paper_figure(decay: np.ndarray, log10_half_life: np.ndarray, head_size: int, *, head: Optional[int] = None,
                 y: str = "decay", title: Optional[str] = None) -> go.Figure:
    """The RWKV-4 paper's decay figure: one line per layer, channels sorted by decay (descending).

    decay, log10_half_life [L, C]. y = "decay" (lambda on [0, 1]) or "half_life" (tokens, log axis).
    `head` restricts to that head's N channels. Sorting uses log10 h, which orders like lambda but stays
    exact for decays within rounding of 1.
    """
    if y not in ("decay", "half_life"):
        raise ValueError("y must be 'decay' or 'half_life'")
    decay, log10_half_life, channels = _head_channels(decay, log10_half_life, head_size, head)
    L = decay.shape[0]
    colors = layer_colors(L)
    fig = go.Figure()
    for layer in range(L):
        lam, lh = decay[layer], log10_half_life[layer]
        order = np.argsort(-lh, kind="stable")  # longest memory first = largest decay first
        hl = np.power(10.0, lh[order])
        custom = np.stack([channels[order], channels[order] // head_size, lam[order], hl], axis=-1)
        fig.add_trace(go.Scatter(
            x=np.arange(len(order)), y=lam[order] if y == "decay" else hl, mode="lines",
            name=f"layer {layer}", line=dict(color=colors[layer], width=2), customdata=custom,
            hovertemplate=(f"layer {layer}<br>rank %{{x}}<br>channel %{{customdata[0]}} (head %{{customdata[1]}})"
                           "<br>λ = %{customdata[2]:.10g}<br>half-life = %{customdata[3]:.4g} tokens<extra></extra>")))
    # colour bar for the layer scale (an empty marker trace carries it)
    fig.add_trace(go.Scatter(
        x=[None], y=[None], mode="markers", name="layer scale", showlegend=False,
        hovertemplate="layer scale<extra></extra>",
        marker=dict(colorscale=LAYER_COLORSCALE, cmin=0, cmax=max(L - 1, 1), color=[0], showscale=True,
                    colorbar=dict(title="layer", thickness=12))))
    where = "all channels" if head is None else f"head {head}"
    fig.update_layout(
        title=title or f"Time decay per layer, channels sorted by decay ({where})",
        legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0), hovermode="closest",
        margin=dict(t=60))
    fig.update_xaxes(title_text=f"channel rank (sorted, {len(channels)} channels)")
    if y == "decay":
        fig.update_yaxes(title_text="per-step decay λ", range=[0, 1.02])
    else:
        fig.update_yaxes(title_text="half-life ln2 / (−ln λ) (tokens, log scale)", type="log", exponentformat="power")
    return fig


def layer_channel_heatmap(decay: np.ndarray, log10_half_life: np.ndarray, head_size: int, *, value: str = "decay",
                          sort: bool = False, head: Optional[int] = None, title: Optional[str] = None) -> go.Figure:
    """Layers x channels heat map of lambda ("decay", colour range [0, 1]) or log10 half-life ("log10_half_life").

    decay, log10_half_life [L, C]. sort=True sorts every layer's channels by decay, descending (the paper view as
    colours); hover always names the original channel.
    """
    if value not in ("decay", "log10_half_life"):
        raise ValueError("value must be 'decay' or 'log10_half_life'")
    decay, lh, channels = _head_channels(decay, log10_half_life, head_size, head)
    L = decay.shape[0]
    chan = np.broadcast_to(channels, decay.shape)
    if sort:
        order = np.argsort(-lh, axis=1, kind="stable")
        decay, lh, chan = (np.take_along_axis(a, order, 1) for a in (decay, lh, chan))
    custom = np.stack([chan, chan // head_size, decay, np.power(10.0, lh)], axis=-1)  # [L, n, 4]
    z = decay if value == "decay" else lh
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(z.shape[1]), y=np.arange(L), customdata=custom,
        colorscale=DECAY_COLORSCALE if value == "decay" else HALF_LIFE_COLORSCALE,
        zmin=0.0 if value == "decay" else None, zmax=1.0 if value == "decay" else None,
        colorbar=dict(title="λ" if value == "decay" else "log10 half-life"),
        hovertemplate=("layer %{y}<br>channel %{customdata[0]} (head %{customdata[1]})<br>λ = %{customdata[2]:.10g}"
                       "<br>half-life = %{customdata[3]:.4g} tokens<extra></extra>")))
    what = "decay λ" if value == "decay" else "log10 half-life"
    fig.update_layout(title=title or f"{what} per layer and channel ({'sorted' if sort else 'unsorted'})")
    fig.update_xaxes(title_text="channel rank (sorted by decay)" if sort else "channel")
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1 if L <= 32 else None)
    return fig


def bonus_heatmap(bonus: np.ndarray, *, version: str, title: Optional[str] = None) -> go.Figure:
    """Layers x channels heat map of the current token's bonus (v4 time_first, v5.1 exp(time_first), v5.2/v6
    time_faaaa, v7 r_k). bonus [L, C]."""
    bonus = np.asarray(bonus, dtype=np.float64)
    L, C = bonus.shape
    name = {"4": "time_first", "5.1": "exp(time_first)", "7": "r_k"}.get(version, "time_faaaa (u)")
    lim = float(np.abs(bonus).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=bonus, x=np.arange(C), y=np.arange(L), colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim,
        colorbar=dict(title=name),
        hovertemplate=f"layer %{{y}}<br>channel %{{x}}<br>{name} = %{{z:.6g}}<extra></extra>"))
    fig.update_layout(title=title or f"Bonus of the current token: {name}")
    fig.update_xaxes(title_text="channel")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


# ------------------------------------------------------------------------------------------------ per-token views


def token_head_heatmap(median_log10_half_life: np.ndarray, token_labels: Sequence[str], *, layer: int,
                       selected: Optional[tuple[int, int]] = None, title: Optional[str] = None,
                       zmin: Optional[float] = None, zmax: Optional[float] = None) -> go.Figure:
    """Tokens x heads heat map of the per-head median log10 half-life at one layer (v6/v7).

    median_log10_half_life [T, H]; x = token, y = head. Small values (dark) are tokens that make a head forget.
    zmin / zmax fix the colour range (compare mode: the same scale for both runs); None = the data's range.
    Heat maps give no click events in Streamlit, so an invisible marker sits on every cell (trace 1, customdata
    = [token, head]); a click selects it. Beyond `CLICKABLE_TOKENS` tokens a column is narrower than a few pixels,
    too narrow to aim at, and the markers would cost the browser a redraw of thousands of points on every change:
    the heat map is then drawn alone. `selected` = (token, head) draws a frame around that cell.
    """
    z = np.asarray(median_log10_half_life, dtype=np.float64)  # [T, H]
    T, H = z.shape
    labels = [escape_label(s) for s in token_labels]
    if len(labels) != T:
        raise ValueError(f"{len(labels)} token labels for {T} tokens")
    zt = z.T  # [H, T]
    cats, axis = token_axis(labels)  # the token axis's categories "index: text": hover shows them
    fig = go.Figure(go.Heatmap(
        z=zt, x=cats, y=np.arange(H), colorscale=HALF_LIFE_COLORSCALE,
        zmin=zmin, zmax=zmax, colorbar=dict(title="median<br>log10 half-life"),
        hovertemplate="token %{x}<br>head %{y}<br>log10 median half-life = %{z:.3f}<extra></extra>"))
    if T <= CLICKABLE_TOKENS:
        tt, hh = np.meshgrid(np.arange(T), np.arange(H))  # [H, T]
        fig.add_trace(click_overlay(
            x=[cats[t] for t in tt.reshape(-1)], y=hh.reshape(-1), name="cells",
            customdata=np.stack([tt.reshape(-1), hh.reshape(-1), np.power(10.0, zt.reshape(-1))], -1),
            marker=dict(symbol="square", size=14, color="rgba(0,0,0,0)", opacity=0.0),
            selected=dict(marker=dict(opacity=0.0)), unselected=dict(marker=dict(opacity=0.0)),
            hovertemplate=("token %{x}<br>head %{customdata[1]}<br>median half-life = "
                           "%{customdata[2]:.4g} tokens<extra>click to inspect</extra>")))
    if selected is not None:
        t, h = selected
        fig.add_shape(type="rect", x0=t - 0.5, x1=t + 0.5, y0=h - 0.5, y1=h + 0.5,
                      line=dict(color="red", width=3))
    fig.update_layout(title=title or f"Median half-life per token and head, layer {layer} (dark = forgets)",
                      clickmode="event+select", hovermode="closest", dragmode=False)
    fig.update_xaxes(title_text="token", range=[-0.5, T - 0.5], **axis)
    fig.update_yaxes(title_text="head", autorange="reversed", dtick=1 if H <= 32 else None)
    return fig


def token_head_difference_heatmap(difference: np.ndarray, token_labels: Sequence[str], *, layer: int,
                                  title: Optional[str] = None) -> go.Figure:
    """Tokens x heads heat map of B - A of the per-head median log10 half-life (compare mode, same architecture
    and token count). difference [T, H]; diverging colours centred on 0 (blue: B forgets faster)."""
    z = np.asarray(difference, dtype=np.float64)
    T, H = z.shape
    labels = [escape_label(s) for s in token_labels]
    if len(labels) != T:
        raise ValueError(f"{len(labels)} token labels for {T} tokens")
    finite = np.abs(z[np.isfinite(z)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    zt = z.T  # [H, T]
    cats, axis = token_axis(labels)
    fig = go.Figure(go.Heatmap(
        z=zt, x=cats, y=np.arange(H), colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim,
        colorbar=dict(title="B − A<br>log10 half-life"),
        hovertemplate=("token %{x}<br>head %{y}<br>B − A = %{z:.3f} (log10 half-life)<extra></extra>")))
    fig.update_layout(title=title or f"Difference B − A of the median log10 half-life, layer {layer} "
                                     "(blue: B forgets faster)", hovermode="closest")
    fig.update_xaxes(title_text="token", range=[-0.5, T - 0.5], **axis)
    fig.update_yaxes(title_text="head", autorange="reversed", dtick=1 if H <= 32 else None)
    return fig


def channel_spectrum_figure(token_decay: np.ndarray, token_log10_half_life: np.ndarray,
                            static_decay: Optional[np.ndarray], static_log10_half_life: Optional[np.ndarray], *,
                            channels: Sequence[int], token_label: str, layer: int, head: int, y: str = "decay",
                            sort: bool = False, title: Optional[str] = None) -> go.Figure:
    """One (token, head): the decay of each of the head's channels at that token against the static
    (data-independent) decay. All inputs [N]; `channels` are their global channel numbers.
    sort=True draws each curve as a spectrum (sorted descending) instead of in channel order. static_decay None
    (a trace file: no parameters) draws the token's curve alone. token_label: raw text (escaped here).
    """
    token_label = escape_label(token_label)
    if y not in ("decay", "half_life"):
        raise ValueError("y must be 'decay' or 'half_life'")
    channels = np.asarray(channels)
    fig = go.Figure()
    curves = [("static (data-independent)", static_decay, static_log10_half_life, STATIC_COLOR, "dash"),
              (f"token {token_label}", token_decay, token_log10_half_life, "#d62728", None)]
    if static_decay is None:
        curves = curves[1:]
    for name, lam, lh, color, dash in curves:
        lam, lh = np.asarray(lam, dtype=np.float64), np.asarray(lh, dtype=np.float64)
        order = np.argsort(-lh, kind="stable") if sort else np.arange(len(lam))
        hl = np.power(10.0, lh[order])
        fig.add_trace(go.Scatter(
            x=np.arange(len(order)) if sort else channels[order], y=lam[order] if y == "decay" else hl,
            mode="lines+markers", name=name, line=dict(color=color, dash=dash),
            customdata=np.stack([channels[order], lam[order], hl], -1),
            hovertemplate=(f"{name}<br>channel %{{customdata[0]}}<br>λ = %{{customdata[1]:.10g}}"
                           "<br>half-life = %{customdata[2]:.4g} tokens<extra></extra>")))
    vs = "" if static_decay is None else " vs static"
    fig.update_layout(title=title or f"Channel decays of head {head}, layer {layer}: token {token_label}{vs}",
                      hovermode="closest")
    fig.update_xaxes(title_text="channel rank (sorted)" if sort else "channel")
    if y == "decay":
        fig.update_yaxes(title_text="per-step decay λ", range=[0, 1.02])
    else:
        fig.update_yaxes(title_text="half-life (tokens, log scale)", type="log", exponentformat="power")
    return fig


def retention_figure(retained_by_head: np.ndarray, token_labels: Sequence[str], *, source: int, layer: int,
                     agg: str = "median", log_y: bool = True, title: Optional[str] = None) -> go.Figure:
    """Retention R_{i->t} of source token i's write when token t reads it, one line per head.

    retained_by_head [T, H] (NaN before the first read); the head value aggregates its channels by `agg`.
    """
    r = np.asarray(retained_by_head, dtype=np.float64)
    T, H = r.shape
    labels = [escape_label(s) for s in token_labels]
    defined = np.where(~np.isnan(r).all(axis=1))[0]
    colors = head_colors(H)
    fig = go.Figure()
    cats, axis = token_axis(labels)
    x = [cats[t] for t in defined]
    mode = "lines+markers" if len(defined) * H <= SVG_MARKER_LIMIT else "lines"
    for h in range(H):
        fig.add_trace(go.Scatter(
            x=x, y=r[defined, h], mode=mode, name=f"head {h}", line=dict(color=colors[h]),
            hovertemplate=f"head {h}<br>read at token %{{x}}<br>{agg} retention = %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=title or f"Retention of token {source}: {labels[source]}'s write, layer {layer} "
                                     f"({agg} over each head's channels)", hovermode="closest",
                      legend_title_text="head")
    fig.update_xaxes(title_text="reading token t", range=[max(source - 0.5, -0.5), T - 0.5], **axis)
    fig.update_yaxes(title_text=f"retention R (i = {source} → t)" + (" (log scale)" if log_y else ""),
                     type="log" if log_y else "linear", range=None if log_y else [0, 1.02],
                     exponentformat="power")
    return fig


def state_size_figure(values: np.ndarray, token_labels: Sequence[str], *, layer: int, metric: str = "frobenius",
                      version: str = "", log_y: bool = False, title: Optional[str] = None) -> go.Figure:
    """Size of the WKV state after every token, one line per head. values [T, H].

    metric "frobenius" (‖S‖_F) or "max_abs" (max |entry|). v4 (one "head"): of aa / bb over all channels.
    """
    if metric not in ("frobenius", "max_abs"):
        raise ValueError("metric must be 'frobenius' or 'max_abs'")
    v = np.asarray(values, dtype=np.float64)
    T, H = v.shape
    labels = [escape_label(s) for s in token_labels]
    what = "‖S‖_F" if metric == "frobenius" else "max |S_ij|"
    if version == "4":
        what = "‖aa/bb‖₂" if metric == "frobenius" else "max |aa/bb|"
    colors = head_colors(H)
    cats, axis = token_axis(labels)
    fig = go.Figure()
    for h in range(H):
        fig.add_trace(go.Scatter(
            x=cats, y=v[:, h], mode="lines", name="all channels" if version == "4" else f"head {h}",
            line=dict(color=colors[h]),
            hovertemplate=(("all channels" if version == "4" else f"head {h}")
                           + f"<br>after token %{{x}}<br>{what} = %{{y:.5g}}<extra></extra>")))
    fig.update_layout(title=title or f"State size after each token, layer {layer}: {what}", hovermode="closest",
                      legend_title_text="head")
    fig.update_xaxes(title_text="token", **axis)
    fig.update_yaxes(title_text=what + (" (log scale)" if log_y else ""), type="log" if log_y else "linear",
                     exponentformat="power")
    return fig
