"""Time decay page: per-channel decays per layer (the RWKV-4 paper figure), per-token decays of v6/v7, retention
and the size of the recurrent state.

Model and prompt come from the shared sidebar (`inspector_ui.sidebar.page_setup`, in the page): session-state key
`model` (a registry name such as "shared: tiny-rwkv-4v0-660K-FP32.bin") and `prompt`, both also read from the URL.
Opened first, the page shows the app's default model. Tests pick the model with
`at.session_state["model"] = "shared: <file>"` before `at.run()`.

Compare mode (`ctx.runs` holds runs A and B): the static views (paper figure, layer x channel heat map) appear side by
side only when the models differ (compare "model"); the per-token views (tokens x heads half-life, channel spectrum,
retention, state size) stand in two columns for both runs, under one set of controls (layer, token, head, source
token), with one colour scale for both half-life heat maps and, where both runs have the same architecture and
token count, a heat map of B - A.

Trace file (Source = trace file, no model): the per-token decays come from the trace's `logw_l{l}` = ln w [T, C]
(format 3, float32 or float16) or `w_l{l}` (formats 1 and 2, float32): log10 h = log10(ln 2 / -ln w), w clipped
into [1e-38, 1 - 1e-7]. The static views need the checkpoint's parameters and the state size needs the model, so
those show a one-line note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import streamlit as st

from inspector_ui.session import PageContext
from inspector_ui.widgets import clamp_choice, csv_bytes, gated, run_columns
from rwkv_core.analysis import decay as D
from rwkv_core.figures import decay as FD
from rwkv_core.figures.common import IMAGE_FORMATS, cell_from_selection, image_config

ABOUT = ("How fast every channel forgets: the per-step decay λ of each layer and channel (the RWKV-4 paper's "
         "figure), for RWKV-6/7 the decay each token sets, how much of a token's write survives, and how big the "
         "recurrent state grows.")


HELP = r"""
**Per-step decay λ** multiplies the recurrent WKV state once per token; channel c forgets at its own rate.

| version | λ | where from |
|---|---|---|
| v4 | $\exp(-\exp(w_c))$, static | `att.time_decay` [C] |
| v5.1 | $\exp(-\exp(w_h))$, static, one per head | `att.time_decay` [H] |
| v5.2 | $\exp(-\exp(w_{h,c}))$, static | `att.time_decay` [H, N] |
| v6 | $\exp(-\exp(d_t))$, $d_t = w + \tanh(x_w W_1) W_2$ | `time_decay` + LoRA `time_decay_w1/w2` |
| v7 | $\exp(-e^{-0.5}\,\sigma(d_t))$, $d_t = w_0 + \tanh(x_w w_1) w_2$ | `w0` + LoRA `w1/w2`; λ > 0.545 |

The *static* decay of v6/v7 is the data-independent part ($d = $ `time_decay` resp. `w0`).

* **rate** $\rho = -\ln\lambda$ ($e^{d}$ for v4–v6, $e^{-0.5}\sigma(d)$ for v7); **half-life** $h = \ln 2/\rho$ tokens,
  computed as $\log_{10} h = \log_{10}\ln 2 - d\,\log_{10} e$ (v4–v6) so it never overflows. v7: $h \ge 1.14$.
