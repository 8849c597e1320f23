"""Shared page code of the two score pages: Attention (R·W·K scores A) and Influence spans (W·K norm S).

`render(ctx, ATTN)` / `render(ctx, SPAN)` draw a whole page below `page_setup`: controls
bound to the URL (layer, head, tok, diag, scale, cb, ov; spans also thr, rel, logy), the token view of every run
(earlier tokens coloured by the selected token's row, later tokens by its column), the layer x head overview grid
(click a tile to open that head), the T x T heat map of the open head, span curves and reach (spans page), the
difference of two runs in compare mode, CSV downloads and the formula.

Numbers come from `rwkv_core.analysis.scores`: the inputs of every layer are captured once per (model, prompt) under the
work gate and kept with `st.cache_resource` (tensors, shared read-only: no copy per rerun); the selected token's
rows/columns of all (layer, head) and the full matrices of the open head are cached with `st.cache_data`.
Figures and token colours come from `rwkv_core.figures.scores`. `render` is a short list of sections: controls,
formula, the selected values, token views, overview grid, (spans) curves and reach, the open head's matrix.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from inspector_ui import settings as app_settings
from inspector_ui.session import PageContext, Run, bind, has_predictions, offer_predictions, publish
from inspector_ui.widgets import (clamp_choice, csv_bytes, gated, goto_token, run_columns, show_error, token_label,
                                  token_view, url_bool)
from rwkv_core.figures import scores as FS
from rwkv_core.figures.common import IMAGE_FORMATS, cell_from_selection, image_config
from rwkv_core.analysis import scores as S
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.jobs import cost as COST

ATTN, SPAN = "attn", "span"
MAX_HEATMAP = 384  # the heat map shows a window of at most this many tokens around the selected one
TOKEN_LINES = 6  # the token view's height in lines: the selection and the overview below it fit on one screen
LAYER_REACH_MAX_T = 1024  # the per-layer reach summary (all source tokens) is computed up to this length at once
SCALE_OPTIONS = ["auto", "-3", "-2", "-1", "0", "1", "2", "3"]


# ------------------------------------------------------------------------------------------------ numbers


def run_id(run: Run) -> tuple:
    """A hashable identity of what a run computed: (model, device, dtype, token digest) or the trace's digest."""
    tok = hashlib.sha1(np.asarray(run.tokens, dtype=np.int64).tobytes()).hexdigest()
    if run.model_key is not None:
        return ("model", *run.model_key, tok)
    h = hashlib.sha1(tok.encode())
    h.update(repr(sorted(run.trace.meta.items(), key=lambda kv: kv[0])).encode())
    for l in run.trace.layers[:1]:
        for name in ("r", "k", "w"):
            a = run.trace.arrays.get(f"{name}_l{l}")
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return ("trace", h.hexdigest())


@st.cache_resource(max_entries=2, ttl=3600, show_spinner=False)
def _model_inputs(rid: tuple, _model, tokens: tuple[int, ...]) -> list[S.ScoreInputs]:
    """Every layer's score inputs for one prompt: one forward of the shared model, under the work gate. Its logits
    become the token view's predictions (no second forward). A capture past the server's capture budget is refused
    with one line before it starts (two are kept: A and B of compare mode)."""
    refusal = COST.capture_refusal(_model.cfg, len(tokens), _model.cfg.n_layer, app_settings.capture_memory_bytes())
    if refusal:
        raise RWKVInspectorError(refusal[:1].upper() + refusal[1:] + ".")

    def capture() -> list[S.ScoreInputs]:
        known = has_predictions(rid[1:4], tokens)  # e.g. the home page's: no head over the prompt then
        logits, inputs = S.capture_with_logits(_model, list(tokens), logits=not known)
        if logits is not None:
            offer_predictions(rid[1:4], tokens, logits)
        return inputs

    return gated(capture, "Capturing r, k, v and the decays")


@st.cache_resource(max_entries=4, ttl=3600, show_spinner=False)
def _trace_inputs(rid: tuple, _run: Run) -> list[S.ScoreInputs]:
    """From a trace file's arrays, no model (v7: the modified key ktilde; underflowed decays are floored)."""
    return S.inputs_from_trace(_run.trace.float_arrays(), _run.cfg, _run.trace.layers)  # float16 files as float32


def score_inputs(run: Run) -> list[S.ScoreInputs]:
    """The score inputs of every available layer of a run (cached)."""
    rid = run_id(run)
    if run.model_key is not None:
        return _model_inputs(rid, run.loaded.model, tuple(run.tokens))
    return _trace_inputs(rid, run)


@st.cache_data(max_entries=64, show_spinner=False)
def _row_col(rid: tuple, sel: int, spans: bool, _inputs: list) -> dict[str, np.ndarray]:
    rc = gated(lambda: S.row_and_column(_inputs, sel, diagonal=True, spans="col" if spans else False),
               "Scoring the selected token")
    return {k: v.detach().cpu().numpy() for k, v in rc.items() if isinstance(v, torch.Tensor)}


def row_col(rid: tuple, sel: int, diagonal: bool, spans: bool, _inputs: list) -> dict[str, np.ndarray]:
    """The selected token's row and column of A for every (layer, head), and with spans S's column (how long its
    key lasts: the overview and the curves): [L, H, T] numpy. S's row is per layer (`span_row`). Without the
    diagonal only A[sel, sel] (the bonus) is 0, so both come from one computation."""
    rc = _row_col(rid, sel, spans, _inputs)  # st.cache_data hands out a copy: ours to change
    if not diagonal:
        for name in ("row", "col"):
            rc[name][..., sel] = 0.0
    return rc


