"""State page: what a layer's recurrent memory holds after the selected token, per head: the state matrix, how full
it gets over the prompt (Frobenius norm, effective rank) and where a token makes a head forget, what it returns for a
query, and (RWKV-7) how well it has learned each token's key-value pair (the online-regression view).

Controls bound to the URL: layer, head, tok (shared with the score pages), sq (query: receptance or key), sqt (the
query's token; empty: the selected one), slog (log y), cb, img. The layer's inputs come from the score pages' capture
(`scores.score_inputs`: one forward per model and prompt, kept as a resource) or a trace file's activations; the
states are rebuilt by `rwkv_core.analysis.state` (one serial pass per layer, cached; any token's state from the
nearest checkpoint), so a click costs a few serial steps. A trace file's stored states (`export --state`) are
checked against the rebuilt ones. Downloads (npz, CSV) are built when clicked.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from inspector_ui.session import PageContext, Run, bind, publish
from inspector_ui.views.scores import run_id, score_inputs, token_css
from inspector_ui.widgets import (clamp_choice, csv_bytes, gated, goto_token, run_columns, show_error,
                                  take_token_click, token_label, token_view, url_bool)
from rwkv_core.analysis import state as ST
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.figures import state as FS
from rwkv_core.figures.common import IMAGE_FORMATS, image_config

ABOUT = ("What the memory holds: an RWKV layer's whole memory is one matrix per head. After the selected token: the "
         "matrix, how full each head gets over the prompt (norm, effective rank) and where a token makes it forget, "
         "what it returns for a query, and for RWKV-7 how well it has learned each key-value pair it was shown.")

HELP = r"""
**State.** Per layer and head, the WKV state after token $t$ (layers, heads, tokens from 0), oriented as the official
`rwkv` package stores it:

* **v5 / v6**: $S_t = \mathrm{diag}(w_t)\,S_{t-1} + k_t^\top v_t$, $S$ is [key, value]; the read is $r_t S$.
* **v7**: $S_t = S_{t-1}\big(\mathrm{diag}(w_t) - \hat\kappa_t^\top(a_t\odot\hat\kappa_t)\big) + v_t^\top\tilde k_t$,
  $S$ is [value, key]; the read is $S_t r_t^\top$.
* **v4** has no matrix: per channel the numerator $aa$, denominator $bb$ and exponent $pp$ (the state stands for
  $aa\,e^{pp}$ and $bb\,e^{pp}$); its read-out is the values' weighted mean $aa/bb$. The "head" is a group of 64
  channels, and the size is $\lVert aa/bb\rVert$ over the group.

**Size.** The Frobenius norm $\lVert S_t\rVert_F$ of each head at every token: a sharp drop is where a token makes the
head forget (strong decay, or v7's removal along $\hat\kappa_t$). **Effective rank** (participation ratio of the
singular values $\sigma_i$): $\big(\sum_i\sigma_i^2\big)^2 / \sum_i\sigma_i^4 = \lVert S\rVert_F^4/\lVert SS^\top
\rVert_F^2$, from 1 (one direction holds everything) to $N$ (all directions alike).

**Query.** What the state after the selected token returns for a query $q$ (token $j$'s receptance $r_j$, or its key:
v7 the unit removal key $\hat\kappa_j$, v5/v6 $k_j$): $q\,S$ (v5/v6) or $S\,q^\top$ (v7), a vector in value space, and
the earlier tokens whose values $v_i$ it is closest to (cosine). The model's own read adds the bonus; this is the
state's content alone.

