"""Causal tracing page: ROME's causal trace for RWKV (the RWKV paper's "information propagation" figure) and layer
ablation, computed by `rwkv_core.tracing` and drawn by `rwkv_core.figures_tracing`.

Model acquisition is the one function `acquire_model()` at the top (a shared sidebar module will replace it): a
checkpoint path in the sidebar, loaded once per process with `st.cache_resource`; the default is BlinkDL's
reverse-digits RWKV-7 model from the shared weights folder with its character tokenizer ('0'-'9', ',', '#').
Results are kept in `st.session_state["ct_results"]` keyed by (model, prompt, settings), so changing only a display
option (metric, image format) redraws without recomputing.
"""
from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path
from typing import Optional

try:
    import rwkv_core  # noqa: F401
except ImportError:  # run as `streamlit run pages/4_Causal_tracing.py` from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from rwkv_core import figures_tracing as FT
from rwkv_core import tracing as TR
from rwkv_core.errors import RWKVInspectorError

REVERSE_DIGITS_FILE = "260123_reverse_L2_only_rwkv7.pth"
# (prompt, subject, answer, second answer, alternative subject, reference text for mean ablation)
DIGITS_EXAMPLE = ("12345,54", "3", "3", "", "7", "1234567890,0987654321#80,08#")
TEXT_EXAMPLE = ("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris", " Rome",
                "The Colosseum", "The quick brown fox jumps over the lazy dog. Paris is the capital of France.")


# ------------------------------------------------------------------------------------------------ model


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _load_model(path: str, tokenizer: str, utf16: bool, device: str):
    """Model, tokenizer and a lock: hooks live on the shared model object, so one trace at a time runs on it."""
    from rwkv_core.checkpoint import load_model
    from rwkv_core.tokenizer import KINDS

    model = load_model(path, device=device)
    kind = tokenizer if tokenizer in KINDS or tokenizer == "chars" else None
    tpath = tokenizer if tokenizer and kind is None else None
    return model, TR.tokenizer_for_model(model, kind=kind, path=tpath, utf16=utf16), threading.Lock()


def acquire_model():
    """The page's model: (model, tokenizer, lock, key). To be replaced by the shared sidebar."""
    from rwkv_core.paths import shared_weights_dir

    with st.sidebar:
        st.subheader("Model")
        path = st.text_input("Checkpoint file", str(shared_weights_dir() / REVERSE_DIGITS_FILE), key="ct_checkpoint")
        tok = st.text_input("Tokenizer", "", key="ct_tokenizer",
                            help="Empty: chosen from the vocabulary size (bytes for 256 rows, World for 65536, the "
                                 "digit characters for the reverse-digits model). Or a kind (bytes, "
                                 "bytes-utf16le, world, hf, chars) or a tokenizer file (e.g. 20B_tokenizer.json).")
        utf16 = st.checkbox("UTF-16-LE bytes (the tiny v6 models)", False, key="ct_utf16")
    try:
        model, tokenizer, lock = _load_model(path.strip(), tok.strip(), utf16, "cpu")
    except (RWKVInspectorError, OSError, ValueError) as e:
        st.error(f"Cannot load the model: {e}")
        st.stop()
    return model, tokenizer, lock, (path.strip(), tok.strip(), utf16)


# ------------------------------------------------------------------------------------------------ page

st.set_page_config(page_title="Causal tracing", page_icon="🔬", layout="wide")
st.title("Causal tracing and layer ablation")
st.caption("Where does the subject of a prompt reach the answer: up the layers at one token, or forward in time "
           "through the recurrent state? ROME's causal trace (Meng et al. 2022) as in the RWKV paper's "
           "information-propagation figure, with the RWKV-specific restore modes.")

model, tokenizer, model_lock, model_key = acquire_model()
cfg = model.cfg
example = DIGITS_EXAMPLE if tokenizer.kind == "chars" else TEXT_EXAMPLE
st.sidebar.caption(f"RWKV v{cfg.version}: {cfg.n_layer} layers, width {cfg.n_embd}, vocabulary {cfg.vocab_size} "
                   f"({tokenizer.kind} tokenizer)")