@st.cache_data(max_entries=64, show_spinner=False)
def span_row(rid: tuple, sel: int, layer: int, _si: S.ScoreInputs) -> np.ndarray:
    """S[sel, :] of every head of one layer, [H, T]: what the selected token still holds of each earlier key. Only
    the open layer's (the token view shows it): for v7 it costs O(T N^2) per head, a second at 1,000 tokens for all
    12 layers of a 0.1B model."""
    rc = gated(lambda: S.row_and_column([_si], sel, spans=True), "Scoring the selected token")
    return rc["span_row"][0].detach().cpu().numpy()


@st.cache_data(max_entries=64, show_spinner=False)
def head_matrix(rid: tuple, layer: int, head: int, what: str, diagonal: bool, _si: S.ScoreInputs,
                window: Optional[tuple[int, int]] = None) -> np.ndarray:
    """A (what="attn") or S (what="span") of one head, zero above the diagonal: [T, T] float32, or the tokens
    [a, b) of it for `window` = (a, b): [b - a, b - a], computed from the window's inputs alone where that is exact
    (v5-v7), so a 384-token window of a 4,096-token prompt costs 384^2, not 4,096^2."""
    a, b = window if window is not None else (0, _si.T)
    local = S.window_local(_si) and (a, b) != (0, _si.T)
    si = S.window_inputs(_si, a, b) if local else _si

    def fn() -> torch.Tensor:
        M = S.full_scores(si, head, diagonal=diagonal) if what == ATTN else S.full_spans(si, head)
        return M if local else M[a:b, a:b]

    return gated(fn, "Computing the head's matrix").detach().cpu().numpy()


def reach_from_spans(Sm: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Reach of every source token i of a span matrix S [T(j), T(i)]: `scores.span_reach` of its column from the
    token on (S[i:, i], distance d = j - i); (reach [T], censored [T])."""
    pairs = [S.span_reach(Sm[i:, i], threshold) for i in range(Sm.shape[0])]
    return np.array([r for r, _ in pairs], dtype=float), np.array([c for _, c in pairs], dtype=bool)


@st.cache_data(max_entries=16, show_spinner=False)
def layer_reach(rid: tuple, layer: int, threshold: float, _si: S.ScoreInputs) -> tuple[np.ndarray, np.ndarray]:
    """Reach of every source token for every head of one layer: (reach [H, T], censored [H, T])."""
    rs, cs = [], []
    for h in range(_si.H):
        r, c = reach_from_spans(head_matrix(rid, layer, h, SPAN, True, _si), threshold)
        rs.append(r)
        cs.append(c)
    return np.stack(rs), np.stack(cs)


# ------------------------------------------------------------------------------------------------ colours


def token_css(values: Sequence[float], factor: float, colorblind: bool = False,
              selected: Optional[int] = None) -> list[Optional[str]]:
    """Token backgrounds (`figures_scores.token_colors`: red/green, or orange/purple, alpha = |v| x factor); the
    selected token gets none (the view draws it blue)."""
    cols: list[Optional[str]] = list(FS.token_colors(np.asarray(values, dtype=np.float64), factor, colorblind))
    if selected is not None and 0 <= selected < len(cols):
        cols[selected] = None
    return cols


def scale_factor(choice: str, shown: Sequence[np.ndarray]) -> float:
    """Multiplier of |score| for the colour intensity: 10^s, or with "auto" `scores.auto_scale` of the shown values
    (the largest |value| maps to 1)."""
    if choice != "auto":
        return float(10.0 ** int(choice))
    flat = [np.ravel(np.asarray(x, dtype=np.float64)) for x in shown]
    return S.auto_scale(np.concatenate(flat) if flat else np.zeros(0))


# ------------------------------------------------------------------------------------------------ figures


def heat_window(T: int, sel: int, size: int = MAX_HEATMAP) -> tuple[int, int]:
    """[start, stop) of at most `size` tokens, ending at the selected token where possible (then centred)."""
    if T <= size:
        return 0, T
    start = min(max(0, sel - size // 2), T - size)
    return start, start + size


def window_heatmap(M: np.ndarray, texts: Sequence[str], *, sel: int, zmax: float, signed: bool, colorblind: bool,
                   window: tuple[int, int], value_name: str, title: str) -> go.Figure:
    """`figures_scores.heatmap_figure` of the window [a, b) of the tokens: M is that window's matrix [b-a, b-a]
    (token indices kept on the axes)."""
    a, b = window
    return FS.heatmap_figure(M, list(texts[a:b]), title, diverging=signed, colorblind=colorblind,
                             zmax=zmax, sel=sel, value_name=value_name, offset=a)


# ------------------------------------------------------------------------------------------------ help texts


ATTN_HELP = r"""
**Score** $A[h,j,i]$: the coefficient of $v_i$ in head $h$'s WKV output at token $j$ (before `ln_x` and the gate), so
that $\sum_{i\le j} A[h,j,i]\,v_i = \mathrm{wkv}_j$ exactly. Tokens, layers and heads are numbered from 0; query
$j$ reads source $i \le j$. Earlier tokens are coloured by $A[h,\mathrm{sel},i]$ (what the selected token reads),
later tokens by $A[h,j,\mathrm{sel}]$ (who reads it); red positive, green negative (orange / purple in the
colour-blind palette). A score's sign alone means little: negating a head's keys and values gives the same model with
every score of that head flipped, so a head can read its source through a large negative score (the v6 demo's lookup
head, layer 1 head 0, does); look at $|A|$ for where a head reads.

* **v5 / v6** (R·W·K dot, as web-rwkv-inspector): $A[h,j,i] = \sum_{c\in h} r_j[c]\,\Big(\prod_{t=i+1}^{j-1}
  w_t[c]\Big)\,k_i[c]$ for $i<j$; the diagonal is the bonus $A[h,j,j] = \sum_{c\in h} r_j[c]\,u[c]\,k_j[c]$.
* **v7**: $A[h,j,i] = \tilde k_i\,G_{i+1}G_{i+2}\cdots G_j\,r_j^\top$ for $i<j$ and $\tilde k_j\cdot r_j$ for $i=j$,
  with $\tilde k$ the modified key and $G_t = \mathrm{diag}(w_t) - \hat\kappa_t^\top(\hat\kappa_t\odot a_t)$ (the
  state is updated before it is read). v7's separate bonus $\sum_c r_j[c]\,\tilde k_j[c]\,r_k[c]$, added after
  `ln_x`, is not part of $A$.
* **v4** has no heads: per channel $c$, $A_c[j,i]$ is the normalised weight of token $i$ in token $j$'s wkv (each
  row sums to 1 per channel). A "head" here is a **group of 64 consecutive channels** and the score shown is the
  **mean of the per-channel weights over the group** (rows of the mean still sum to 1).