**Online regression (RWKV-7).** The RWKV-7 paper (arXiv 2503.14456) reads the state as a map from keys to values
learned in context by the delta rule: each token takes a gradient step on $\lVert S\hat\kappa_t^\top - v_t\rVert^2$
with learning rate $a_t$, plus decay. Its relative error on the token's own pair, before and after the token's
update:
$$e^{\mathrm{before}}_t = \frac{\lVert S_{t-1}\hat\kappa_t^\top - v_t\rVert}{\lVert v_t\rVert},\qquad
e^{\mathrm{after}}_t = \frac{\lVert S_t\hat\kappa_t^\top - v_t\rVert}{\lVert v_t\rVert}.$$
A full delta-rule step ($w=1$, $a=1$, $\tilde k=\hat\kappa$) learns the pair exactly ($e^{\mathrm{after}}=0$);
$e^{\mathrm{before}}$ below 1 means the state already predicted the value before seeing it.
"""

TOKEN_LINES = 5
FORGET_SHOWN = 5  # the largest drops of the open head's norm listed under the curves


@st.cache_resource(max_entries=6, ttl=3600, show_spinner=False)
def _layer_states(rid: tuple, layer: int, _si) -> ST.LayerStates:
    """Every token's state measures of one layer of one run (one serial pass, under the work gate)."""
    return gated(lambda: ST.layer_states(_si), "Rebuilding the layer's states")


@dataclass
class RunState:
    run: Run
    layers: list[int]
    ls: Optional[ST.LayerStates] = None  # the open layer's states, None where the run lacks the layer
    sel: int = 0
    state: Optional[np.ndarray] = None  # after the selected token: [H, N, N] or v4 [3, C]


def _heads_word(run: Run) -> str:
    return "group" if run.cfg.version == "4" else "head"


def render(ctx: PageContext) -> None:
    runs = ctx.runs
    try:
        inputs = [score_inputs(run) for run in runs]
    except RWKVInspectorError as e:
        show_error(e)
        st.stop()
    layers = [[si.layer for si in inp] for inp in inputs]
    if not layers[0]:
        st.error("No layers to show: this trace file holds no layer's activations; export it with --layers.")
        st.stop()
    H = inputs[0][0].H
    bind("layer", layers[0][-1], int)
    bind("head", 0, int)
    T0 = len(runs[0].tokens)
    bind("tok", T0 - 1, int)
    bind("sq", "key", options=list(ST.QUERY_KINDS))
    bind("sqt", "")
    bind("slog", False, url_bool)
    bind("cb", False, url_bool)
    bind("img", "png", options=IMAGE_FORMATS)
    take_token_click(_tv_key, {r.label: len(r.tokens) for r in runs})
    clamp_choice("layer", layers[0], layers[0][-1])
    clamp_choice("head", list(range(H)), 0)
    T_max = max(len(r.tokens) for r in runs)
    if not isinstance(st.session_state.get("tok"), int) or not 0 <= st.session_state["tok"] < T_max:
        st.session_state["tok"] = T_max - 1
    c = st.columns([1, 1, 1.1, 1.5, 1.2, 1.2])
    heads_word = _heads_word(runs[0])
    c[0].selectbox("Layer", layers[0], key="layer")
    c[1].selectbox(heads_word.capitalize(), list(range(H)), key="head")
    c[2].number_input("Selected token", min_value=0, max_value=T_max - 1, step=1, key="tok",
                      help="The state after this token. Or click a token below.")
    c[3].radio("Query", list(ST.QUERY_KINDS), key="sq", horizontal=True,
               help="What the state is asked: a token's receptance r, or its key (v7: the unit removal key κ̂).")
    c[4].text_input("Query token (empty: selected)", key="sqt")
    with c[5]:
        st.toggle("Log y", key="slog")
        st.toggle("Colour-blind palette", key="cb")
    st.sidebar.radio("Chart camera button saves", list(IMAGE_FORMATS), key="img", horizontal=True)
    publish("layer", "head", "tok", "sq", "sqt", "slog", "cb", "img")
    with st.expander("Formula and how to read this page"):
        st.markdown(HELP)
    layer, head, tok = st.session_state["layer"], st.session_state["head"], st.session_state["tok"]
    config = image_config(f"rwkv-state-L{layer}", st.session_state["img"])
    states = []
    for run, inp, ls_ in zip(runs, inputs, layers):
        rs = RunState(run, ls_, sel=min(tok, len(run.tokens) - 1))
        if layer in ls_ and head < inp[0].H:
            try:
                rs.ls = _layer_states(run_id(run), layer, inp[ls_.index(layer)])
                rs.state = rs.ls.at(rs.sel).numpy()
            except RWKVInspectorError as e:
                show_error(e)
                st.stop()
        states.append(rs)
    token_section(states, head)
    matrix_section(states, layer, head, config)
    size_section(states, layer, head, config)
    query_section(states, layer, head, config)
    regression_section(states, layer, head, config)
    download_section(states, layer)