* **retention** of token *i*'s write when token *t* reads it, per channel:
  v4–v6 $R_{i\to t} = \prod_{j=i+1}^{t-1} \lambda_j$ (token *t* reads the state before its own decay; token *i* reads
  its own write only through the bonus *u*); v7 $R_{i\to t} = \prod_{j=i+1}^{t} \lambda_j$ (update first, then read;
  the diagonal part only — v7's transition also removes along $\hat\kappa$). Heads show the median (or mean, max)
  over their channels.
* **long-memory channels**: half-life longer than the prompt.
* **state size**: after each token, per head, $\lVert S\rVert_F$ and $\max |S_{ij}|$ of the $N\times N$ WKV state.
  v4 has no matrix state: it keeps per channel $aa$, $bb$, $pp$ (numerator $aa\,e^{pp}$, denominator $bb\,e^{pp}$);
  shown is $aa/bb$ — the decay-weighted average of past values — over all channels.

Layers and heads are numbered from 0. Source: RWKV-4 paper (Fig. "time decays… sorted along the channel axis"),
Finch Eq. 17–19, RWKV-7 Eq. 12; the formulas as code: `rwkv_core/analysis/decay.py` (README, "The pages").
"""


# ------------------------------------------------------------------------------------------------ runs

TRACE_CAPTION = ("From the trace file's w (the per-step decay the model used at each token). A trace holds w in "
                 "float32: w that rounds to 1 is clipped to 1 − 1e-7, so half-lives beyond ~1e7 tokens "
                 "(ln 2 / 1e-7 ≈ 6.9e6) are clipped; w that underflows to 0 is clipped to 1e-38.")
TRACE_CAPTION_LOGW = ("From the trace file's ln w (the log of the per-step decay the model used at each token), stored "
                      "in {dtype}: rates below 1e-7 are clipped as for a file holding w, so half-lives beyond ~1e7 "
                      "tokens (ln 2 / 1e-7 ≈ 6.9e6) are clipped; w below 1e-38 is clipped to 1e-38.{more}")


def trace_caption(trace, layer: int) -> str:
    """What the per-token decays of a trace file are read from, and how precisely (formats 1-2: w in float32;
    format 3: ln w in float32, or in float16 with rates to 0.05 % up to half-lives of ~11,000 tokens)."""
    logw = trace.arrays.get(f"logw_l{layer}")
    if logw is None:
        return TRACE_CAPTION
    f16 = logw.dtype == np.float16
    return TRACE_CAPTION_LOGW.format(dtype="float16" if f16 else "float32", more=(
        " float16 keeps rates to 0.05 % up to half-lives of ~11,000 tokens, beyond that as float32 w would."
        if f16 else ""))


@dataclass
class View:
    """One run as the decay page sees it: a live model (parameters, forward passes) or an uploaded trace."""

    label: str  # "A" or "B"
    suffix: str  # widget-key suffix: "" for run A, "_b" for run B
    title: str
    cfg: Any  # rwkv_core.config.ModelConfig
    tokens: list[int]
    token_texts: list[str]  # short, raw (selectboxes; the figures escape them)
    tokenizer_name: str
    key: Optional[tuple] = None  # hashable identity of the loaded model, e.g. (name, device, dtype)
    model: Any = None  # rwkv_core.model.RWKV, or None for a trace
    trace: Any = None  # rwkv_core.trace_file.Trace, or None
    run_work: Callable[[Callable[[], Any]], Any] = field(default=lambda fn: fn())
    state_layer: int = -1  # the state section's layer: the one the prompt's forward pass measures (-1: the last)

    @property
    def has_model(self) -> bool:
        return self.model is not None

    @property
    def n_head(self) -> int:
        return D.heads_of(self.cfg)[0]

    @property
    def layers(self) -> list[int]:
        """Layers whose per-token decays this run can give (a trace: the layers it holds)."""
        return list(range(self.cfg.n_layer)) if self.has_model else list(self.trace.layers)


def _short(label: str, width: int = 10) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _view(run, suffix: str) -> View:
    texts = [_short(t) for t in run.token_texts]
    if run.has_model:
        lm = run.loaded
        return View(run.label, suffix, run.title, run.cfg, list(run.tokens), texts, lm.tokenizer.kind,
                    key=tuple(run.model_key), model=lm.model, run_work=lambda fn: gated(fn, "Computing decays"))
    kind = str(run.trace.meta.get("tokenizer_kind", "") or "trace file")
    return View(run.label, suffix, run.title, run.cfg, list(run.tokens), texts, kind, trace=run.trace)


# ------------------------------------------------------------------------------------------------ cached numbers


# Cached by the model's key and the tokens; the View object itself (leading underscore) is not hashed. One forward
# pass per (model, prompt) gives every layer's numbers; every display choice (token, head, layer, radio) reads them.


@st.cache_data(show_spinner=False, max_entries=16)
def static_numbers(model_key: tuple, _acq: View) -> tuple[D.StaticDecay, np.ndarray]:
    """Static decays (raw parameters, float64) and the bonus [L, C]."""
    return D.static_decay(_acq.model), D.static_bonus(_acq.model)


@st.cache_resource(show_spinner="Running the prompt through the model…", max_entries=2, ttl=3600)
def prompt_pass(model_key: tuple, tokens: tuple[int, ...], _acq: View) -> D.DecayPass:
    """The one forward pass of a prompt: x_w of every layer ([T, C] each, v6/v7), every block's input (another
    state layer then runs one block) and the state sizes of the state section's layer at the time
    (`_acq.state_layer`; measuring a layer runs its WKV token by token, so only the one shown). A resource, not data:
    every rerun reads it in place, never changed. Two kept (runs A and B): each is 2 L T C floats, 400 MB at the
    1.5B shape and 1,031 tokens."""
    layer = _acq.state_layer % _acq.cfg.n_layer
    return _acq.run_work(lambda: D.decay_pass(_acq.model, list(tokens), state_layers=[layer]))


@st.cache_data(show_spinner="Measuring the state after every token…", max_entries=64)
def state_numbers(model_key: tuple, tokens: tuple[int, ...], layer: int, _acq: View) -> D.StateSizes:
    """State sizes of one layer: from the prompt's forward pass when it measured this layer, else that one block
    rerun from the input the pass kept (v6/v7), else a pass of its own that ends after the layer."""
    kept = prompt_pass(model_key, tokens, _acq)
    return _acq.run_work(lambda: kept.state_sizes_of(_acq.model, layer)
                         or D.state_sizes(_acq.model, list(tokens), layers=[layer]))


def all_state_sizes_csv(v: View) -> bytes:
    """The CSV of every layer's state sizes, built when its download button is clicked (one more forward pass,
    its WKV token by token in every layer), holding the shared model's work gate like every page computation."""
    return gated(lambda: csv_bytes(D.state_sizes(v.model, v.tokens).table()), show_waiting=False)