with st.expander("How it works, and what each mode restores"):
    st.markdown(f"""
1. **Clean run**: the prompt, then the answer teacher-forced; the metric is the answer's probability (all its
   tokens). **Corrupted run**: the subject's tokens corrupted — Gaussian noise (GN) on their input to block 0, or
   the subject replaced by another of the same token length (STR).
2. For every prompt token *t* (rows, subject starred) and layer *l* (columns, from 1), the corrupted run once more
   with something of the clean run **restored** at *t*; the colour is the metric (samples averaged as ROME does:
   the mean of probabilities). Bright cells are where the clean information matters.
- **Block / both** (default, the RWKV paper's "states and activation"): the residual stream after block *l* at
  token *t* **and** layer *l*'s recurrent state after *t*.
- **Block / resid**: only the residual stream (ROME's hidden state): the path *up the layers* at token *t*.
- **Block / state**: only layer *l*'s recurrent state after *t* (time-mix token shift, WKV state, channel-mix
  token shift), which reaches only later tokens: the path *forward in time*.
- **Time-mix window** (Reds, ROME's attention): the time-mix output at token *t* in a window of layers centred on
  *l* (default 10, as ROME; windows inflate peaks, so compare with window 1).
- **Channel-mix window** (Greens, ROME's MLP): the same for the channel-mix output.
- **Restore v_first** (RWKV-7): layer 0's value at token *t* enters every layer; with this on it is restored in
  the layers above *l* together with the residual, otherwise the corrupted subject keeps leaking in.
- **Noise site**: *block-0 input* (after ln0, the default: RWKV renormalises its small embedding at once) or the
  raw *embedding* (ROME). The noise std is the multiple times the std of that tensor over every vocabulary row.
- **Layer ablation** (below): the clean run with one layer's output replaced (zero, a reference-text mean, or the
  corrupted run's value), or its WKV state reset after one token; bars show the change of the metric.
""")

with st.form("ct_form"):
    c1, c2, c3, c4 = st.columns([3, 2, 1, 1])
    prompt = c1.text_input("Prompt", example[0], key="ct_prompt")
    subject = c2.text_input("Subject (first occurrence in the prompt)", example[1], key="ct_subject")
    answer = c3.text_input("Answer", example[2], key="ct_answer",
                           help="Tokenised on its own: include a leading space where the vocabulary has one.")
    answer2 = c4.text_input("Second answer (optional)", example[3], key="ct_answer2",
                            help="For the logit difference logit(answer) − logit(second answer), first tokens.")
    c1, c2, c3, c4, c5 = st.columns(5)
    corruption = c1.radio("Corruption", ["noise", "replace"], key="ct_corruption", horizontal=True,
                          format_func=lambda v: {"noise": "Gaussian noise", "replace": "subject replacement"}[v])
    alt_subject = c2.text_input("Replacement subject (STR)", example[4], key="ct_alt",
                                help="Same number of tokens as the subject.")
    samples = c3.number_input("Noise samples", 1, 100, 10, key="ct_samples")
    noise = c4.number_input("Noise × embedding std", 0.0, 100.0, 3.0, step=0.5, key="ct_noise")
    seed = c5.number_input("Seed", 0, 2 ** 31 - 1, 1, key="ct_seed")
    c1, c2, c3, c4, c5 = st.columns(5)
    noise_site = c1.selectbox("Noise site", list(TR.NOISE_SITES), key="ct_site",
                              format_func=lambda v: {"resid_pre": "block-0 input (after ln0)", "embed": "embedding"}[v])
    mode = c2.selectbox("Block restore mode", list(TR.MODES), index=2, key="ct_mode",
                        format_func=lambda v: {"both": "both (resid + state)", "resid": "resid",
                                               "state": "state"}[v])
    window = c3.number_input("Window (layers)", 1, max(1, cfg.n_layer), min(10, cfg.n_layer), key="ct_window")
    v_first = c4.checkbox("Restore v_first (v7)", True, key="ct_vfirst", disabled=cfg.version != "7")
    extra = c5.multiselect("Also trace", ["resid and state separately", "window 1"], key="ct_extra")
    submitted = st.form_submit_button("Trace", type="primary")