The diagonal toggle drops $A[j,j]$ (the bonus term; v4 keeps its normaliser). Colour intensity is
$|A|\cdot 10^{s}$ clipped to 1, or with *auto* $|A| / \max|A|$ over the shown row and column (shared by both runs in
compare mode unless their RWKV versions differ). Overview tiles: the largest $|A[h,\mathrm{sel},i]|$ over earlier tokens ($i<\mathrm{sel}$), or the
largest $|A[h,j,\mathrm{sel}]|$ over later ones ($j>\mathrm{sel}$).
"""

SPAN_HELP = r"""
**Influence span** $S[h,j,i]$ ($i\le j$, W·K norm): the norm over the head's channels of what is left in the state,
after token $j$ has been processed, of token $i$'s key; it ignores $r$ and $v$ and is always $\ge 0$.

* **v5 / v6**: $S[h,j,i] = \big\lVert k_i \odot \prod_{t=i+1}^{j} w_t \big\rVert_2$ for $i<j$, and $\lVert k_j\rVert$ at
  $i=j$. Like **web-rwkv-inspector's code, the product includes $w_j$** (its README picture stops at $j-1$).
* **v7**: $S[h,j,i] = \lVert \tilde k_i\,G_{i+1}\cdots G_j\rVert$, $\lVert\tilde k_j\rVert$ at $i=j$, with
  $G_t = \mathrm{diag}(w_t) - \hat\kappa_t^\top(\hat\kappa_t\odot a_t)$ (update, then read).