@dataclass
class LayerNumbers:
    """What the per-token views show of one layer, computed once per (model, prompt, layer)."""

    token_decay: D.TokenDecay  # this layer only: logit [1, T, C]
    head_median: np.ndarray  # [T, H] median over each head's channels of log10 h_t
    summary: pd.DataFrame  # `D.token_head_summary`: one row per head


def layer_numbers_of(td: D.TokenDecay, layer: int) -> LayerNumbers:
    """The per-token views' numbers of `layer` from its decays (a live model's or a trace's)."""
    return LayerNumbers(td, td.head_median_log10_half_life(layer), D.token_head_summary(td, layer))


@st.cache_data(show_spinner=False, max_entries=64)
def token_numbers(model_key: tuple, tokens: tuple[int, ...], layer: int, _acq: View) -> LayerNumbers:
    """Per-token decays of one layer, from the prompt's x_w (no forward pass of its own)."""
    xw = prompt_pass(model_key, tokens, _acq).lora_inputs[layer]  # [T, C]
    return layer_numbers_of(D.token_decays_from_inputs(_acq.model, tokens, {layer: xw}), layer)


@st.cache_data(show_spinner=False, max_entries=64)
def retention_numbers(model_key: tuple, tokens: tuple[int, ...], layer: int, source: int, agg: str,
                      _numbers: LayerNumbers) -> np.ndarray:
    """[T, H] retention of token `source`'s write, aggregated over each head's channels."""
    return head_retention(_numbers, layer, source, agg)


def head_retention(numbers: LayerNumbers, layer: int, source: int, agg: str) -> np.ndarray:
    """[T, H] retention of token `source`'s write at every reading token, each head's channels aggregated by `agg`."""
    td = numbers.token_decay
    return D.retention_by_head(D.retention(td.select(layer).log_decay[0], source, td.version), td.n_head, agg)


def view_layer_numbers(v: View, layer: int) -> Optional[LayerNumbers]:
    """Per-token numbers of one layer of a run, or None when the run lacks that layer (or the trace its w)."""
    if layer not in v.layers:
        return None
    if v.has_model:
        return token_numbers(v.key, tuple(v.tokens), layer, v)
    name = "logw" if f"logw_l{layer}" in v.trace.arrays else "w"  # logw: format 3 (w: formats 1 and 2)
    try:
        x = v.trace.layer(name, layer)  # float32
    except KeyError:
        return None
    if x.ndim != 2 or x.shape[0] != len(v.tokens) or x.shape[1] != v.cfg.dim_att:
        return None
    decays = D.trace_token_decays(None, v.cfg, v.tokens, layer, logw=x) if name == "logw" else \
        D.trace_token_decays(x, v.cfg, v.tokens, layer)
    return layer_numbers_of(decays, layer)


def view_retention(v: View, numbers: LayerNumbers, layer: int, source: int, agg: str) -> np.ndarray:
    """[T, H] retention for a run: cached per (model, prompt, layer, source, aggregate) for a live model."""
    if v.has_model:
        return retention_numbers(v.key, tuple(v.tokens), layer, source, agg, numbers)
    return head_retention(numbers, layer, source, agg)