def _tv_key(label: str, sel: int) -> str:
    return f"state_tv_{label}_{sel}"


def token_section(states: list[RunState], head: int) -> None:
    runs = [rs.run for rs in states]
    g = st.columns([2, 3], vertical_alignment="top")
    with g[0]:
        goto_token("tok", runs[0].token_texts, key="state_goto")
    g[1].markdown(f"**State after {token_label(runs[0].token_texts, states[0].sel)}** of {len(runs[0].tokens)} "
                  "tokens")
    for col, rs in zip(run_columns(len(states)), states):
        with col:
            if len(states) > 1:
                st.subheader(rs.run.title)
            if rs.ls is None:
                st.warning(f"{rs.run.label} has no layer {st.session_state['layer']} / {_heads_word(rs.run)} "
                           f"{head}: it has layers {rs.layers}.")
                continue
            norm = rs.ls.frobenius[:, head]
            top = float(np.nanmax(norm)) if np.isfinite(norm).any() else 1.0
            st.caption(f"Tokens coloured by the size of {_heads_word(rs.run)} {head}'s state after them. Click one to "
                       "select it.")
            token_view(rs.run.token_texts, key=_tv_key(rs.run.label, rs.sel),
                       colors=token_css(norm, 1.0 / (top or 1.0), bool(st.session_state["cb"]), rs.sel),
                       values=[float(x) for x in norm], value_name="state norm", selected=rs.sel,
                       tips=rs.run.hover_tips(), max_lines=TOKEN_LINES)


def _matrix_of(rs: RunState, head: int) -> tuple[np.ndarray, str, str, Optional[list[str]]]:
    """The open head's state as drawn: (matrix, row axis, column axis, row labels)."""
    v = rs.run.cfg.version
    if v == "4":
        N = rs.ls.inputs.N
        return rs.state[:, head * N:(head + 1) * N], "state vector", "channel in the group", ["aa", "bb", "pp"]
    if v == "7":
        return rs.state[head], "value", "key", None
    return rs.state[head], "key", "value", None


def matrix_section(states: list[RunState], layer: int, head: int, config: dict) -> None:
    heads_word = _heads_word(states[0].run)
    st.subheader(f"The state of layer {layer}, {heads_word} {head} after the selected token")
    mats = []
    for col, rs in zip(run_columns(len(states)), states):
        if rs.ls is None:
            continue
        with col:
            M, rows, cols, labels = _matrix_of(rs, head)
            fig = FS.state_matrix_figure(M, rows=rows, cols=cols, row_labels=labels,
                                         colorblind=bool(st.session_state["cb"]),
                                         title=f"{rs.run.label}: S after {rs.run.token_name(rs.sel)}")
            st.plotly_chart(fig, config=config, key=f"state_mat_{rs.run.label}")
            mats.append(M)
            _stored_check(rs, layer)
    if len(mats) == 2 and mats[0].shape == mats[1].shape and states[0].run.cfg.version != "4":
        st.plotly_chart(FS.state_matrix_figure(mats[1] - mats[0], rows="row", cols="column",
                                               colorblind=bool(st.session_state["cb"]), title="B − A"),
                        config=config, key="state_mat_diff")


