"""Time decay page: per-channel decays per layer (the RWKV-4 paper figure), per-token decays of v6/v7, retention
and the size of the recurrent state.

Model and prompt come from the shared sidebar (`inspector_ui.frame.page_setup`), all in
`acquire_model_and_prompt()`: session-state key `model` (a registry name such as
"shared: tiny-rwkv-4v0-660K-FP32.bin") and `prompt`, both also read from the URL. Opened first, the page
defaults to tiny-rwkv-6v0-1m (data-dependent decay) with the registry's UTF-16-LE byte tokenizer. Tests pick the
model with `at.session_state["model"] = "shared: <file>"` before `at.run()`. In compare mode the page shows run A.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

try:
    import rwkv_core  # noqa: F401
except ImportError:  # run as `streamlit run pages/3_Time_decay.py` from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
import streamlit as st

from rwkv_core import decay as D
from rwkv_core import figures_decay as FD

DEFAULT_MODEL = "shared: tiny-rwkv-6v0-1m-FP32.bin"
ABOUT = ("How fast every channel forgets: the per-step decay λ of each layer and channel (the RWKV-4 paper's "
         "figure), for RWKV-6/7 the decay each token sets, how much of a token's write survives, and how big the "
         "recurrent state grows.")


# ------------------------------------------------------------------------------------------------ model and prompt


@dataclass
class Acquired:
    """What the page needs from the sidebar: a loaded model, a cache key for it and the tokenised prompt."""

    model: Any  # rwkv_core.model.RWKV
    key: tuple  # hashable identity of the loaded model, e.g. (name, device, dtype)
    name: str
    tokens: list[int]
    token_labels: list[str]
    tokenizer_name: str
    run_work: Callable[[Callable[[], Any]], Any]  # runs model work (the shared model's FIFO gate)


def _short(label: str, width: int = 10) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def acquire_model_and_prompt() -> Optional[Acquired]:
    """The shared sidebar's model and prompt (run A); None, with a message, when there is no live model."""
    from inspector_ui.frame import gated, page_setup, qp_get

    if "model" not in st.session_state and qp_get("model") is None:
        st.session_state["model"] = DEFAULT_MODEL  # only a default: the URL and earlier choices win
    ctx = page_setup("Time decay", "⏳", ABOUT)
    run = ctx.run
    if not run.has_model:
        st.info("The decay page reads the checkpoint's parameters: choose Source = model in the sidebar.")
        return None
    if ctx.compare:
        st.caption("Compare mode: this page shows run A.")
    lm = run.loaded
    return Acquired(lm.model, tuple(run.model_key), run.model_key[0], list(run.tokens),
                    [_short(t) for t in run.token_texts], lm.tokenizer.kind,
                    lambda fn: gated(fn, "Computing decays"))


# ------------------------------------------------------------------------------------------------ cached numbers


# Cached by the model's key and the tokens; the Acquired object itself (leading underscore) is not hashed.


@st.cache_data(show_spinner=False, max_entries=16)
def static_numbers(model_key: tuple, _acq: Acquired) -> tuple[D.StaticDecay, np.ndarray]:
    """Static decays (raw parameters, float64) and the bonus [L, C]."""
    return D.static_decay(_acq.model), D.static_bonus(_acq.model)


@st.cache_data(show_spinner="Computing per-token decays…", max_entries=64)
def token_numbers(model_key: tuple, tokens: tuple[int, ...], layer: int, _acq: Acquired) -> D.TokenDecay:
    """Per-token decays of one layer (one layer at a time: [T, C] float64 stays small for big models)."""
    return _acq.run_work(lambda: D.token_decays(_acq.model, list(tokens), layers=[layer]))


@st.cache_data(show_spinner="Measuring the state after every token…", max_entries=16)
def state_numbers(model_key: tuple, tokens: tuple[int, ...], _acq: Acquired) -> D.StateSizes:
    return _acq.run_work(lambda: D.state_sizes(_acq.model, list(tokens)))


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False, float_format="%.10g").encode()


def show(fig, config: dict, **kwargs):
    return st.plotly_chart(fig, config=config, **kwargs)