d1, d2, _ = st.columns([2, 1, 3])
metric = d1.selectbox("Metric shown", list(TR.METRICS), key="ct_metric",
                      format_func=lambda m: {"prob": "probability (ROME)", "logprob": "log-probability (RWKV paper)",
                                             "first_prob": "first answer token's probability",
                                             "logit_diff": "logit difference", "recovery": "normalised recovery"}[m])
img_format = d2.radio("Image download", ["png", "svg"], key="ct_imgfmt", horizontal=True,
                      help="Format of the camera button in each chart's toolbar.")

settings = dict(prompt=prompt, subject=subject, answer=answer, answer2=answer2 or None, corruption=corruption,
                alt_subject=alt_subject if corruption == "replace" else None, samples=int(samples),
                noise=float(noise), noise_site=noise_site, seed=int(seed))
specs = [TR.TraceSpec("block", mode, int(window), bool(v_first)), TR.TraceSpec("att", mode, int(window), bool(v_first)),
         TR.TraceSpec("ffn", mode, int(window), bool(v_first))]
if "resid and state separately" in extra:
    specs += [TR.TraceSpec("block", m, int(window), bool(v_first)) for m in ("resid", "state") if m != mode]
if "window 1" in extra and int(window) != 1:
    specs += [TR.TraceSpec("att", mode, 1, bool(v_first)), TR.TraceSpec("ffn", mode, 1, bool(v_first))]
trace_key = (model_key, tuple(sorted(settings.items())), tuple((s.kind, s.mode, s.window, s.restore_v_first)
                                                              for s in specs))
results_store: dict = st.session_state.setdefault("ct_results", {})


def _request_stop() -> None:
    st.session_state["ct_stop"] = True


def run_trace() -> Optional[dict]:
    """Prepare and trace every spec with a progress bar; the Stop button's flag is checked between batches."""
    st.session_state["ct_stop"] = False
    stop_slot = st.empty()
    stop_slot.button("Stop", key="ct_stop_button", on_click=_request_stop)
    bar = st.progress(0.0, text="Waiting for the model…")
    with model_lock:
        start = time.perf_counter()

        def progress(done: int, total: int) -> None:
            el = time.perf_counter() - start
            left = el / done * (total - done) if done else float("nan")
            bar.progress(done / total, text=f"Tracing: {done} / {total} cells · {el:.0f} s elapsed · "
                                            f"about {left:.0f} s left")

        try:
            setup = TR.prepare_trace(model, tokenizer, **settings)
            bar.progress(0.0, text="Clean and corrupted runs done; tracing…")
            results = TR.trace_grids(setup, specs, metric="prob", progress=progress,
                                     should_stop=lambda: bool(st.session_state.get("ct_stop")))
        except RWKVInspectorError as e:
            bar.empty()
            stop_slot.empty()
            st.error(str(e))
            return None
    bar.empty()
    stop_slot.empty()
    entry = {"results": results, "setup": setup, "ablations": {}}
    results_store.clear()  # one traced prompt per session: the setup holds the cached runs
    results_store[trace_key] = entry
    return entry


entry = results_store.get(trace_key)
if submitted:
    entry = run_trace()
elif entry is None:
    if st.session_state.get("ct_stop"):
        st.warning("Stopped. Press **Trace** to start again.")
    else:
        st.info("Set the prompt, subject and answer, then press **Trace**.")