def _stored_check(rs: RunState, layer: int) -> None:
    """A trace file's stored states (`export --state`), compared with the rebuilt ones at their positions."""
    if rs.run.trace is None:
        return
    stored = rs.run.trace.arrays.get(f"state_l{layer}")
    if stored is None:
        st.caption("This trace file stores no state of this layer (export with `--state` to keep them); the states "
                   "shown are rebuilt from its activations.")
        return
    positions = (rs.run.trace.meta.get("stored") or {}).get("state_positions")
    pos = [len(rs.run.tokens) - 1] if positions is None else list(positions)
    stored = stored[None] if positions is None else stored
    if stored.shape[1:] != rs.state.shape or len(pos) != stored.shape[0]:
        st.warning(f"The file's state_l{layer} has shape {list(stored.shape)}, which does not fit this layer: "
                   "export the trace again with --state.")
        return
    rebuilt = rs.ls.at_positions(pos).numpy()
    if rs.run.cfg.version == "4":  # compare the meaning (aa e^pp, bb e^pp), not the representation
        f = lambda s: s[:, :2] * np.exp(s[:, 2:] - s[:, 2:].max(-1, keepdims=True))  # noqa: E731
        stored, rebuilt = f(stored.astype(np.float64)), f(rebuilt.astype(np.float64))
    err = float(np.abs(stored - rebuilt).max() / max(float(np.abs(stored).max()), 1e-30))
    st.caption(f"The file stores this layer's state after token(s) {pos}; the rebuilt states agree to {err:.1e} "
               "(relative).")


def size_section(states: list[RunState], layer: int, head: int, config: dict) -> None:
    heads_word = _heads_word(states[0].run)
    st.subheader(f"How full each {heads_word}'s memory gets, layer {layer}")
    logy = bool(st.session_state["slog"])
    for col, rs in zip(run_columns(len(states)), states):
        if rs.ls is None:
            continue
        with col:
            ls = rs.ls
            texts = rs.run.token_texts
            st.plotly_chart(FS.head_curves_figure(ls.frobenius, texts, y_name="‖S‖_F" if ls.version != "4" else
                                                  "‖aa/bb‖", open_head=head, heads_word=heads_word,
                                                  log_y=logy, title=f"{rs.run.label}: state norm after every token"),
                            config=config, key=f"state_norm_{rs.run.label}")
            if ls.version != "4":
                st.plotly_chart(FS.head_curves_figure(ls.eff_rank, texts, y_name="effective rank", open_head=head,
                                                      heads_word=heads_word,
                                                      title=f"{rs.run.label}: effective rank (of {ls.inputs.N})"),
                                config=config, key=f"state_rank_{rs.run.label}")
            norm = ls.frobenius[:, head]
            drop = np.full_like(norm, np.nan)
            drop[1:] = 1 - norm[1:] / np.where(norm[:-1] > 0, norm[:-1], np.nan)
            order = [int(i) for i in np.argsort(-np.nan_to_num(drop, nan=-np.inf))[:FORGET_SHOWN] if drop[i] > 0]
            if order:
                st.caption(f"Where {heads_word} {head} forgets most (largest drops of its norm): " + "; ".join(
                    f"{token_label(texts, i)} −{drop[i]:.0%}" for i in order))


def _query_token(rs: RunState) -> int:
    text = str(st.session_state.get("sqt", "")).strip()
    if not text:
        return rs.sel
    try:
        q = int(text)
    except ValueError:
        raise RWKVInspectorError(f"the query token must be a token position (0..{len(rs.run.tokens) - 1}), not "
                                 f"{text!r}") from None
    if not 0 <= q < len(rs.run.tokens):
        raise RWKVInspectorError(f"query token {q} is outside the prompt (0..{len(rs.run.tokens) - 1})")
    return q