def _clamp_state(key: str, options: list, fallback) -> None:
    """Keep a selectbox's stored value valid when the options change (new prompt or model)."""
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = fallback


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
Finch Eq. 17–19, RWKV-7 Eq. 12; `docs/tracing-and-decay.md` §4–5.
"""


# ------------------------------------------------------------------------------------------------ page


def static_section(acq: Acquired, sd: D.StaticDecay, bonus: np.ndarray, config: dict) -> None:
    st.header("Static decay per layer and channel")
    T = len(acq.tokens)
    c1, c2, c3 = st.columns(3)
    y_mode = c1.radio("y axis", ["decay λ", "half-life (log)"], horizontal=True, key="decay_paper_y")
    head_opts = ["all heads"] + [f"head {h}" for h in range(sd.n_head)]
    head_choice = c2.selectbox("Channels", head_opts, key="decay_head_filter", disabled=sd.n_head == 1,
                               help="Restrict the views to one head's N channels." if sd.n_head > 1
                               else "v4 has no heads: all channels.")
    head = None if head_choice == "all heads" else int(head_choice.split()[1])
    sort_heat = c3.toggle("Sort heat map channels", value=False, key="decay_heat_sorted")
    fig = FD.paper_figure(sd.decay, sd.log10_half_life, sd.head_size, head=head,
                          y="decay" if y_mode == "decay λ" else "half_life")
    show(fig, config, key="decay_paper_fig")
    fig = FD.layer_channel_heatmap(sd.decay, sd.log10_half_life, sd.head_size, sort=sort_heat, head=head,
                                   value="decay" if y_mode == "decay λ" else "log10_half_life")
    show(fig, config, key="decay_heat_fig")
    summary = D.head_summary(sd.log10_half_life, sd.n_head, T)
    st.subheader("Per-head summary")
    st.caption(f"Half-lives in tokens; **n_long** = channels whose half-life exceeds the prompt length ({T} tokens).")
    st.dataframe(summary, hide_index=True, width="stretch")
    d1, d2 = st.columns(2)
    d1.download_button("Static decays (CSV)", csv_bytes(sd.table()), file_name="static_decay.csv",
                       mime="text/csv", on_click="ignore", key="decay_dl_static")
    d2.download_button("Per-head summary (CSV)", csv_bytes(summary), file_name="decay_head_summary.csv",
                       mime="text/csv", on_click="ignore", key="decay_dl_summary")
    with st.expander("Bonus of the current token (u / r_k)"):
        show(FD.bonus_heatmap(bonus, version=sd.version), config, key="decay_bonus_fig")


def dynamic_section(acq: Acquired, sd: D.StaticDecay, config: dict) -> None:
    st.header("Per-token decay (data-dependent)")
    T, labels = len(acq.tokens), acq.token_labels
    n_layer = acq.model.cfg.n_layer
    layer = st.selectbox("Layer", list(range(n_layer)), key="decay_dyn_layer", index=n_layer - 1)
    td = token_numbers(acq.key, tuple(acq.tokens), layer, acq)
    H, N = td.n_head, td.head_size
    token_opts, head_opts = list(range(T)), list(range(H))
    _clamp_state("decay_sel_token", token_opts, 0)
    _clamp_state("decay_sel_head", head_opts, 0)
    # a click on the heat map (its state arrives before this run) moves the selection boxes
    event_state = st.session_state.get("decay_token_head")
    clicked = FD.cell_from_selection(event_state["selection"]) if event_state else None
    if clicked and clicked != st.session_state.get("decay_last_click"):
        st.session_state["decay_last_click"] = clicked
        if clicked[0] in token_opts and clicked[1] in head_opts:
            st.session_state["decay_sel_token"], st.session_state["decay_sel_head"] = clicked
    cell = (st.session_state.get("decay_sel_token", 0), st.session_state.get("decay_sel_head", 0))
    med = td.head_median_log10_half_life(layer)  # [T, H]
    fig = FD.token_head_heatmap(med, labels, layer=layer, selected=cell)
    st.plotly_chart(fig, config=config, on_select="rerun", selection_mode="points", key="decay_token_head")
    st.caption("Click a cell (or choose below) to see that token's channel spectrum.")
    with st.expander(f"Per-head summary over the prompt, layer {layer}"):
        st.caption("avg = half-life of the mean rate over tokens (median over channels); p5/p50/p95 over tokens of "
                   "the per-token median half-life; min_at_token = where the head forgets most; n_long = channels "
                   f"whose average half-life exceeds the prompt ({T} tokens).")
        st.dataframe(D.token_head_summary(td, layer), hide_index=True, width="stretch")
    c1, c2, c3, c4 = st.columns(4)
    t = c1.selectbox("Token", token_opts, key="decay_sel_token", format_func=lambda i: f"{i}: {labels[i]}")
    h = c2.selectbox("Head", head_opts, key="decay_sel_head")
    spec_y = c3.radio("Spectrum y", ["half-life (log)", "decay λ"], horizontal=True, key="decay_spec_y")
    spec_sort = c4.toggle("Sorted spectrum", value=False, key="decay_spec_sort")
    sl = slice(h * N, (h + 1) * N)
    li = td.index(layer)
    fig = FD.channel_spectrum_figure(
        td.decay[li, t, sl], td.log10_half_life[li, t, sl], sd.decay[layer, sl], sd.log10_half_life[layer, sl],
        channels=np.arange(sl.start, sl.stop), token_label=f"{t}: {labels[t]}", layer=layer, head=h,
        y="decay" if spec_y == "decay λ" else "half_life", sort=spec_sort)
    show(fig, config, key="decay_spectrum_fig")

    st.subheader("Retention from a source token")
    c1, c2, c3 = st.columns(3)
    _clamp_state("decay_ret_source", token_opts, 0)
    source = c1.selectbox("Source token i", token_opts, key="decay_ret_source",
                          format_func=lambda i: f"{i}: {labels[i]}")
    agg = c2.radio("Head aggregate", ["median", "mean", "max"], horizontal=True, key="decay_ret_agg")
    log_y = c3.toggle("Log y", value=True, key="decay_ret_log")
    ret = D.retention(td.log_decay[li], source, td.version)  # [T, C]
    by_head = D.retention_by_head(ret, H, agg)
    if D.first_read(source, td.version) >= T:
        st.info("The source is the last token: no later token reads its write.")
    else:
        show(FD.retention_figure(by_head, labels, source=source, layer=layer, agg=agg, log_y=log_y), config,
             key="decay_ret_fig")
    first = "t = i" if D.reads_after_update(td.version) else "t = i + 1"
    st.caption(f"v{td.version}: the write of token i is first read through the state at {first}, where R = 1.")
    long = pd.DataFrame({
        "layer": layer, "token": np.repeat(np.arange(T), H * N), "head": np.tile(np.repeat(np.arange(H), N), T),
        "channel": np.tile(np.arange(H * N), T), "decay": td.decay[li].reshape(-1),
        "half_life": td.half_life[li].reshape(-1), f"retention_from_{source}": ret.reshape(-1)})
    st.download_button(f"Per-token decays and retention, layer {layer} (CSV)", csv_bytes(long),
                       file_name=f"token_decay_layer{layer}.csv", mime="text/csv", on_click="ignore",
                       key="decay_dl_tokens")


def state_section(acq: Acquired, ss: D.StateSizes, config: dict) -> None:
    st.header("Size of the recurrent state")
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("Layer", ss.layers, key="decay_state_layer", index=len(ss.layers) - 1)
    metric = c2.radio("Measure", ["Frobenius norm", "max |entry|"], horizontal=True, key="decay_state_metric")
    log_y = c3.toggle("Log y", value=False, key="decay_state_log")
    key = "frobenius" if metric == "Frobenius norm" else "max_abs"
    values = getattr(ss, key)[ss.index(layer)]  # [T, H]
    show(FD.state_size_figure(values, acq.token_labels, layer=layer, metric=key, version=ss.version, log_y=log_y),
         config, key="decay_state_fig")
    if ss.version == "4":
        st.caption("v4 keeps per channel aa, bb, pp (numerator aa·e^pp, denominator bb·e^pp); shown is aa/bb, "
                   "the decay-weighted average of past values, over all channels.")
    T, H = values.shape
    n = len(ss.layers)
    table = pd.DataFrame({"layer": np.repeat(ss.layers, T * H), "token": np.tile(np.repeat(np.arange(T), H), n),
                          "head": np.tile(np.arange(H), T * n),
                          "frobenius": ss.frobenius.reshape(-1), "max_abs": ss.max_abs.reshape(-1)})
    st.download_button("State sizes, all layers (CSV)", csv_bytes(table), file_name="state_size.csv",
                       mime="text/csv", on_click="ignore", key="decay_dl_state")


def main() -> None:
    acq = acquire_model_and_prompt()
    if acq is None:
        return
    fmt = st.sidebar.radio("Camera button saves", ["png", "svg"], horizontal=True, key="decay_img_fmt",
                           help="Format of the image the chart toolbar's camera button downloads.")
    config = FD.image_config(fmt, filename="rwkv-decay")
    cfg = acq.model.cfg
    H = D.heads_of(cfg)[0]
    heads = "no heads (per channel)" if cfg.version == "4" else f"{H} heads × {cfg.head_size}"
    st.caption(f"{acq.name}: RWKV v{cfg.version}, {cfg.n_layer} layers, {cfg.n_embd} channels, {heads}; "
               f"prompt of {len(acq.tokens)} tokens ({acq.tokenizer_name}).")
    with st.expander("Formulas and what the views show"):
        st.markdown(HELP)
    if not D.is_dynamic(cfg.version):
        st.info(f"RWKV v{cfg.version}: the decay does not depend on the input — every token decays the state by "
                "the same λ. Only the static views (and the state size) are shown.")
    sd, bonus = static_numbers(acq.key, acq)
    static_section(acq, sd, bonus, config)
    tokens = tuple(acq.tokens)
    if D.is_dynamic(cfg.version):
        dynamic_section(acq, sd, config)
    state_section(acq, state_numbers(acq.key, tokens, acq), config)


main()