if entry is not None:
    results: list[TR.TraceResult] = entry["results"]
    setup: TR.TraceSetup = entry["setup"]
    for w in setup.warnings:
        st.warning(w)
    if not results[0].complete:
        st.warning("Stopped early: the grids are incomplete (blank cells were not computed).")
    m1, m2, m3, m4 = st.columns(4)
    lbl = lambda m: {"prob": f"p({setup.answer_text!r})", "logprob": f"log p({setup.answer_text!r})",
                     "first_prob": "p(first answer token)", "logit_diff": "logit difference",
                     "recovery": "recovery"}[m]
    m1.metric(f"clean {lbl(metric)}", f"{setup.clean.get(metric, 1.0):.4g}" if metric != "recovery" else "1")
    m2.metric(f"corrupted {lbl(metric)}", f"{setup.corrupt.get(metric, 0.0):.4g}" if metric != "recovery" else "0")
    m3.metric("subject tokens", f"{setup.subject[0]}…{setup.subject[1] - 1}")
    m4.metric("noise std" if setup.corruption == "noise" else "replacement",
              f"{setup.noise * setup.sigma:.3g}" if setup.corruption == "noise" else str(setup.alt_subject))
    if metric == "logit_diff" and not setup.answer2_ids:
        st.info("The logit difference needs a second answer; the grids are blank.")
    for i, res in enumerate(results):
        name = {"block": f"State ({res.mode})", "att": f"Time-mix window {res.window}",
                "ffn": f"Channel-mix window {res.window}"}[res.kind]
        shown = res.with_metric(metric)
        fig = FT.trace_heatmap(shown)
        fname = f"causal_trace_{res.kind}_{res.mode if res.kind == 'block' else f'w{res.window}'}_{metric}"
        st.subheader(name)
        st.plotly_chart(fig, key=f"ct_fig_{i}", config=FT.image_config(fname, img_format))
        npz = io.BytesIO()
        shown.to_npz(npz)
        b1, b2, _ = st.columns([1, 1, 4])
        b1.download_button("Grid (CSV)", shown.to_csv(), file_name=fname + ".csv", mime="text/csv",
                           key=f"ct_csv_{i}", on_click="ignore")
        b2.download_button("Grid (npz)", npz.getvalue(), file_name=fname + ".npz",
                           mime="application/octet-stream", key=f"ct_npz_{i}", on_click="ignore")

    st.subheader("Layer ablation")
    a1, a2, a3, a4 = st.columns([1, 1, 1, 3])
    target = a1.selectbox("Ablate", list(TR.ABLATION_TARGETS), key="ct_abl_target",
                          format_func=lambda v: {"block": "whole block output", "att": "time-mix output",
                                                 "ffn": "channel-mix output", "state": "WKV state (reset)"}[v])
    repl_options = ["zero", "mean", "corrupt"]
    replacement = a2.selectbox("Replace with", repl_options, key="ct_abl_repl",
                               format_func=lambda v: {"zero": "zero", "mean": "reference-text mean",
                                                      "corrupt": "corrupted run's value"}[v])
    reset_token = a3.number_input("Reset after token", 0, setup.T - 1, setup.subject[1] - 1, key="ct_abl_token",
                                  disabled=target != "state", help="For the state reset: the token after which "
                                                                   "the layer's WKV state is reset.")
    reference = a4.text_input("Reference text (mean ablation)", example[5], key="ct_abl_ref",
                              disabled=replacement != "mean")
    abl_key = (target, replacement, int(reset_token), reference if replacement == "mean" else None)
    abl = entry["ablations"].get(abl_key)
    if abl is None:
        try:
            ref_ids = list(tokenizer.encode(reference).ids) if replacement == "mean" else None
            with model_lock, st.spinner("Ablating every layer…"):
                abl = TR.ablate_layers(setup, target, replacement, reference_tokens=ref_ids,
                                       reset_token=int(reset_token))
            entry["ablations"][abl_key] = abl
        except RWKVInspectorError as e:
            st.error(str(e))
    if abl is not None:
        abl_metric = metric if metric in abl.delta else "prob"
        st.plotly_chart(FT.ablation_bars(abl, abl_metric), key="ct_abl_fig",
                        config=FT.image_config(f"layer_ablation_{target}_{replacement}_{abl_metric}", img_format))
        st.caption("Noising: the clean run with one layer ablated at every token (the state reset: after one "
                   "token); the bar is the change of the metric at the answer. Negative = the layer is needed.")