def query_section(states: list[RunState], layer: int, head: int, config: dict) -> None:
    st.subheader("What the state returns for a query")
    if states[0].run.cfg.version == "4":
        st.info("RWKV-4 has no state matrix to query: per channel it holds a weighted mean of the values (aa / bb), "
                "which its numerator and denominator above show.")
        return
    kind = st.session_state["sq"]
    for col, rs in zip(run_columns(len(states)), states):
        if rs.ls is None:
            continue
        with col:
            try:
                q_tok = _query_token(rs)
            except RWKVInspectorError as e:
                show_error(e)
                continue
            si = rs.ls.inputs
            out = ST.read_out(rs.ls.at(rs.sel), ST.query_vector(si, q_tok, kind), rs.run.cfg.version)  # [H, N]
            st.plotly_chart(FS.readout_figure(out[head].numpy(), title=f"{rs.run.label}: S after "
                                              f"{rs.run.token_name(rs.sel)} read with the {kind} of "
                                              f"{rs.run.token_name(q_tok)}"),
                            config=config, key=f"state_read_{rs.run.label}")
            toks, cos = ST.nearest_values(out, si.v, rs.sel)
            st.dataframe(pd.DataFrame({"earlier token": toks[head], "text": [rs.run.token_texts[i] for i in toks[head]],
                                       "cosine with its value": cos[head]}), hide_index=True, width="stretch")


def regression_section(states: list[RunState], layer: int, head: int, config: dict) -> None:
    if not any(rs.ls is not None and rs.ls.version == "7" for rs in states):
        return
    st.subheader(f"RWKV-7: how well the state has learned each key → value pair, layer {layer}, head {head}")
    for col, rs in zip(run_columns(len(states)), states):
        if rs.ls is None or rs.ls.version != "7":
            continue
        with col:
            ls = rs.ls
            st.plotly_chart(FS.regression_figure(ls.err_before[:, head], ls.err_after[:, head], rs.run.token_texts,
                                                 head=head, title=f"{rs.run.label}: ‖S κ̂_t − v_t‖ / ‖v_t‖"),
                            config=config, key=f"state_reg_{rs.run.label}")
            rows = [{"head": h, "median before": np.nanmedian(ls.err_before[:, h]),
                     "median after": np.nanmedian(ls.err_after[:, h]),
                     f"after, token {rs.sel}": ls.err_after[rs.sel, h]} for h in range(ls.inputs.H)]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("Before: how well the state predicted the token's value from its key before the token wrote it; "
               "after: once it has. See the formula above.")


def _npz(rs: RunState, layer: int) -> bytes:
    buf = io.BytesIO()
    arrays = {f"state_l{layer}": rs.state.astype(np.float32), "token": np.array(rs.sel),
              "frobenius": rs.ls.frobenius, "eff_rank": rs.ls.eff_rank}
    if rs.ls.err_before is not None:
        arrays.update(err_before=rs.ls.err_before, err_after=rs.ls.err_after)
    np.savez(buf, **arrays)
    return buf.getvalue()


def _table(rs: RunState) -> pd.DataFrame:
    ls = rs.ls
    T, H = ls.frobenius.shape
    df = pd.DataFrame({"token": np.repeat(np.arange(T), H), "head": np.tile(np.arange(H), T),
                       "frobenius": ls.frobenius.reshape(-1), "eff_rank": ls.eff_rank.reshape(-1)})
    if ls.err_before is not None:
        df["err_before"], df["err_after"] = ls.err_before.reshape(-1), ls.err_after.reshape(-1)
    return df


def download_section(states: list[RunState], layer: int) -> None:
    cols = st.columns(2 * len(states))
    for i, rs in enumerate(states):
        if rs.ls is None:
            continue
        sfx = f" {rs.run.label}" if len(states) > 1 else ""
        cols[2 * i].download_button(f"States (npz){sfx}", lambda rs=rs: _npz(rs, layer),
                                    file_name=f"state_L{layer}_tok{rs.sel}_{rs.run.label}.npz",
                                    mime="application/octet-stream", on_click="ignore", key=f"state_dl_npz_{rs.run.label}")
        cols[2 * i + 1].download_button(f"Per-token measures (CSV){sfx}", lambda rs=rs: csv_bytes(_table(rs)),
                                        file_name=f"state_measures_L{layer}_{rs.run.label}.csv", mime="text/csv",
                                        on_click="ignore", key=f"state_dl_csv_{rs.run.label}")
    st.caption(f"npz: state_l{layer} after the selected token (every head, the official orientation), with the "
               "per-token norms, effective ranks and (v7) regression errors; CSV: the per-token measures.")
