"""Plotly figures of the attention-score (R·W·K, A) and influence-span (W·K norm, S) views.

Pure functions: arrays in (numpy or torch), a `plotly.graph_objects.Figure` out; no Streamlit, no state. Every trace
has a hovertemplate. Plotly renders hover text, tick labels and titles as a small subset of HTML, so every piece of
token text (and every title) passes through `common.escape_label`: a prompt containing `<script>` or `<b>` shows
those characters literally. Heat maps use numeric axes (token index), so repeated tokens never merge.

Colours: red for positive, green for negative (the web-rwkv-inspector convention); colour-blind safe alternative:
orange for positive, purple for negative (the PuOr pair). Spans (>= 0) use white to red (orange).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from rwkv_core.figures.common import escape_label, token_axis

POS_RGB = {False: (214, 39, 40), True: (230, 97, 1)}  # red / orange (colour-blind safe)
NEG_RGB = {False: (44, 160, 44), True: (94, 60, 153)}  # green / purple


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rgb(c: tuple) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def diverging_colorscale(colorblind: bool = False) -> list:
    """Negative (green / purple) through white at 0 to positive (red / orange); use with zmin = -zmax."""
    return [[0.0, _rgb(NEG_RGB[colorblind])], [0.5, "rgb(255,255,255)"], [1.0, _rgb(POS_RGB[colorblind])]]


def sequential_colorscale(colorblind: bool = False) -> list:
    """White at 0 to red (orange) at the maximum, for spans."""
    return [[0.0, "rgb(255,255,255)"], [1.0, _rgb(POS_RGB[colorblind])]]


def _zmax(z: np.ndarray, zmax: Optional[float]) -> float:
    if zmax is not None and math.isfinite(zmax) and zmax > 0:
        return float(zmax)
    finite = np.abs(z[np.isfinite(z)])
    m = float(finite.max()) if finite.size else 0.0
    return m if m > 0 else 1.0


def token_colors(values, scale: float, colorblind: bool = False) -> list[str]:
    """CSS background of each token box: rgba(red) for positive, rgba(green) for negative (colour-blind: orange,
    purple), alpha = |value| * scale clipped to 1; transparent for zero, NaN or missing values."""
    out = []
    for v in _np(values).reshape(-1):
        if not math.isfinite(v) or v == 0.0:
            out.append("rgba(0,0,0,0)")
            continue
        a = min(1.0, abs(v) * float(scale))
        c = POS_RGB[colorblind] if v > 0 else NEG_RGB[colorblind]
        out.append(f"rgba({c[0]},{c[1]},{c[2]},{a:.3f})")
    return out


def heatmap_figure(A, token_labels: Sequence[str], title: str = "", diverging: bool = True,
                   colorblind: bool = False, *, zmax: Optional[float] = None, sel: Optional[int] = None,
                   value_name: str = "score", offset: int = 0) -> go.Figure:
    """T x T matrix of one head (query j down, key/source i across), blank above the diagonal.

    A [T, T] (A or S); token_labels: the T token texts (raw; escaped here). diverging: signed values on a
    symmetric red/green scale (else white to red from 0). zmax: colour range (default max |A|). sel: frame the
    selected token's row and column. offset: index of the first token when A is a window of a longer prompt.
    Hover: the query token, the key token (index and text, the axes' categories) and the value.
    """
    Z = _np(A).astype(np.float32)  # a copy; float32 halves what the browser is sent (base64)
    if Z.ndim != 2 or Z.shape[0] != Z.shape[1]:
        raise ValueError(f"heatmap_figure needs a square [T, T] matrix, got shape {Z.shape}")
    T = Z.shape[0]
    if len(token_labels) != T:
        raise ValueError(f"{len(token_labels)} token labels for a {T} x {T} matrix")
    Z[np.triu_indices(T, 1)] = np.nan
    labels = [escape_label(t) for t in token_labels]
    # The axes are categories "index: text" (unique by their index), so hover shows both tokens' texts from 2T
    # labels; T x T strings as customdata cost ~1 s and ~4 MB per 384-token window on every rerun.
    cats, axis = token_axis(labels, offset)
    zm = _zmax(Z, zmax)
    name = escape_label(value_name)
    hover = f"query j = %{{y}}<br>key i = %{{x}}<br>{name} = %{{z:.4g}}<extra></extra>"
    fig = go.Figure(go.Heatmap(
        z=Z, x=cats, y=cats, zmin=-zm if diverging else 0.0, zmax=zm, hoverongaps=False,
        colorscale=diverging_colorscale(colorblind) if diverging else sequential_colorscale(colorblind),
        colorbar=dict(title=dict(text=name), thickness=12), hovertemplate=hover))
    if sel is not None and offset <= sel < offset + T:
        line = dict(color="#1d4ed8", width=1.5)
        s_ = sel - offset  # shapes on a category axis are placed by the category's position
        fig.add_shape(type="rect", x0=-0.5, x1=s_ + 0.5, y0=s_ - 0.5, y1=s_ + 0.5, line=line)
        fig.add_shape(type="rect", x0=s_ - 0.5, x1=s_ + 0.5, y0=s_ - 0.5, y1=T - 0.5, line=line)
    fig.update_layout(title=dict(text=escape_label(title, empty="")), plot_bgcolor="rgb(243,244,246)",
                      height=int(min(800, max(360, 12 * T + 160))), margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="key (source) token i", showgrid=False, zeroline=False, **axis)
    fig.update_yaxes(title_text="query token j", autorange="reversed", showgrid=False, zeroline=False, **axis)
    return fig


def overview_grid_figure(values, title: str = "", diverging: bool = True, colorblind: bool = False, *,
                         layers: Optional[Sequence[int]] = None, value_name: str = "value",
                         selected: Optional[tuple[int, int]] = None, zmax: Optional[float] = None) -> go.Figure:
    """Layer x head tiles for the selected token (e.g. max |A| over sources, or the score at a chosen token).

    values [L, H]; layers: the layer ids of the rows (default 0..L-1); selected (layer, head) is framed.
    Heat maps send no click events in Streamlit, so an invisible square marker sits on every tile with
    customdata [layer, head, value] (a click on it selects the tile).
    """
    V = _np(values)
    if V.ndim != 2:
        raise ValueError(f"overview_grid_figure needs values [L, H], got shape {V.shape}")
    L, H = V.shape
    layers = list(range(L)) if layers is None else [int(l) for l in layers]
    zm = _zmax(V, zmax)
    name = escape_label(value_name)
    hover = f"layer %{{y}}, head %{{x}}<br>{name} = %{{z:.4g}}<extra></extra>"
    fig = go.Figure(go.Heatmap(
        z=V, x=list(range(H)), y=layers, zmin=-zm if diverging else 0.0, zmax=zm, xgap=2, ygap=2,
        colorscale=diverging_colorscale(colorblind) if diverging else sequential_colorscale(colorblind),
        colorbar=dict(title=dict(text=name), thickness=12), hovertemplate=hover))
    hh, ll = np.meshgrid(np.arange(H), np.arange(L))
    custom = np.stack([np.asarray(layers)[ll].reshape(-1), hh.reshape(-1), V.reshape(-1)], -1)
    fig.add_trace(go.Scatter(
        x=hh.reshape(-1), y=np.asarray(layers)[ll].reshape(-1), mode="markers", showlegend=False, customdata=custom,
        marker=dict(symbol="square", size=16, color="rgba(0,0,0,0)"),
        hovertemplate=f"layer %{{customdata[0]}}, head %{{customdata[1]}}<br>{name} = %{{customdata[2]:.4g}}"
                      "<extra>click to open</extra>"))
    if selected is not None and selected[0] in layers:
        y = selected[0]
        fig.add_shape(type="rect", x0=selected[1] - 0.5, x1=selected[1] + 0.5, y0=y - 0.5, y1=y + 0.5,
                      line=dict(color="#1d4ed8", width=3))
    fig.update_layout(title=dict(text=escape_label(title, empty="")), clickmode="event+select",
                      hovermode="closest", height=int(min(700, max(240, 24 * L + 110))),
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="head", dtick=1 if H <= 32 else None, showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1 if L <= 48 else None, showgrid=False,
                     zeroline=False)
    return fig


def span_curves_figure(curves, title: str = "", *, sel: Optional[int] = None, head_labels=None,
                       open_head: Optional[int] = None, relative: bool = False, log_y: bool = False) -> go.Figure:
    """Span of the selected token's key against distance d = j - sel, one line per head.

    curves [H, D] (`scores.span_curves(rc["span_col"][layer], sel)`); relative: divide each by its value at d = 0;
    log_y: logarithmic y (zeros left out). open_head is drawn bold.
    """
    C = _np(curves)
    if C.ndim == 1:
        C = C[None]
    H, D = C.shape
    names = [f"head {h}" for h in range(H)] if head_labels is None else [escape_label(str(x))
                                                                          for x in head_labels]
    d = np.arange(D)
    fig = go.Figure()
    for h in range(H):
        y = C[h].copy()
        if relative:
            y = y / y[0] if y[0] > 0 else np.zeros_like(y)
        if log_y:
            y = np.where(y > 0, y, np.nan)
        bold = open_head is not None and h == open_head
        tok = f" (token {sel} + d)" if sel is not None else ""
        fig.add_trace(go.Scatter(
            x=d, y=y, mode="lines", name=names[h], line=dict(width=3.5 if bold else 1.4),
            hovertemplate=f"{names[h]}<br>d = %{{x}}{tok}<br>span = %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=dict(text=escape_label(title, empty="")), height=380,
                      margin=dict(l=10, r=10, t=50, b=10))
    what = f"j − {sel}" if sel is not None else "j − i"
    fig.update_xaxes(title_text=f"distance d = {what} (tokens after the selected one)")
    fig.update_yaxes(title_text="span / span at d = 0" if relative else "span ‖k pushed to j‖",
                     type="log" if log_y else "linear")
    return fig


def span_reach_figure(reach, title: str = "", *, censored=None, layers: Optional[Sequence[int]] = None,
                      threshold: float = 0.1) -> go.Figure:
    """How far each head's influence reaches, per layer: one marker per (layer, head) at the distance where the
    span fell below `threshold` of its initial value (`scores.span_reach`), plus the median over heads.

    reach [L, H]; censored [L, H] bool (span never fell below the threshold within the prompt: the value is a
    lower bound, drawn as a triangle).
    """
    R = _np(reach)
    if R.ndim != 2:
        raise ValueError(f"span_reach_figure needs reach [L, H], got shape {R.shape}")
    L, H = R.shape
    cens = np.zeros_like(R, dtype=bool) if censored is None else np.asarray(censored, dtype=bool)
    layers = list(range(L)) if layers is None else [int(l) for l in layers]
    lay = np.asarray(layers)
    fig = go.Figure()
    heads = np.broadcast_to(np.arange(H), (L, H))
    for flag, symbol, label in ((False, "circle", "reach"), (True, "triangle-up", "≥ reach (censored)")):
        m = cens == flag
        if not m.any():
            continue
        fig.add_trace(go.Scatter(
            x=np.broadcast_to(lay[:, None], (L, H))[m], y=R[m], mode="markers", name=label,
            customdata=heads[m], marker=dict(symbol=symbol, size=8, opacity=0.75),
            hovertemplate=("layer %{x}, head %{customdata}<br>reach " + ("≥ " if flag else "") +
                           "%{y} tokens<extra></extra>")))
    fig.add_trace(go.Scatter(x=lay, y=np.median(R, axis=1), mode="lines", name="median over heads",
                             line=dict(color="rgba(60,60,60,0.7)", dash="dot"),
                             hovertemplate="layer %{x}: median reach %{y} tokens<extra></extra>"))
    fig.update_layout(title=dict(text=escape_label(title, empty="")), height=380,
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="layer", dtick=1 if L <= 48 else None)
    fig.update_yaxes(title_text=f"reach (tokens until span < {threshold:g} × initial)", rangemode="tozero")
    return fig


def source_reach_figure(reach, censored, *, open_head: int, title: str = "", heads_word: str = "head") -> go.Figure:
    """Per head of one layer: the reach of every source token (`scores.span_reach` of each column of the head's span
    matrix); a box over the sources whose span fell below the threshold, the censored ones (never fell within the
    prompt) as triangles at their lower bound. reach, censored [H, T]; open_head is drawn bold."""
    R, cens = _np(reach), np.asarray(censored, dtype=bool)
    fig = go.Figure()
    for h in range(R.shape[0]):
        name = f"{escape_label(heads_word)} {h}"
        ok = ~cens[h]
        fig.add_trace(go.Box(y=R[h, ok], x=[name] * int(ok.sum()), name=name, boxpoints="all",
                             jitter=0.4, pointpos=0, marker=dict(size=3), showlegend=False,
                             line=dict(width=2.5 if h == open_head else 1.2),
                             hovertemplate=f"{name}: reach %{{y}} tokens<extra></extra>"))
        if cens[h].any():
            fig.add_trace(go.Scatter(y=R[h, ~ok], x=[name] * int((~ok).sum()), mode="markers",
                                     marker=dict(symbol="triangle-up", size=4, color="rgba(120,120,120,0.35)"),
                                     showlegend=False,
                                     hovertemplate=f"{name}: ≥ %{{y}} tokens (still above the threshold at the "
                                                   "end of the prompt)<extra></extra>"))
    fig.update_layout(title=dict(text=escape_label(title, empty="")), height=380, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_yaxes(title_text="reach (tokens)", rangemode="tozero")
    return fig