def _run_heading(col, v: View, n: int) -> None:
    if n > 1:
        col.markdown(f"**Run {v.label}** · {_short(v.title, 60)}")


def shared_range(*arrays: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    """(zmin, zmax) over the finite values of all arrays: one colour scale for both runs."""
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return None, None
    return float(min(a.min() for a in finite)), float(max(a.max() for a in finite))


def same_shape(a: View, b: View) -> bool:
    """Same architecture (version, heads, head size, channels) and token count: B - A is defined cell by cell."""
    ca, cb = a.cfg, b.cfg
    return (str(ca.version) == str(cb.version) and D.heads_of(ca) == D.heads_of(cb) and ca.dim_att == cb.dim_att
            and len(a.tokens) == len(b.tokens))


# ------------------------------------------------------------------------------------------------ page


def render(ctx: PageContext) -> None:
    """The time decay page below the shared sidebar: static, per-token and state-size sections.

    Each section is a fragment: a control of one section reruns that section alone, so the browser redraws its
    figures only (at 1,000 tokens each figure costs Chromium a few hundred milliseconds)."""
    views = [_view(r, "" if i == 0 else "_b") for i, r in enumerate(ctx.runs)]
    chosen = st.session_state.get("decay_state_layer")
    for v in views:  # the state layer shown, so that the prompt's one forward pass measures it
        v.state_layer = chosen if isinstance(chosen, int) and 0 <= chosen < v.cfg.n_layer else -1
    config = image_format_choice()
    intro_section(views)
    static_section([v for v in (views if ctx.compare and ctx.compare_what == "model" else views[:1]) if v.has_model],
                   config)
    dynamic = [v for v in views if D.is_dynamic(v.cfg.version)]
    if dynamic:
        dynamic_section(dynamic, config)
    state_section(views, config)


def image_format_choice() -> dict:
    """The sidebar's choice of the camera button's format: the chart config of every figure on the page."""
    fmt = st.sidebar.radio("Camera button saves", list(IMAGE_FORMATS), horizontal=True, key="decay_img_fmt",
                           help="Format of the image the chart toolbar's camera button downloads.")
    return image_config("rwkv-decay", fmt)


def _describe(v: View) -> str:
    cfg = v.cfg
    H = D.heads_of(cfg)[0]
    heads = "no heads (per channel)" if cfg.version == "4" else f"{H} heads × {cfg.head_size}"
    return (f"{v.title}: RWKV v{cfg.version}, {cfg.n_layer} layers, {cfg.n_embd} channels, {heads}; "
            f"prompt of {len(v.tokens)} tokens ({v.tokenizer_name}).")


def intro_section(views: list[View]) -> None:
    """What each run is, the formulas, and a note for every run whose decay does not depend on the input."""
    for v in views:
        st.caption(_describe(v))
    with st.expander("Formulas and what the views show"):
        st.markdown(HELP)
    for v in views:
        if not D.is_dynamic(v.cfg.version):
            who = f"Run {v.label}: " if len(views) > 1 else ""
            rest = ("No per-token views for this run." if len(views) > 1 else
                    "Only the static views (and the state size) are shown." if v.has_model else
                    "There are no per-token views, and the static ones need the model's parameters.")
            st.info(f"{who}RWKV v{v.cfg.version}: the decay does not depend on the input — every token decays the "
                    f"state by the same λ. {rest}")


@st.fragment
def static_section(views: list[View], config: dict) -> None:
    """Static views of each model with parameters (one per different model: run A alone unless compare = "model")."""
    if not views:
        st.caption("Static decays per layer and channel: these need the checkpoint's parameters, which a trace "
                   "file lacks; choose Source = model for them.")
        return
    st.header("Static decay per layer and channel")
    c1, c2, c3 = st.columns(3)
    y_mode = c1.radio("y axis", ["decay λ", "half-life (log)"], horizontal=True, key="decay_paper_y")
    n_head = max(v.n_head for v in views)
    head_opts = ["all heads"] + [f"head {h}" for h in range(n_head)]
    clamp_choice("decay_head_filter", head_opts, "all heads")
    head_choice = c2.selectbox("Channels", head_opts, key="decay_head_filter", disabled=n_head == 1,
                               help="Restrict the views to one head's N channels." if n_head > 1
                               else "v4 has no heads: all channels.")
    sort_heat = c3.toggle("Sort heat map channels", value=False, key="decay_heat_sorted")
    value = "decay" if y_mode == "decay λ" else "half_life"
    for col, v in zip(run_columns(len(views)), views):
        with col:
            _run_heading(col, v, len(views))
            sd, bonus = static_numbers(v.key, v)
            head = None if head_choice == "all heads" else int(head_choice.split()[1])
            if head is not None and head >= sd.n_head:
                st.caption(f"This model has {sd.n_head} head(s): showing all channels.")
                head = None
            T = len(v.tokens)
            st.plotly_chart(FD.paper_figure(sd.decay, sd.log10_half_life, sd.head_size, head=head, y=value),
                            config=config, key=f"decay_paper_fig{v.suffix}")
            heat = FD.layer_channel_heatmap(sd.decay, sd.log10_half_life, sd.head_size, sort=sort_heat, head=head,
                                            value="decay" if value == "decay" else "log10_half_life")
            st.plotly_chart(heat, config=config, key=f"decay_heat_fig{v.suffix}")
            summary = D.head_summary(sd.log10_half_life, sd.n_head, T)
            st.subheader("Per-head summary")
            st.caption(f"Half-lives in tokens; **n_long** = channels whose half-life exceeds the prompt length "
                       f"({T} tokens).")
            st.dataframe(summary, hide_index=True, width="stretch")
            d1, d2 = st.columns(2)
            d1.download_button("Static decays (CSV)", lambda sd=sd: csv_bytes(sd.table()),
                               file_name=f"static_decay{v.suffix}.csv", mime="text/csv", on_click="ignore",
                               key=f"decay_dl_static{v.suffix}")
            d2.download_button("Per-head summary (CSV)", lambda summary=summary: csv_bytes(summary),
                               file_name=f"decay_head_summary{v.suffix}.csv", mime="text/csv", on_click="ignore",
                               key=f"decay_dl_summary{v.suffix}")
            bonus_box = st.expander("Bonus of the current token (u / r_k)", key=f"decay_bonus_open{v.suffix}",
                                    on_change="rerun")
            if bonus_box.open:  # drawn only when opened: one figure less for the browser on every first render
                with bonus_box:
                    st.plotly_chart(FD.bonus_heatmap(bonus, version=sd.version), config=config,
                                    key=f"decay_bonus_fig{v.suffix}")


@dataclass
class TokenChoices:
    """The per-token sections' shared controls: one layer, and the token and head choices every run has."""

    layer: int
    token_opts: list[int]
    head_opts: list[int]
    first: View  # the run whose token texts label the token choices


@st.fragment
def dynamic_section(views: list[View], config: dict) -> None:
    """Per-token views of every run with a data-dependent decay, in one column per run, under one set of controls."""
    st.header("Per-token decay (data-dependent)")
    layer_opts = sorted(set().union(*(v.layers for v in views)))
    if not layer_opts:
        st.info("The trace file holds no layers.")
        return
    clamp_choice("decay_dyn_layer", layer_opts, layer_opts[-1])
    layer = st.selectbox("Layer", layer_opts, key="decay_dyn_layer", index=len(layer_opts) - 1)
    nums = [view_layer_numbers(v, layer) for v in views]
    live = [(v, n) for v, n in zip(views, nums) if n is not None]
    if not live:
        st.info(f"No run holds the per-token decays of layer {layer}.")
        return
    T = min(len(v.tokens) for v, _ in live)
    H = min(n.token_decay.n_head for _, n in live)
    tc = TokenChoices(layer, list(range(T)), list(range(H)), live[0][0])
    clamp_choice("decay_sel_token", tc.token_opts, 0)
    clamp_choice("decay_sel_head", tc.head_opts, 0)
    token_head_section(views, nums, tc, config)
    spectrum_section(views, nums, tc, config)
    retention_section(views, nums, tc, config)


def _apply_heatmap_clicks(views: list[View], tc: TokenChoices) -> None:
    """A click on a tokens x heads heat map (its state arrives before this run) moves the token and head boxes."""
    for v in views:
        event_state = st.session_state.get(f"decay_token_head{v.suffix}")
        clicked = cell_from_selection(event_state["selection"]) if event_state else None
        if clicked and clicked != st.session_state.get(f"decay_last_click{v.suffix}"):
            st.session_state[f"decay_last_click{v.suffix}"] = clicked
            if clicked[0] in tc.token_opts and clicked[1] in tc.head_opts:
                st.session_state["decay_sel_token"], st.session_state["decay_sel_head"] = clicked


def token_head_section(views: list[View], nums: list[Optional[LayerNumbers]], tc: TokenChoices,
                       config: dict) -> None:
    """Tokens x heads heat maps of the median half-life (one colour scale for all runs; B − A where defined)."""
    layer = tc.layer
    live = [(v, n) for v, n in zip(views, nums) if n is not None]
    _apply_heatmap_clicks([v for v, _ in live], tc)
    cell = (st.session_state.get("decay_sel_token", 0), st.session_state.get("decay_sel_head", 0))
    meds = {v.label: n.head_median for v, n in live}  # [T, H] each
    zmin, zmax = shared_range(*meds.values()) if len(live) > 1 else (None, None)
    for col, v, n in zip(run_columns(len(views)), views, nums):
        with col:
            _run_heading(col, v, len(views))
            if n is None:
                st.info(f"Run {v.label} has no per-token decays of layer {layer}.")
                continue
            fig = FD.token_head_heatmap(meds[v.label], v.token_texts, layer=layer, selected=cell,
                                        zmin=zmin, zmax=zmax)
            st.plotly_chart(fig, config=config, on_select="rerun", selection_mode="points",
                            key=f"decay_token_head{v.suffix}")
            if v.trace is not None:
                st.caption(trace_caption(v.trace, layer))
            summary_box = st.expander(f"Per-head summary over the prompt, layer {layer}",
                                      key=f"decay_summary_open{v.suffix}", on_change="rerun")
            if summary_box.open:
                summary_box.caption(
                    "avg = half-life of the mean rate over tokens (median over channels); p5/p50/p95 over tokens of "
                    "the per-token median half-life; min_at_token = where the head forgets most; n_long = channels "
                    f"whose average half-life exceeds the prompt ({len(v.tokens)} tokens).")
                summary_box.dataframe(n.summary, hide_index=True, width="stretch")
    if len(live) > 1:
        st.caption("Both heat maps share one colour scale (log10 half-life from "
                   f"{zmin:.2f} to {zmax:.2f})." if zmin is not None else "Both heat maps share one colour scale.")
    if len(live) == 2 and same_shape(live[0][0], live[1][0]):
        (va, _), (vb, _) = live
        diff = meds[vb.label] - meds[va.label]
        st.plotly_chart(FD.token_head_difference_heatmap(diff, va.token_texts, layer=layer), config=config,
                        key="decay_token_head_diff")
        st.caption("B − A of the per-head median log10 half-life, token by token (token labels of run A).")
    elif len(live) == 2:
        st.caption("No B − A heat map: the runs differ in architecture or token count.")
    long = min(len(v.tokens) for v, _ in live) > FD.CLICKABLE_TOKENS
    st.caption(("Choose a token and head below (at this length a token's column is too narrow to click)"
                if long else "Click a cell (or choose below)") + " to see that token's channel spectrum."
               + (" In compare mode the choices go up to the shorter prompt and the smaller head count."
                  if len(live) > 1 else ""))


def spectrum_section(views: list[View], nums: list[Optional[LayerNumbers]], tc: TokenChoices, config: dict) -> None:
    """The chosen (token, head): each channel's decay at that token against the static decay."""
    layer = tc.layer
    c1, c2, c3, c4 = st.columns(4)
    t = c1.selectbox("Token", tc.token_opts, key="decay_sel_token",
                     format_func=lambda i: f"{i}: {tc.first.token_texts[i]}")
    h = c2.selectbox("Head", tc.head_opts, key="decay_sel_head")
    spec_y = c3.radio("Spectrum y", ["half-life (log)", "decay λ"], horizontal=True, key="decay_spec_y")
    spec_sort = c4.toggle("Sorted spectrum", value=False, key="decay_spec_sort")
    for col, v, n in zip(run_columns(len(views)), views, nums):
        if n is None:
            continue
        with col:
            N = n.token_decay.head_size
            sl = slice(h * N, (h + 1) * N)
            cut = n.token_decay.select(layer, slice(t, t + 1), sl)  # [1, 1, N]
            s_decay = s_lh = None
            if v.has_model:
                sd, _ = static_numbers(v.key, v)
                s_decay, s_lh = sd.decay[layer, sl], sd.log10_half_life[layer, sl]
            fig = FD.channel_spectrum_figure(
                cut.decay[0, 0], cut.log10_half_life[0, 0], s_decay, s_lh,
                channels=np.arange(sl.start, sl.stop), token_label=f"{t}: {v.token_texts[t]}", layer=layer, head=h,
                y="decay" if spec_y == "decay λ" else "half_life", sort=spec_sort)
            st.plotly_chart(fig, config=config, key=f"decay_spectrum_fig{v.suffix}")


def retention_section(views: list[View], nums: list[Optional[LayerNumbers]], tc: TokenChoices,
                      config: dict) -> None:
    """How much of a source token's write survives at every later token, per head, with the layer's CSV."""
    layer = tc.layer
    st.subheader("Retention from a source token")
    c1, c2, c3 = st.columns(3)
    clamp_choice("decay_ret_source", tc.token_opts, 0)
    source = c1.selectbox("Source token i", tc.token_opts, key="decay_ret_source",
                          format_func=lambda i: f"{i}: {tc.first.token_texts[i]}")
    agg = c2.radio("Head aggregate", ["median", "mean", "max"], horizontal=True, key="decay_ret_agg")
    log_y = c3.toggle("Log y", value=True, key="decay_ret_log")
    for col, v, n in zip(run_columns(len(views)), views, nums):
        if n is None:
            continue
        with col:
            td = n.token_decay
            by_head = view_retention(v, n, layer, source, agg)  # [T, H]
            if D.first_read(source, td.version) >= len(v.tokens):
                st.info("The source is the last token: no later token reads its write.")
            else:
                st.plotly_chart(FD.retention_figure(by_head, v.token_texts, source=source, layer=layer, agg=agg,
                                                    log_y=log_y), config=config, key=f"decay_ret_fig{v.suffix}")
            first_t = "t = i" if D.reads_after_update(td.version) else "t = i + 1"
            st.caption(f"v{td.version}: the write of token i is first read through the state at {first_t}, "
                       "where R = 1.")
            st.download_button(f"Per-token decays and retention, layer {layer} (CSV)",
                               lambda td=td, layer=layer, source=source: csv_bytes(
                                   D.token_decay_table(td, layer, source)),
                               file_name=f"token_decay_layer{layer}{v.suffix}.csv", mime="text/csv",
                               on_click="ignore", key=f"decay_dl_tokens{v.suffix}")


@st.fragment
def state_section(views: list[View], config: dict) -> None:
    """The size of the recurrent state after every token (needs the model), with the CSV of all layers."""
    st.header("Size of the recurrent state")
    with_model = [v for v in views if v.has_model]
    if not with_model:
        st.info("The state size is measured by running the model: a trace file does not hold the states.")
        return
    c1, c2, c3 = st.columns(3)
    layer_opts = sorted(set().union(*(range(v.cfg.n_layer) for v in with_model)))
    clamp_choice("decay_state_layer", layer_opts, layer_opts[-1])
    layer = c1.selectbox("Layer", layer_opts, key="decay_state_layer", index=len(layer_opts) - 1)
    metric = c2.radio("Measure", ["Frobenius norm", "max |entry|"], horizontal=True, key="decay_state_metric")
    log_y = c3.toggle("Log y", value=False, key="decay_state_log")
    key = "frobenius" if metric == "Frobenius norm" else "max_abs"
    for col, v in zip(run_columns(len(views)), views):
        with col:
            _run_heading(col, v, len(views))
            if not v.has_model:
                st.info("The state size needs the model: a trace file does not hold the states.")
                continue
            if layer >= v.cfg.n_layer:
                st.info(f"Run {v.label}'s model has no layer {layer}.")
                continue
            ss = state_numbers(v.key, tuple(v.tokens), layer, v)
            values = getattr(ss, key)[ss.index(layer)]  # [T, H]
            st.plotly_chart(FD.state_size_figure(values, v.token_texts, layer=layer, metric=key, version=ss.version,
                                                 log_y=log_y), config=config, key=f"decay_state_fig{v.suffix}")
            if ss.version == "4":
                st.caption("v4 keeps per channel aa, bb, pp (numerator aa·e^pp, denominator bb·e^pp); shown is "
                           "aa/bb, the decay-weighted average of past values, over all channels.")
            st.download_button("State sizes, all layers (CSV)", lambda v=v: all_state_sizes_csv(v),
                               file_name=f"state_size{v.suffix}.csv", mime="text/csv", on_click="ignore",
                               key=f"decay_dl_state{v.suffix}")
