"""Logit lens page: the next-token distribution read off the residual stream after every layer, where the answer
forms, for one run or two side by side (compare mode: both and B − A).

Controls bound to the URL: tok (the selected token, shared with the score pages), lm (what a cell shows: prob, logp,
rank), tgt (a target token's text; empty: the actual next token), cb, img. Numbers come from
`rwkv_core.analysis.lens` (a live model: one forward for the residual stream, then one head product per stage,
cached per model, prompt and target) or from a trace file's lens keys (`export --lens`: next-token mode, top-10 ids
without probabilities). Figures from `rwkv_core.figures.lens`; downloads (CSV, npz) are built when clicked.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from inspector_ui import settings as app_settings
from inspector_ui.session import PageContext, Run, bind, offer_final_residual, publish
from inspector_ui.views.scores import heat_window, run_id, token_css
from inspector_ui.widgets import (csv_bytes, gated, goto_token, run_columns, show_error, take_token_click,
                                  token_label, token_view, url_bool)
from rwkv_core.analysis import lens as LE
from rwkv_core.errors import InputError, RWKVInspectorError
from rwkv_core.figures import lens as FL
from rwkv_core.figures.common import IMAGE_FORMATS, image_config
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs import cost as COST

ABOUT = ("When does the answer form? The model's next-token distribution read off the residual stream after every "
         "layer (the logit lens): per token and layer, the probability, log-probability or rank of the actual next "
         "token (or a target you name), the top-10 on hover, and the layer from which the final prediction stays on "
         "top.")

HELP = r"""
**Logit lens.** The model predicts the next token from the last block's output $x^{(L)}_t$ as
$\mathrm{logits}_t = W_{\mathrm{head}}\,\mathrm{LN}_{\mathrm{out}}(x^{(L)}_t)$. The lens reads every stage $s$ of the
residual stream the same way: $p^{(s)}_t = \mathrm{softmax}\big(W_{\mathrm{head}}\,\mathrm{LN}_{\mathrm{out}}
(x^{(s)}_t)\big)$, where stage *embed* is the embedding after `ln0` (block 0's input) and stage $L_l$ the output of
block $l$ (layers from 0). The last stage is the model's own prediction.

* **Cell** (token $t$, stage $s$): the wanted token $y$'s probability $p^{(s)}_t[y]$, its log-probability, or
  $\log_{10}(\mathrm{rank}+1)$ (rank 0 = top-1). $y$ is the actual next token $t+1$ (none at the last position), or
  the target you name (one token of the model's tokenizer) at every position.
* **Hover**: the ten most likely tokens at that cell, with probabilities (a trace file keeps their ids only).
* **Where the answer forms** (×): the first stage from which the final stage's top-1 token stays top-1 at every later
  stage.
* Compare mode: both runs, and B − A where both have the same number of tokens and stages.

The lens uses the model's own `ln_out` and `head` (no tuned lens): early stages are read in a basis the head was
not trained on, so low probabilities there mean "not yet in the head's terms", not "absent".
"""

TOKEN_LINES = 5
LENS_WIDTHS = (64, 128, 256)  # tokens the heat map shows, and the model's lens reads out, at once: the head's product
# over the vocabulary at every stage is the page's cost (13 stages x 256 tokens x 768 x 65,536 multiply-adds at the
# 0.1B shape: 15 s on a busy 2-core CPU; 64 tokens cost about the forward's own head), and the hover text of every
# cell travels with the figure
DEFAULT_LENS_WIDTH = 64
LENS_CHUNK = 32  # the lens is read out in chunks of this many tokens, each cached: a moved window reads its new ones


class NoLens(RWKVInspectorError):
    """A trace file without the lens keys (`export --lens`)."""


@dataclass
class LensData:
    """What the page draws of one run, from a model (`LogitLens`) or a trace (`StoredLens`)."""

    stages: list[str]
    logp: np.ndarray  # [T, S]
    rank: Optional[np.ndarray]  # [T, S] or None
    top_ids: np.ndarray  # [T, S, K]
    top_logp: Optional[np.ndarray]  # [T, S, K] or None (trace)

    def formed(self) -> np.ndarray:
        return LE.answer_stage(self.top_ids[:, :, 0])

    @property
    def computed(self) -> np.ndarray:
        """[T] bool: the tokens read out (a model's lens is read out over the shown window of a long prompt)."""
        return self.top_ids[:, -1, 0] >= 0


@st.cache_resource(max_entries=2, ttl=3600, show_spinner=False)
def _residuals(rid: tuple, _model, tokens: tuple[int, ...]):
    """The residual stream at every stage of one prompt (one forward without logits), under the work gate; past the
    capture budget it is refused with one line."""
    refusal = COST.capture_refusal(_model.cfg, len(tokens), 1, app_settings.capture_memory_bytes())
    if refusal:
        raise RWKVInspectorError(refusal[:1].upper() + refusal[1:] + ".")
    resid = gated(lambda: LE.capture_residuals(_model, list(tokens)), "Running the prompt")  # [S, T, C]
    offer_final_residual(rid[1:4], tokens, resid)  # the token view's predictions: the head alone, no forward
    return resid


@st.cache_resource(max_entries=64, ttl=3600, show_spinner=False)
def _lens_chunk(rid: tuple, _model, tokens: tuple[int, ...], target: Optional[int], chunk: int) -> LE.LogitLens:
    """The lens of tokens [chunk x LENS_CHUNK, (chunk + 1) x LENS_CHUNK) (a head product per stage over those
    rows only), under the work gate; kept as those rows alone (`LogitLens.rows`), not as [T, ...] arrays."""
    resid = _residuals(rid, _model, tokens)
    rows = range(chunk * LENS_CHUNK, min(len(tokens), (chunk + 1) * LENS_CHUNK))
    lens = gated(lambda: LE.logit_lens(_model, list(tokens), target=target, resid=resid, positions=rows),
                 "Reading the logit lens")
    return lens.rows(rows.start, rows.stop)


def _model_lens(run: Run, target: Optional[int], rows: range) -> LE.LogitLens:
    """The lens of a run's prompt with at least `rows` read out: the chunks of LENS_CHUNK tokens they touch,
    each computed once (a window that moves reads out only its new chunks)."""
    model, tokens = run.loaded.model, tuple(run.tokens)
    wanted = LE.next_token_targets(tokens) if target is None else np.full(len(tokens), int(target), np.int64)
    lens = LE.empty_lens(LE.stage_names(model.cfg.n_layer), wanted)
    for c in range(rows.start // LENS_CHUNK, -(-rows.stop // LENS_CHUNK)):
        lens.merge(_lens_chunk(run_id(run), model, tokens, target, c), at=c * LENS_CHUNK)
    return lens


def lens_data(run: Run, target: Optional[int], rows: Optional[range] = None) -> LensData:
    """The lens of a run, at least over `rows` (default: every token): computed from its model, or read from its
    trace file (next-token mode only, every token)."""
    if run.model_key is not None:
        rows = range(len(run.tokens)) if rows is None else rows
        with st.spinner(f"Reading the logit lens off {run.cfg.n_layer + 1} stages of tokens {rows.start}–"
                        f"{rows.stop - 1}…"):
            if target is not None:
                LE._wanted_ids([0], target, run.cfg.vocab_size)  # an id outside the vocabulary: one line
            lens = _model_lens(run, target, rows)
        return LensData(lens.stages, lens.logp, lens.rank, lens.top_ids, lens.top_logp)
    stored = LE.lens_from_trace(run.trace.arrays, run.trace.layers)
    if stored is None:
        raise NoLens("This trace file has no logit lens: export it again with `python -m rwkv_core export "
                     "CHECKPOINT --text ... --lens --out trace.npz`, or open the prompt with a model.")
    if target is not None:
        raise RWKVInspectorError("a trace file keeps the lens of the actual next token only: clear the target, or "
                                 "open the prompt with a model")
    return LensData(stored.stages, stored.logp, stored.rank, stored.top_ids, None)


def target_id(run: Run, text: str) -> Optional[int]:
    """The target token of the typed text (None: empty, the actual next token); one token of the run's tokenizer,
    else an InputError saying what the tokenizer made of it."""
    if not text:
        return None
    if run.loaded is None:
        raise InputError("a trace file keeps the lens of the actual next token only: clear the target, or open the "
                         "prompt with a model")
    ids = list(run.loaded.tokenizer.encode(text).ids)
    if len(ids) != 1:
        shown = ", ".join(repr(run.loaded.tokenizer.display(i)) for i in ids[:6]) or "nothing"
        raise InputError(f"the target {text!r} is {len(ids)} tokens for this model's tokenizer ({shown}): give the "
                         "text of exactly one token (e.g. its first piece)")
    return int(ids[0])


def _display(run: Run):
    """Token id -> text: the model's tokenizer, or for a trace file the tokenizer its meta names where one loads
    without a file (bytes, World, digits), else the id itself."""
    if run.loaded is not None:
        return run.loaded.tokenizer.display
    kind = str(run.trace.meta.get("tokenizer") or "")
    try:
        return tokenizer_for(run.cfg.vocab_size, kind=kind).display if kind and kind != "hf" else str
    except (RWKVInspectorError, OSError, ValueError):
        return str


# ------------------------------------------------------------------------------------------------ the page


def render(ctx: PageContext) -> None:
    runs = ctx.runs
    bind("lm", "prob", options=list(FL.MEASURES))
    bind("tgt", "")
    bind("cb", False, url_bool)
    bind("img", "png", options=IMAGE_FORMATS)
    bind("lw", DEFAULT_LENS_WIDTH, int, options=LENS_WIDTHS)
    T_max = max(len(r.tokens) for r in runs)
    bind("tok", len(runs[0].tokens) - 2 if len(runs[0].tokens) > 1 else 0, int)
    take_token_click(_tv_key, {r.label: len(r.tokens) for r in runs})
    if not isinstance(st.session_state.get("tok"), int) or not 0 <= st.session_state["tok"] < T_max:
        st.session_state["tok"] = max(0, len(runs[0].tokens) - 2)
    c = st.columns([1.5, 1.5, 0.9, 0.9, 1.3])
    c[0].radio("Cell shows the wanted token's", list(FL.MEASURES), key="lm", horizontal=True,
               format_func=FL.MEASURE_NAMES.get)
    c[1].text_input("Target token (empty: the actual next token)", key="tgt",
                    help="Text of one token of the model's tokenizer, e.g. ' Paris' on a World model, 'P' on a byte "
                         "model: its probability at every position and stage.")
    c[2].number_input("Selected token", min_value=0, max_value=T_max - 1, step=1, key="tok",
                      help="Or click a token below.")
    c[3].selectbox("Tokens in the heat map", LENS_WIDTHS, key="lw",
                   help="How many tokens around the selection the heat map shows, and the model's lens reads out: "
                        "each costs a product with the head over the whole vocabulary at every stage (on a CPU, 64 "
                        "tokens of a 0.1B model take about a second). The downloads read out every token.")
    c[4].toggle("Colour-blind palette", key="cb")
    st.sidebar.radio("Chart camera button saves", list(IMAGE_FORMATS), key="img", horizontal=True)
    publish("lm", "tgt", "tok", "lw", "cb", "img")
    with st.expander("Formula and how to read this page"):
        st.markdown(HELP)
    measure, tok, width = st.session_state["lm"], st.session_state["tok"], int(st.session_state["lw"])
    config = image_config("rwkv-logit-lens", st.session_state["img"])
    data: list[LensData] = []
    targets: list[Optional[int]] = []
    try:
        for run in runs:
            a, b = _window(len(run.tokens), min(tok, len(run.tokens) - 1), width)
            targets.append(target_id(run, st.session_state["tgt"].strip("\n")))
            d = lens_data(run, targets[-1], range(a, b))
            if measure == "rank" and d.rank is None:
                raise InputError("this trace file has no lens ranks: show the probability or log-probability")
            data.append(d)
    except NoLens as e:  # not an error of the user's: the file was made without it
        st.info(str(e))
        st.stop()
    except RWKVInspectorError as e:
        show_error(e)
        st.stop()
    token_section(runs, data, tok)
    heatmap_section(runs, data, measure, tok, width, config)
    selected_section(runs, data, measure, tok, config)
    download_section(runs, data, targets)


def _tv_key(label: str, sel: int) -> str:
    return f"lens_tv_{label}_{sel}"


def token_section(runs: list[Run], data: list[LensData], tok: int) -> None:
    g = st.columns([2, 3], vertical_alignment="top")
    with g[0]:
        goto_token("tok", runs[0].token_texts, key="lens_goto")
    g[1].markdown(f"**Selected: {token_label(runs[0].token_texts, min(tok, len(runs[0].tokens) - 1))}** of "
                  f"{len(runs[0].tokens)} tokens")
    for col, run, d in zip(run_columns(len(runs)), runs, data):
        with col:
            if len(runs) > 1:
                st.subheader(run.title)
            sel = min(tok, len(run.tokens) - 1)
            done = d.computed
            formed = np.where(done, d.formed(), np.nan).astype(float)
            late = np.nan_to_num(formed / max(1, len(d.stages) - 1))  # 0: at the embedding, 1: only at the last
            st.caption("Tokens coloured by how late the answer forms (darker: later in the stack). Click one to "
                       "select it; hover: top-16 predictions."
                       + ("" if done.all() else f" A long prompt is read out around the selection: tokens "
                          f"{int(np.argmax(done))}–{len(done) - 1 - int(np.argmax(done[::-1]))} here (the others "
                          "when the selection moves to them, or in the downloads)."))
            token_view(run.token_texts, key=_tv_key(run.label, sel), colors=token_css(late, 1.0, False, sel),
                       values=[float(x) for x in formed], value_name="answer forms at stage", selected=sel,
                       tips=run.hover_tips(), max_lines=TOKEN_LINES)


def _window(T: int, sel: int, width: int = DEFAULT_LENS_WIDTH) -> tuple[int, int]:
    """The heat map's `width` tokens [a, b) around the selection, moved in steps of half the width: a click near the
    last one leaves the figure as it was, so the browser does not draw it again (13 x 256 cells with their top-10
    hover text cost Chromium about a second per redraw at the 0.1B shape), and a step reads out only new chunks."""
    if T <= width:
        return 0, T
    step = width // 2
    a = heat_window(T, sel, width)[0]
    a = min(step * round(a / step), T - width)
    if not a <= sel < a + width:  # the step moved the selection out: take the plain window
        a = heat_window(T, sel, width)[0]
    return a, a + width


def heatmap_section(runs: list[Run], data: list[LensData], measure: str, tok: int, width: int,
                    config: dict) -> None:
    st.subheader("Tokens × stages: " + FL.MEASURE_NAMES[measure] + " of the wanted token")
    shown = []
    for col, run, d in zip(run_columns(len(runs)), runs, data):
        with col:
            T = len(run.tokens)
            sel = min(tok, T - 1)
            a, b = _window(T, sel, width)
            if (a, b) != (0, T):
                st.caption(f"{T} tokens: showing tokens {a}–{b - 1} around the selected one.")
            vals = FL.measure_values(d.logp[a:b], None if d.rank is None else d.rank[a:b], measure)
            hover = FL.top_texts(d.top_ids[a:b], None if d.top_logp is None else d.top_logp[a:b], _display(run))
            fig = FL.lens_heatmap(vals, d.stages, run.token_texts[a:b], measure=measure, hover=hover,
                                  formed=d.formed()[a:b], first=a, colorblind=bool(st.session_state["cb"]),
                                  title=f"{run.label}: logit lens")
            st.plotly_chart(fig, config=config, key=f"lens_heat_{run.label}")
            shown.append((a, b, vals))
    if len(runs) == 2 and len(runs[0].tokens) == len(runs[1].tokens) and data[0].stages == data[1].stages \
            and shown[0][:2] == shown[1][:2]:
        a, b = shown[0][:2]
        fig = FL.lens_heatmap(shown[1][2] - shown[0][2], data[0].stages, runs[1].token_texts[a:b], measure=measure,
                              first=a, diff=True,
                              colorblind=bool(st.session_state["cb"]), title="B − A")
        st.plotly_chart(fig, config=config, key="lens_heat_diff")
    st.caption("× marks where the answer forms: from that stage on, the final top-1 token stays top-1. The last "
               "position has no next token (blank) unless a target is named. The selected token's column is drawn "
               "below, over the stages.")


def selected_section(runs: list[Run], data: list[LensData], measure: str, tok: int, config: dict) -> None:
    st.subheader("The selected token over the stages")
    curves = {}
    for run, d in zip(runs, data):
        sel = min(tok, len(run.tokens) - 1)
        curves[f"{run.label}: {run.token_name(sel)}"] = FL.measure_values(
            d.logp[sel][None], None if d.rank is None else d.rank[sel][None], measure)[0]
    st.plotly_chart(FL.stage_curve(curves, data[0].stages, measure=measure, title="Wanted token per stage"),
                    config=config, key="lens_curve")
    for col, run, d in zip(run_columns(len(runs)), runs, data):
        with col:
            sel = min(tok, len(run.tokens) - 1)
            show = _display(run)
            f = int(d.formed()[sel])
            st.markdown(f"{run.label}: at {token_label(run.token_texts, sel)} the answer forms at stage "
                        f"**{d.stages[f]}**; final top-1: `{show(int(d.top_ids[sel, -1, 0]))!r}`")
            rows = {"stage": d.stages}
            for k in range(d.top_ids.shape[2]):
                ids = d.top_ids[sel, :, k]
                rows[f"#{k + 1}"] = [repr(show(int(i))) + ("" if d.top_logp is None else
                                                          f" {np.exp(d.top_logp[sel, s, k]):.3f}")
                                     for s, i in enumerate(ids)]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _table(run: Run, d: LensData) -> pd.DataFrame:
    T, S = d.logp.shape
    return pd.DataFrame({"token": np.repeat(np.arange(T), S), "text": np.repeat(np.asarray(run.token_texts, object), S),
                         "stage": np.tile(d.stages, T), "logp": d.logp.reshape(-1),
                         "rank": (d.rank.reshape(-1) if d.rank is not None else np.full(T * S, -1)),
                         "top1": d.top_ids[:, :, 0].reshape(-1), "answer_forms_at": np.repeat(d.formed(), S)})


def _npz(run: Run, d: LensData) -> bytes:
    buf = io.BytesIO()
    arrays = {"tokens": np.asarray(run.tokens, np.int64), "stages": np.asarray(d.stages), "logp": d.logp,
              "top_ids": d.top_ids, "answer_stage": d.formed()}
    if d.rank is not None:
        arrays["rank"] = d.rank
    if d.top_logp is not None:
        arrays["top_logp"] = d.top_logp
    np.savez(buf, **arrays)
    return buf.getvalue()


def _whole(run: Run, d: LensData, target: Optional[int]) -> LensData:
    """The lens of every token, for a download (called when the button is clicked, outside the script run: the
    engine straight under the work gate, nothing of Streamlit drawn)."""
    if d.computed.all():
        return d
    model = run.loaded.model
    resid = _residuals(run_id(run), model, tuple(run.tokens))
    lens = gated(lambda: LE.logit_lens(model, list(run.tokens), target=target, resid=resid), show_waiting=False)
    return LensData(lens.stages, lens.logp, lens.rank, lens.top_ids, lens.top_logp)


def download_section(runs: list[Run], data: list[LensData], targets: list[Optional[int]]) -> None:
    cols = st.columns(2 * len(runs))
    for i, (run, d, target) in enumerate(zip(runs, data, targets)):
        sfx = f" {run.label}" if len(runs) > 1 else ""
        cols[2 * i].download_button(f"Lens (CSV){sfx}",
                                    lambda run=run, d=d, target=target: csv_bytes(_table(run,
                                                                                         _whole(run, d, target))),
                                    file_name=f"logit_lens_{run.label}.csv", mime="text/csv", on_click="ignore",
                                    key=f"lens_dl_csv_{run.label}")
        cols[2 * i + 1].download_button(f"Lens (npz){sfx}",
                                        lambda run=run, d=d, target=target: _npz(run, _whole(run, d, target)),
                                        file_name=f"logit_lens_{run.label}.npz", mime="application/octet-stream",
                                        on_click="ignore", key=f"lens_dl_npz_{run.label}")
    st.caption("CSV: one row per (token, stage): log-probability and rank of the wanted token, the top-1 id, where "
               "the answer forms. npz: the same arrays, with the top-10 ids (and probabilities from a model).")