* **v4** (no heads; groups of 64 channels): the L2 norm over the group of token $i$'s share of the state's
  normaliser after token $j$, $e^{k_i+\sum_{t=i+1}^{j}\log w_t} / \sum_{i'\le j} e^{k_{i'}+\sum_{t=i'+1}^{j}\log w_t}$.

Earlier tokens are coloured by $S[h,\mathrm{sel},i]$ (how much of their key is still in the state after the
selected token), later tokens by $S[h,j,\mathrm{sel}]$ (how long the selected token's key stays). **Reach**: the first
distance $d = j-i$ at which the span falls below the threshold times its value at $d=0$; when it never does within
the prompt the reach is censored (a lower bound, drawn as triangles).
"""


# ------------------------------------------------------------------------------------------------ the page


@dataclass
class RunScores:
    run: Run
    rid: tuple
    inputs: list  # ScoreInputs per available layer
    layers: list[int]
    rc: Optional[dict] = None
    sel: int = 0
    ok: bool = True  # the open layer/head exists in this run
    values: Optional[np.ndarray] = None  # per token: row (i <= sel) / column (i > sel) of the open head
    matrix: Optional[np.ndarray] = None  # the open head's matrix over `window` (the tokens shown)
    window: Optional[tuple[int, int]] = None
    factor: float = 1.0  # colour intensity multiplier of this run's token view (shared unless the versions differ)


@dataclass
class Choices:
    """What the page's controls chose, shared by every section below them."""

    mode: str  # ATTN or SPAN
    prefix: str  # widget-key prefix of this page: "att" or "spn"
    layer: int
    head: int
    tok: int  # the selected token as asked for (a shorter run selects its last token)
    diag: bool
    colorblind: bool
    scale: str
    config: dict  # Plotly chart config (camera button format and file name)
    heads_word: str  # "head", or "group" for v4
    separate_scales: bool = False  # runs of different RWKV versions: each run has its own colour scale

    @property
    def score_word(self) -> str:
        return "scores" if self.mode == ATTN else "spans"

    @property
    def value_name(self) -> str:
        return "A" if self.mode == ATTN else "S"


def _tv_key(P: str, label: str, tok: int, sel: int) -> str:
    return f"{P}_tv_{label}_{tok}_{sel}"


def _grid_key(P: str, label: str, layer: int, head: int, ov: str, sel: int) -> str:
    return f"{P}_grid_{label}_{layer}_{head}_{ov}_{sel}"


def _apply_clicks(P: str, lengths: dict[str, int]) -> None:
    """Clicks of the last run move the selection, before any widget of this run is drawn.

    The token views and grids are keyed by the selection they showed, so a click is exactly "a state that
    differs from what that element was drawn with" (a click on the same token again after choosing another one
    in the number box still counts: the element is then a new one). `lengths`: token count per run label (a run
    shorter than the selection shows its last token)."""
    tok = st.session_state.get("tok")
    labels = list(lengths)
    if isinstance(tok, int) and labels:
        for label in labels + ["diff"]:
            drawn = min(tok, lengths.get(label, lengths[labels[0]]) - 1)
            state = st.session_state.get(_tv_key(P, label, tok, drawn))
            try:
                sel = state.get("selected") if state is not None else None
            except AttributeError:
                sel = None
            if sel is not None and int(sel) != drawn:
                st.session_state["tok"] = int(sel)
                break
    layer, head, ov = st.session_state.get("layer"), st.session_state.get("head"), st.session_state.get("ov")
    for label in labels:
        state = st.session_state.get(_grid_key(P, label, layer, head, ov, tok))
        try:
            selection = state.get("selection") if state is not None else None
        except AttributeError:
            selection = None
        cell = cell_from_selection(selection, axes=("y", "x"))  # the grid: layers down, heads across
        if cell is not None and cell != (layer, head):
            st.session_state["layer"], st.session_state["head"] = cell
            break


def _same_shape(a: RunScores, b: RunScores) -> bool:
    sa, sb = a.inputs[0], b.inputs[0]
    return (a.run.cfg.version == b.run.cfg.version and len(a.run.tokens) == len(b.run.tokens)
            and a.layers == b.layers and (sa.H, sa.N) == (sb.H, sb.N))


def _run_suffix(scored: list[RunScores], label: str) -> str:
    """' A' / ' B' after a download button's name in compare mode."""
    return " " + label if len(scored) > 1 else ""


ABOUT = {
    ATTN: "Which earlier tokens each token reads from: the exact coefficient A[h, j, i] of v_i in head h's WKV output "
            "at token j. Click a token to select it; click a tile of the overview to open a head.",
    SPAN: "How much of each token's key is still in a head's state after later tokens: S[h, j, i] = the norm of "
            "token i's key after the decays (and, v7, removals) of tokens i+1..j.",
}


def render(ctx: PageContext, mode: str) -> None:
    """The Attention (mode=ATTN) or Influence spans (mode=SPAN) page below `page_setup`."""
    scored = score_runs(ctx.runs)
    choices = controls_section(scored, mode)
    explain_section(mode, [rs.run for rs in scored])
    select_values(scored, choices)
    token_section(scored, choices)
    thr = overview_section(scored, choices)
    if mode == SPAN:
        span_curves_section(scored, choices)
        reach_section(scored, choices, thr)
    matrix_section(scored, choices)


def score_runs(runs: list[Run]) -> list[RunScores]:
    """The score inputs of every run (cached); an error stops the page with one line."""
    try:
        scored = []
        for run in runs:
            inputs = score_inputs(run)
            if not inputs:
                raise RWKVInspectorError("no layers to score")
            scored.append(RunScores(run, run_id(run), inputs, [si.layer for si in inputs]))
    except RWKVInspectorError as e:
        show_error(e)
        st.stop()
    return scored


def controls_section(scored: list[RunScores], mode: str) -> Choices:
    """Seed the controls from the URL, apply the clicks of the last run, keep every value valid, draw the controls
    and publish them to the URL."""
    P = "att" if mode == ATTN else "spn"
    A0 = scored[0]
    layers = A0.layers
    H = A0.inputs[0].H
    T_max = max(len(r.run.tokens) for r in scored)
    version = A0.run.cfg.version
    bind("layer", layers[-1] if mode == ATTN else layers[0], int)
    bind("head", 0, int)
    T0 = len(A0.run.tokens)
    default_tok = T0 - 1 if mode == ATTN else T0 // 4  # spans: an early token, whose key has a prompt to live in
    bind("tok", default_tok, int)
    bind("diag", True, url_bool)
    bind("scale", "auto", options=SCALE_OPTIONS)
    bind("cb", False, url_bool)
    ov_options = ["row", "col"] if mode == ATTN else ["reach", "end"]
    bind("ov", ov_options[0], options=ov_options)
    if mode == SPAN:
        bind("thr", 0.1, float, bounds=(0.01, 0.5))  # the slider's range
        bind("rel", True, url_bool)
        bind("logy", False, url_bool)
    bind("img", "png", options=IMAGE_FORMATS)
    for k, fb in (("layer", layers[-1]), ("head", 0), ("tok", default_tok)):
        if not isinstance(st.session_state.get(k), int) or isinstance(st.session_state.get(k), bool):
            st.session_state[k] = fb
    _apply_clicks(P, {r.run.label: len(r.run.tokens) for r in scored})
    clamp_choice("layer", layers, layers[-1])
    clamp_choice("head", list(range(H)), 0)
    if not 0 <= st.session_state["tok"] < T_max:
        st.session_state["tok"] = T_max - 1

    c = st.columns([1, 1, 1.1, 2, 1.7])
    heads_word = "group" if version == "4" else "head"
    c[0].selectbox("Layer", layers, key="layer")
    c[1].selectbox("Head" if version != "4" else "Group", list(range(H)), key="head",
                   help="v4 has no heads: a 'head' is a group of 64 consecutive channels." if version == "4" else None)
    c[2].number_input("Selected token", min_value=0, max_value=T_max - 1, step=1, key="tok",
                      help="Or click a token below.")
    c[3].select_slider("Intensity scale", SCALE_OPTIONS, key="scale",
                       format_func=lambda s: "auto" if s == "auto" else f"10^{s}",
                       help="Colour intensity = |value| × 10^s (clipped to 1); auto divides by the largest |value| "
                            "of the shown row and column (shared by both runs in compare mode, unless their RWKV "
                            "versions differ).")
    with c[4]:
        if mode == ATTN:
            st.toggle("Diagonal (bonus)", key="diag",
                      help="Include A[j, j]: the bonus term u (v4-v6), k̃_j·r_j (v7).")
        else:
            st.toggle("Relative curves", key="rel", help="Span curves divided by their value at d = 0.")
        st.toggle("Colour-blind palette", key="cb", help="Orange / purple instead of red / green.")
    st.sidebar.radio("Chart camera button saves", list(IMAGE_FORMATS), key="img", horizontal=True,
                     help="Format of the image that the camera button of every chart on this page downloads.")
    keys = ["layer", "head", "tok", "scale", "cb", "ov", "img"] + (["diag"] if mode == ATTN else ["thr", "rel", "logy"])
    publish(*keys)
    return Choices(mode=mode, prefix=P, layer=st.session_state["layer"], head=st.session_state["head"],
                   tok=st.session_state["tok"], diag=bool(st.session_state["diag"]) if mode == ATTN else True,
                   colorblind=bool(st.session_state["cb"]), scale=st.session_state["scale"],
                   config=image_config(f"rwkv-{mode}", st.session_state["img"]), heads_word=heads_word)


def explain_section(mode: str, runs: list[Run]) -> None:
    """The formula behind the page, and what differs for the runs' versions (naming the run when compare mode shows
    runs of different versions)."""
    with st.expander("Formula and how to read this page"):
        st.markdown(ATTN_HELP if mode == ATTN else SPAN_HELP)

    def which(version: str) -> Optional[str]:
        """The prefix naming the runs of this version: empty when every run is of it, "Run A (v7): " when only some
        are, None when none is."""
        labels = [r.label for r in runs if str(r.cfg.version) == version]
        if not labels:
            return None
        return "" if len(labels) == len(runs) else f"Run {' and '.join(labels)} (v{version}): "

    v4, v7 = which("4"), which("7")
    if v4 is not None:
        st.info(f"{v4}RWKV-4 has no heads: scores are per-channel normalised weights (each row sums to 1 per "
                "channel), averaged over groups of 64 consecutive channels; each group is shown as a 'head'.")
    if v7 is not None and mode == ATTN:
        st.caption(f"{v7 or 'v7: '}A uses the modified key k̃ and the full transition G (decay and in-context "
                   "removal); the separate r_k bonus (added after ln_x) is not included.")
    if len({str(r.cfg.version) for r in runs}) > 1:
        st.caption("The runs are of different RWKV versions, whose " + ("scores" if mode == ATTN else "spans")
                   + " differ in size: each run has its own colour scale.")


def select_values(scored: list[RunScores], ch: Choices) -> None:
    """Every run's selected row and column (all layers and heads), its values of the open head per token, and the
    colour intensity shared by the runs."""
    for rs in scored:
        T = len(rs.run.tokens)
        rs.sel = min(ch.tok, T - 1)
        rs.ok = ch.layer in rs.layers and ch.head < rs.inputs[0].H
        try:
            rs.rc = row_col(rs.rid, rs.sel, ch.diag, ch.mode == SPAN, rs.inputs)
        except RWKVInspectorError as e:
            show_error(e)
            st.stop()
        if rs.ok:
            li = rs.layers.index(ch.layer)
            if ch.mode == ATTN:
                row, col = rs.rc["row"][li, ch.head], rs.rc["col"][li, ch.head]
            else:
                row = span_row(rs.rid, rs.sel, ch.layer, rs.inputs[li])[ch.head]
                col = rs.rc["span_col"][li, ch.head]
            rs.values = np.where(np.arange(T) <= rs.sel, row, col)
    ch.separate_scales = len({str(rs.run.cfg.version) for rs in scored}) > 1
    for group in ([[rs] for rs in scored] if ch.separate_scales else [scored]):
        factor = scale_factor(ch.scale, [rs.values[np.arange(len(rs.values)) != rs.sel]
                                         for rs in group if rs.values is not None])
        for rs in group:
            rs.factor = factor


def selected_label(scored: list[RunScores]) -> str:
    """The selected token of run A as headings name it: "token 517 ' the'"."""
    return token_label(scored[0].run.token_texts, scored[0].sel)


def token_section(scored: list[RunScores], ch: Choices) -> None:
    """"Go to token" (a position or a text), then the token view of every run (a box of a few lines that scrolls to
    the selection), coloured by the open head's values, with its CSV; B − A in compare mode."""
    P, value_name, heads_word = ch.prefix, ch.value_name, ch.heads_word
    tok = st.session_state["tok"]
    g = st.columns([2, 3], vertical_alignment="top")
    with g[0]:
        goto_token("tok", scored[0].run.token_texts, key=f"{P}_goto")
    g[1].markdown(f"**Selected: {selected_label(scored)}** of {len(scored[0].run.tokens)} tokens")
    for col, rs in zip(run_columns(len(scored)), scored):
        with col:
            run = rs.run
            if len(scored) > 1:
                st.subheader(run.title)
            if not rs.ok:
                st.warning(f"{run.label} has no layer {ch.layer} / {heads_word} {ch.head}: it has layers {rs.layers} "
                           f"and {rs.inputs[0].H} {heads_word}s.")
                continue
            what = "reads" if ch.mode == ATTN else "keeps"
            cap, dl = st.columns([4, 1], vertical_alignment="center")
            cap.caption(f"Layer {ch.layer}, {heads_word} {ch.head}, token {run.token_name(rs.sel)} selected (blue): "
                        f"earlier tokens by {value_name}[{rs.sel}, i] (what it {what}), later tokens by "
                        f"{value_name}[j, {rs.sel}] ({'who reads it' if ch.mode == ATTN else 'how long its key stays'})"
                        ". Hover: top-16 predictions.")
            idx = np.arange(len(run.tokens))
            df = pd.DataFrame({"token": idx, "text": run.token_texts, "id": run.tokens,
                               "role": np.where(idx < rs.sel, f"source ({value_name}[sel, i])",
                                                np.where(idx == rs.sel, "selected", f"query ({value_name}[j, sel])")),
                               value_name: rs.values})
            dl.download_button(f"Token values (CSV){_run_suffix(scored, run.label)}", lambda df=df: csv_bytes(df),
                               file_name=f"{ch.mode}_tokens_L{ch.layer}_H{ch.head}_sel{rs.sel}_{run.label}.csv",
                               mime="text/csv", on_click="ignore", key=f"{P}_dl_tok_{run.label}")
            token_view(run.token_texts, key=_tv_key(P, run.label, tok, rs.sel),
                       colors=token_css(rs.values, rs.factor, ch.colorblind, rs.sel),
                       values=list(map(float, rs.values)), value_name=value_name, selected=rs.sel, tips=run.hover_tips(),
                       max_lines=TOKEN_LINES)
    if len(scored) == 2 and all(rs.ok for rs in scored) and _same_shape(*scored):
        a, b = scored
        st.subheader(f"Difference of the {ch.score_word} {value_name}: run B − run A (layer {ch.layer}, "
                     f"{heads_word} {ch.head})")
        dv = b.values - a.values
        dfac = scale_factor(ch.scale, [dv[np.arange(len(dv)) != a.sel]])
        st.caption("Same token count and architecture: each token coloured by B − A (red: larger in B).")
        token_view(b.run.token_texts, key=_tv_key(P, "diff", tok, a.sel),
                   colors=token_css(dv, dfac, ch.colorblind, a.sel), values=list(map(float, dv)),
                   value_name=f"{value_name} of run B − {value_name} of run A", selected=a.sel, max_lines=TOKEN_LINES)


OVERVIEW_LABELS = {"row": "max |A[sel, i]| over earlier tokens (what it reads)",
                   "col": "max |A[j, sel]| over later tokens (who reads it)",
                   "reach": "reach of the selected token's key (tokens until its span < threshold)",
                   "end": "span left at the last token / span at the selected token"}


def overview_values(rs: RunScores, ov: str, thr: float) -> np.ndarray:
    """The overview grid's tile values [L, H] of one run for tile value `ov`."""
    rc_t = {k: torch.from_numpy(v) for k, v in rs.rc.items()}
    rc_t["sel"] = rs.sel
    if ov in ("row", "col"):
        V = S.overview_values(rc_t, "row_max_abs" if ov == "row" else "col_max_abs").numpy()
    elif ov == "reach":
        V, _ = S.span_reach(S.span_curves(rc_t["span_col"], rs.sel), thr)
    else:
        sc = rs.rc["span_col"]
        V = np.where(sc[..., rs.sel] > 0, sc[..., -1] / np.where(sc[..., rs.sel] > 0, sc[..., rs.sel], 1), 0.0)
    return np.asarray(V, dtype=np.float64)


def overview_section(scored: list[RunScores], ch: Choices) -> float:
    """The layer x head grid of every run (click a tile to open that head), with its CSV; returns the reach
    threshold (spans page; its slider sits above the grid)."""
    P, mode, heads_word = ch.prefix, ch.mode, ch.heads_word
    st.subheader(f"Overview: every layer and {heads_word} for {selected_label(scored)}")
    gc = st.columns([2, 1]) if mode == SPAN else [st.container()]
    ov_options = ["row", "col"] if mode == ATTN else ["reach", "end"]
    gc[0].radio("Tile value", ov_options, key="ov", format_func=OVERVIEW_LABELS.get, horizontal=True)
    if mode == SPAN:
        gc[1].slider("Reach threshold", 0.01, 0.5, step=0.01, key="thr",
                     help="Reach = first distance at which the span falls below this fraction of its start value.")
    ov = st.session_state["ov"]
    thr = float(st.session_state.get("thr", 0.1))
    grids = [overview_values(rs, ov, thr) for rs in scored]
    tops = [float(np.nanmax(np.abs(g))) if g.size else 0.0 for g in grids]
    zmaxes = tops if ch.separate_scales else [max(tops)] * len(tops)
    tile_name = {"row": "max|A|", "col": "max|A|", "reach": "reach", "end": "left"}[ov]
    for col, rs, V, zmax in zip(run_columns(len(scored)), scored, grids, zmaxes):
        with col:
            fig = FS.overview_grid_figure(V, f"{rs.run.label}: token {rs.run.token_name(rs.sel)}", diverging=False,
                                          colorblind=ch.colorblind, layers=rs.layers, value_name=tile_name,
                                          selected=(ch.layer, ch.head), zmax=zmax)
            fig.update_yaxes(range=[max(rs.layers) + 0.5, min(rs.layers) - 0.5], autorange=False)  # no padding rows
            fig.update_xaxes(range=[-0.5, V.shape[1] - 0.5], autorange=False)
            st.plotly_chart(fig, config=ch.config, on_select="rerun", selection_mode="points",
                            key=_grid_key(P, rs.run.label, ch.layer, ch.head, ov, st.session_state["tok"]))
            gdf = pd.DataFrame({"layer": np.repeat(rs.layers, V.shape[1]),
                                heads_word: np.tile(np.arange(V.shape[1]), len(rs.layers)), ov: V.reshape(-1)})
            st.download_button(f"Overview (CSV){_run_suffix(scored, rs.run.label)}", lambda gdf=gdf: csv_bytes(gdf),
                               file_name=f"{mode}_overview_{ov}_sel{rs.sel}_{rs.run.label}.csv", mime="text/csv",
                               on_click="ignore", key=f"{P}_dl_grid_{rs.run.label}")
    note = (" A reach equal to the tokens left after the selected one is a lower bound (the span never fell below "
            "the threshold within the prompt)." if ov == "reach" else "")
    st.caption("Click a tile to open that layer and " + heads_word + f". The camera button of each chart saves a "
               f"{st.session_state['img'].upper()} (sidebar: format)." + note)
    return thr


def matrix_section(scored: list[RunScores], ch: Choices) -> None:
    """The open head's full T x T matrix of every run (a window around the selected token on long prompts), with
    its CSV; B − A in compare mode."""
    P, mode, value_name, heads_word = ch.prefix, ch.mode, ch.value_name, ch.heads_word
    layer, head = ch.layer, ch.head
    st.subheader(f"Full {value_name} matrix of layer {layer}, {heads_word} {head}, {selected_label(scored)} framed")
    peaks: dict[str, float] = {}  # per run label: the largest |value| of its shown window
    for rs in scored:
        if rs.ok:
            si = rs.inputs[rs.layers.index(layer)]
            try:
                rs.window = heat_window(len(rs.run.tokens), rs.sel)
                rs.matrix = head_matrix(rs.rid, layer, head, mode, ch.diag, si, rs.window)  # the window shown
            except RWKVInspectorError as e:
                show_error(e)
                continue
            peaks[rs.run.label] = float(np.abs(rs.matrix).max()) if rs.matrix.size else 1.0
    for col, rs in zip(run_columns(len(scored)), scored):
        if rs.matrix is None:
            continue
        with col:
            hmax = peaks[rs.run.label] if ch.separate_scales else max(peaks.values())
            if ch.scale != "auto":
                hmax = 1.0 / rs.factor
            T = len(rs.run.tokens)
            win = rs.window
            if win != (0, T):
                st.caption(f"{T} tokens: showing tokens {win[0]}–{win[1] - 1} around the selected one.")
            fig = window_heatmap(rs.matrix, rs.run.token_texts, sel=rs.sel, zmax=hmax, signed=mode == ATTN,
                                 colorblind=ch.colorblind, window=win, value_name=value_name,
                                 title=f"{rs.run.label}: {value_name}[j, i], layer {layer}, {heads_word} {head}"
                                       + ("" if ch.diag else " (no diagonal)"))
            st.plotly_chart(fig, config=ch.config, key=f"{P}_heat_{rs.run.label}")
            jj, ii = np.tril_indices(win[1] - win[0])
            mdf = pd.DataFrame({"query_j": jj + win[0], "source_i": ii + win[0], value_name: rs.matrix[jj, ii]})
            what = "Matrix" if win == (0, T) else f"Shown window {win[0]}–{win[1] - 1}"
            st.download_button(f"{what} (CSV, i ≤ j){_run_suffix(scored, rs.run.label)}",
                               data=lambda d=mdf: csv_bytes(d),
                               file_name=f"{mode}_matrix_L{layer}_H{head}_{rs.run.label}.csv",
                               mime="text/csv", on_click="ignore", key=f"{P}_dl_mat_{rs.run.label}")
    if (len(scored) == 2 and all(rs.matrix is not None for rs in scored) and _same_shape(*scored)
            and scored[0].window == scored[1].window):
        a, b = scored
        D = b.matrix - a.matrix
        win = a.window
        dmax = float(np.abs(D).max()) or 1.0
        fig = window_heatmap(D, b.run.token_texts, sel=a.sel, zmax=dmax, signed=True, colorblind=ch.colorblind,
                             window=win, value_name=f"Δ{value_name}",
                             title=f"B − A: {value_name}[j, i], layer {layer}, {heads_word} {head}")
        st.plotly_chart(fig, config=ch.config, key=f"{P}_heat_diff")
    st.caption("Hover a cell for both tokens and the value; the blue frames are the selected token's row (what it "
               "reads) and column (who reads it).")


def span_curves_section(scored: list[RunScores], ch: Choices) -> None:
    """Spans page: the selected token's span against distance, one line per head, with its CSV."""
    P, layer, heads_word = ch.prefix, ch.layer, ch.heads_word
    st.subheader(f"Span of the key of {selected_label(scored)} against distance, layer {layer}")
    c = st.columns(3)
    c[0].toggle("Log y", key="logy")
    rel, logy = bool(st.session_state["rel"]), bool(st.session_state["logy"])
    for col, rs in zip(run_columns(len(scored)), scored):
        if not rs.ok:
            continue
        with col:
            li = rs.layers.index(layer)
            curves = np.asarray(S.span_curves(torch.from_numpy(rs.rc["span_col"][li]), rs.sel))  # [H, D]
            if curves.shape[-1] < 2:
                st.info("The selected token is the last one: select an earlier token to see how long its key stays.")
            fig = FS.span_curves_figure(curves, f"{rs.run.label}: token {rs.run.token_name(rs.sel)}, layer {layer}",
                                        sel=rs.sel, open_head=ch.head, relative=rel, log_y=logy,
                                        head_labels=[f"{heads_word} {h}" for h in range(curves.shape[0])])
            st.plotly_chart(fig, config=ch.config, key=f"{P}_curves_{rs.run.label}")
            cdf = pd.DataFrame({"distance": np.tile(np.arange(curves.shape[1]), curves.shape[0]),
                                heads_word: np.repeat(np.arange(curves.shape[0]), curves.shape[1]),
                                "span": curves.reshape(-1)})
            st.download_button(f"Span curves (CSV){_run_suffix(scored, rs.run.label)}", lambda cdf=cdf: csv_bytes(cdf),
                               file_name=f"span_curves_L{layer}_sel{rs.sel}_{rs.run.label}.csv", mime="text/csv",
                               on_click="ignore", key=f"{P}_dl_curves_{rs.run.label}")


def reach_section(scored: list[RunScores], ch: Choices, thr: float) -> None:
    """Spans page: how far each head's influence reaches, for the selected token over every layer and for every
    source token of the open layer (table and CSV)."""
    P, layer, heads_word = ch.prefix, ch.layer, ch.heads_word
    st.subheader(f"How far each {heads_word}'s influence reaches")
    st.caption(f"Reach: tokens until the span of a key falls below {thr:g} × its value at the token itself "
               "(threshold: above the overview). Triangles are lower bounds: the span had not fallen by the end of the "
               "prompt.")
    for col, rs in zip(run_columns(len(scored)), scored):
        with col:
            reach, cens = S.span_reach(S.span_curves(torch.from_numpy(rs.rc["span_col"]), rs.sel), thr)  # [L, H]
            fig = FS.span_reach_figure(reach, f"{rs.run.label}: the key of token {rs.run.token_name(rs.sel)}, every "
                                              "layer", censored=cens, layers=rs.layers, threshold=thr)
            st.plotly_chart(fig, config=ch.config, key=f"{P}_reach_layers_{rs.run.label}")
    st.markdown(f"**Every source token of layer {layer}**, per {heads_word}")
    for col, rs in zip(run_columns(len(scored)), scored):
        if not rs.ok:
            continue
        with col:
            T = len(rs.run.tokens)
            si = rs.inputs[rs.layers.index(layer)]
            if T > LAYER_REACH_MAX_T and not st.toggle(f"Compute for all {T} source tokens ({si.H} full matrices)",
                                                        key=f"{P}_reach_go_{rs.run.label}"):
                continue
            reach, cens = layer_reach(rs.rid, layer, thr, si)
            fig = FS.source_reach_figure(reach, cens, open_head=ch.head, heads_word=heads_word,
                                         title=f"{rs.run.label}: reach to {thr:.0%} of the start span")
            st.plotly_chart(fig, config=ch.config, key=f"{P}_reach_{rs.run.label}")
            rows = []
            for h in range(reach.shape[0]):
                ok = ~cens[h]
                fmt = lambda q: f"{np.percentile(reach[h, ok], q):.0f}" if ok.any() else "—"  # noqa: E731
                rows.append({heads_word: h, "median reach (fell below)": fmt(50), "p90 reach": fmt(90),
                             "censored sources": f"{int(cens[h].sum())}/{T}"})
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
            rdf = pd.DataFrame({heads_word: np.repeat(np.arange(reach.shape[0]), T),
                                "source": np.tile(np.arange(T), reach.shape[0]), "reach": reach.reshape(-1),
                                "censored": cens.reshape(-1)})
            st.download_button(f"Reach per source (CSV){_run_suffix(scored, rs.run.label)}",
                               lambda rdf=rdf: csv_bytes(rdf),
                               file_name=f"span_reach_L{layer}_{rs.run.label}.csv", mime="text/csv",
                               on_click="ignore", key=f"{P}_dl_reach_{rs.run.label}")
    st.caption("Triangles: sources whose span never fell below the threshold before the prompt ended (the reach is "
               "at least that); tokens near the end are always censored. The table's medians leave them out.")
