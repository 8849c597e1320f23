"""Patching page: activation patching between a clean and a corrupted prompt (exact and attribution patching side
by side), and moving the recurrent state from one prompt into another (transplant and steering), computed by
`rwkv_core.analysis.patching` and drawn by `rwkv_core.figures.patching`.

The clean prompt is the sidebar's (in compare mode each run's prompt, or each model, is patched with the same
corrupted prompt, answers and settings, side by side). Attribution patching estimates every cell at once (one
forward on each prompt, one backward); exact patching runs every cell of a short prompt, and on a long prompt
(more than `EXACT_FULL_TOKENS` tokens) only the tokens the user lists. The work runs in the server under the work
gate, like the other views' forwards; results are kept in `st.session_state["pt_results"]` keyed by (model,
prompt, settings), so a display option redraws without recomputing. Settings are in the URL (pt_*).
`render` reads as its sections: settings form, the alignment, results per run, state transplant and steering.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import pandas as pd
import streamlit as st

from inspector_ui.session import PageContext, Run, bind, publish
from inspector_ui.widgets import csv_bytes, gated, run_columns
from rwkv_core.analysis import patching as PA
from rwkv_core.analysis.patching.attribution import atp_grids
from rwkv_core.analysis.tracing.subset import parse_positions
from rwkv_core.errors import InputError, RWKVInspectorError
from rwkv_core.figures import patching as FP
from rwkv_core.figures.common import IMAGE_FORMATS, image_config

ABOUT = ("Which token and layer carry a fact from one prompt into another? Patch the clean run's residual stream, "
         "time-mix or channel-mix output, or recurrent state into a corrupted prompt, exactly and by attribution "
         "patching; and move the memory itself: run a prompt from the state another one left. The clean prompt is "
         "the sidebar's.")
EXACT_FULL_TOKENS = 48  # beyond this many clean tokens, exact patching runs only on the tokens listed
# corrupted prompt and counter answer for a clean prompt holding one of these subjects (the demo models' facts)
PAIR_EXAMPLES = {"The Eiffel Tower": ("The Colosseum", " Rome"), "Big Ben": ("The Kremlin", " Moscow")}
SITE_NAMES = {"resid": "residual stream", "att": "time-mix output", "ffn": "channel-mix output",
              "state": "recurrent state"}
ALIGN_NAMES = {"end": "from the end", "spans": "by marked spans"}
URL_KEYS = ("pt_corrupt", "pt_answer", "pt_counter", "pt_align", "pt_cspan", "pt_rspan", "pt_tokens", "pt_imgfmt",
            "pt_a", "pt_b", "pt_layers", "pt_heads", "pt_c", "pt_pos", "pt_alpha")

HOW_IT_WORKS = r"""
**Patching (denoising).** The corrupted prompt runs again with one value of the clean run written in; the metric
is the logit difference at the last token, $LD = \text{logit}(\text{answer}) - \text{logit}(\text{counter})$,
normalised $(LD - LD_\text{corrupted}) / (LD_\text{clean} - LD_\text{corrupted})$: **0 = the corrupted run, 1 =
the clean run** (Zhang & Nanda 2024). Answers that start alike (the space of a byte model) have their shared start
read after both prompts; LD compares their first different tokens. Rows are the clean prompt's tokens, columns
layers from 0.
- **Residual stream**: the output of block *l* at token *t*. **Time-mix / channel-mix output**: that module's
  output at *t* in layer *l* alone. **Recurrent state**: layer *l*'s state after token *t* (WKV state and both
  token shifts), which reaches only later tokens. RWKV-7's v_first is not patched with the residual.
- **Alignment**: clean token *t* is written at the corrupted token aligned with it, from the prompts' ends, or by
  a span marked in each (the subject): before, inside and after the spans each aligned from its end. Clean tokens
  without a partner stay blank.
- **Attribution patching (AtP)**: $LD_\text{corrupted} + \nabla_a LD \cdot (a_\text{clean} - a_\text{corrupted})$
  for every cell at once, the gradient taken at the corrupted run (one forward on each prompt, one backward, and
  one pass per layer for the state). A first-order estimate: it misses saturation (a cell that alone restores
  everything), so it is shown beside exact patching with their correlation and the cells where they disagree most.
- **Exact patching** runs every cell of a prompt up to 48 tokens, one patched run per cell (the tokens before the
  patched one reused); on a longer prompt it runs on the tokens you list.

**State transplant.** Prompt B runs from the state prompt A left (every layer, chosen layers, or the WKV state of
chosen heads) instead of the empty state; the bars show how each next-token prediction of B changes,
$KL(p_\text{edited} \| p_\text{base})$. All layers = A followed by B as one prompt.
**Steering.** $\alpha (S_A - S_B)$ added to the state of prompt C after one of its tokens (S: the state a prompt
leaves after its last token).
"""


# ------------------------------------------------------------------------------------------------ settings


def default_pair(run: Run) -> tuple[str, str, str]:
    """(corrupted prompt, answer, counter) for the run's prompt: a known fact's pair, else the registry's tracing
    answer with the corrupted prompt left to the user."""
    ex = run.loaded.entry.tracing or {}
    for subject, (alt, counter) in PAIR_EXAMPLES.items():
        if subject in run.prompt:
            answer = ex.get("answer") if ex.get("prompt") == run.prompt else None
            return run.prompt.replace(subject, alt, 1), answer or " Paris", counter
    return "", ex.get("answer", "") if ex.get("prompt") == run.prompt else "", ""


def bind_settings(run: Run) -> None:
    """Seed every setting from the URL once per session; the pair follows run A's model and prompt."""
    key = (run.model_key[0], run.prompt)
    if st.session_state.get("pt_defaults_for") != key:
        from_url = "pt_defaults_for" not in st.session_state and st.query_params.get("pt_corrupt") is not None
        if not from_url:
            corrupt, answer, counter = default_pair(run)
            st.session_state["pt_corrupt"], st.session_state["pt_answer"] = corrupt, answer
            st.session_state["pt_counter"] = counter
            span = next((s for s in PAIR_EXAMPLES if s in run.prompt), "")
            st.session_state["pt_cspan"] = span
            st.session_state["pt_rspan"] = PAIR_EXAMPLES[span][0] if span else ""
        st.session_state["pt_defaults_for"] = key
    for k in ("pt_corrupt", "pt_answer", "pt_counter", "pt_cspan", "pt_rspan", "pt_tokens", "pt_a", "pt_b", "pt_c",
              "pt_layers", "pt_heads"):
        bind(k, "")
    bind("pt_align", "spans" if st.session_state.get("pt_cspan") else "end", options=PA.ALIGNMENTS)
    chosen = url_sites()
    for site in PA.SITES:  # one checkbox per site, seeded from pt_sites once per session
        key = f"pt_site_{site}"
        st.session_state[key] = bool(st.session_state.get(key, site in chosen))
    bind("pt_imgfmt", "png", options=IMAGE_FORMATS)
    bind("pt_pos", 0, int, bounds=(0, 10 ** 6))
    bind("pt_alpha", 1.0, float, bounds=(-100.0, 100.0))


def url_sites() -> list[str]:
    """The sites in the URL (pt_sites=resid|state), every site when absent or none valid."""
    raw = st.query_params.get("pt_sites") or ""
    return [s for s in raw.split("|") if s in PA.SITES] or list(PA.SITES)


def parse_tokens(text: str, T: int) -> Optional[list[int]]:
    """The clean token positions listed ("3, 7, 10-12"); None for an empty text (every token). One line on a
    position outside the prompt or a malformed list (`tracing.parse_positions`)."""
    return parse_positions(text, T, "the clean prompt")


def parse_ints(text: str, what: str) -> Optional[list[int]]:
    """Layers or heads as "0, 2, 5" (None for an empty text: all layers / the whole state)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"list {what} as numbers separated by commas, e.g. 0, 2, not {text!r}") from None


@dataclass
class PatchRequest:
    """What the settings form asks for, and the key of each run's results."""

    settings: dict
    sites: tuple
    tokens_text: str
    keys: list[tuple]
    submitted: bool
    img_format: str


# ------------------------------------------------------------------------------------------------ work


def compute(run: Run, settings: dict, sites: tuple, tokens_text: str) -> dict:
    """One run's patching, holding the work gate: the pair, AtP of every cell and exact patching of every cell
    (short prompt) or of the listed tokens. {"atp", "exact", "alignment", "tokens"} or {"error"} (one line)."""
    lm = run.loaded
    try:
        def work():
            pair = PA.prepare_pair(lm.model, lm.tokenizer, run.prompt, **settings)
            tokens = parse_tokens(tokens_text, pair.Tc)
            if tokens is None and pair.Tc > EXACT_FULL_TOKENS:
                tokens = default_exact_tokens(pair)
            atp = atp_grids(pair, sites)
            exact = PA.patch_grids(pair, sites, tokens=tokens)
            rows = alignment_rows(pair)
            return {"atp": atp, "exact": exact, "alignment": rows, "tokens": tokens}

        with st.spinner("Patching: the clean and corrupted runs, attribution patching, then the exact cells…"):
            return gated(work, "Patching")
    except RWKVInspectorError as e:
        return {"error": (str(e).splitlines() or ["error"])[0]}


def default_exact_tokens(pair: PA.PatchPair) -> list[int]:
    """A long prompt's exact tokens when none are listed: the marked clean span, the last token and four in
    between (what usually carries the fact)."""
    T = pair.Tc
    span = pair.alignment.clean_span or (T - 1, T - 1)
    picks = set(range(*span)) | {T - 1} | {int(round(x)) for x in [T * f for f in (0.2, 0.4, 0.6, 0.8)]}
    return sorted(t for t in picks if 0 <= t < T and pair.alignment.clean_to_corrupt[t] >= 0)


def alignment_rows(pair: PA.PatchPair) -> list[dict]:
    """The alignment as table rows: clean index and token, corrupted index and token (empty where unpartnered)."""
    lc, lr = pair.token_labels("clean"), pair.token_labels("corrupt")
    return [{"clean #": t, "clean token": lc[t], "corrupted #": p if p >= 0 else None,
             "corrupted token": lr[p] if p >= 0 else ""} for t, p in enumerate(pair.alignment.clean_to_corrupt)]


# ------------------------------------------------------------------------------------------------ page


NEEDS_MODEL = ("Patching needs a live model: it runs the model again on two prompts. Choose **Source: model** in "
               "the sidebar.")


def render(ctx: PageContext) -> None:
    """The Patching page below the shared sidebar."""
    runs = ctx.runs
    if not all(r.has_model for r in runs):
        st.info(NEEDS_MODEL)
        return
    with st.expander("How it works: the metric, the sites, attribution patching, the state experiments"):
        st.markdown(HOW_IT_WORKS)
    request = settings_section(runs)
    store: dict = st.session_state.setdefault("pt_results", {})
    for key in [k for k in store if k not in request.keys]:  # results not shown any more
        del store[key]
    cols = run_columns(len(runs))
    for col, run, key in zip(cols, runs, request.keys):
        with col:
            if ctx.compare:
                st.markdown(f"**{run.title}** · `{run.prompt}`")
            if request.submitted:
                store[key] = compute(run, request.settings, request.sites, request.tokens_text)
            entry = store.get(key)
            if entry is None:
                st.info("Set the corrupted prompt and the two answers (the clean prompt is the sidebar's), then "
                        "press **Patch**.")
            elif "error" in entry:
                st.error(entry["error"])
            else:
                show_results(entry, run.label, request.img_format, ctx.compare)
    state_section(runs, request.img_format)


def settings_section(runs: list[Run]) -> PatchRequest:
    """The patching form (bound to the URL) and the image format; what they ask for."""
    bind_settings(runs[0])
    with st.form("pt_form"):
        corrupt = st.text_area("Corrupted prompt", key="pt_corrupt", height=80,
                               help="The clean prompt with the fact changed, e.g. another subject.")
        c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1, 1])
        answer = c1.text_input("Answer (clean)", key="pt_answer",
                               help="The text that follows the clean prompt, e.g. ' Paris' (with its space).")
        counter = c2.text_input("Counter answer (corrupted)", key="pt_counter", help="e.g. ' Rome'.")
        align_by = c3.radio("Align", list(PA.ALIGNMENTS), key="pt_align", format_func=ALIGN_NAMES.get)
        cspan = c4.text_input("Clean span", key="pt_cspan", help="With alignment by spans: e.g. the subject.")
        rspan = c5.text_input("Corrupted span", key="pt_rspan", help="Its counterpart in the corrupted prompt.")
        c1, c2 = st.columns([3, 2])
        c1.caption("Sites")
        sites = [s for col, s in zip(c1.columns(len(PA.SITES)), PA.SITES)
                 if col.checkbox(SITE_NAMES[s], key=f"pt_site_{s}")]
        tokens_text = c2.text_input(
            "Exact patching on tokens (clean positions)", key="pt_tokens",
            help=f"Empty: every token up to {EXACT_FULL_TOKENS} tokens; on a longer prompt the marked span, the "
                 "last token and four in between. Or list them: 3, 7, 10-12. AtP always covers every cell.")
        submitted = st.form_submit_button("Patch", type="primary", key="pt_patch")
    img_format = st.radio("Image download", list(IMAGE_FORMATS), key="pt_imgfmt", horizontal=True,
                          help="Format of the camera button in each chart's toolbar.")
    st.query_params["pt_sites"] = "|".join(sites)
    publish(*URL_KEYS)
    settings = dict(corrupt=corrupt, answer=answer, counter=counter, align_by=align_by,
                    clean_span=cspan or None, corrupt_span=rspan or None)
    if submitted and not sites:
        st.error("Choose at least one site to patch.")
        submitted = False
    keys = [(run.model_key, run.prompt, tuple(sorted(settings.items())), tuple(sites), tokens_text) for run in runs]
    return PatchRequest(settings, tuple(sites), tokens_text, keys, submitted, img_format)


def show_results(entry: dict, label: str, img_format: str, narrow: bool) -> None:
    """Baselines, the alignment, and per site AtP beside exact with their agreement, and the downloads."""
    atp: PA.PatchResult = entry["atp"]
    exact: PA.PatchResult = entry["exact"]
    for w in atp.warnings:
        st.warning(w)
    m1, m2, m3 = st.columns(3)
    m1.metric("LD clean", f"{atp.clean_value:.4g}")
    m2.metric("LD corrupted", f"{atp.corrupt_value:.4g}")
    m3.metric("tokens (clean / corrupted)", f"{len(atp.clean_labels)} / {len(atp.corrupt_labels)}")
    if entry["tokens"] is not None:
        st.caption(f"Exact patching on tokens {', '.join(map(str, entry['tokens']))}; AtP on every cell "
                   f"(AtP {atp.seconds:.1f} s, exact {exact.seconds:.1f} s).")
    else:
        st.caption(f"AtP {atp.seconds:.1f} s, exact {exact.seconds:.1f} s.")
    with st.expander(f"Alignment ({atp.settings['alignment']['how']})"):
        st.dataframe(pd.DataFrame(entry["alignment"]), hide_index=True, width="stretch")
    suffix = "" if label == "A" else f"_{label}"
    for site in atp.sites:
        st.subheader(FP.SITE_TITLES[site])
        c1, c2 = (st.container(), st.container()) if narrow else st.columns(2)
        for col, res in ((c1, atp), (c2, exact)):
            fname = f"patching_{site}_{res.method}{suffix}"
            col.plotly_chart(FP.patch_heatmap(res, site), key=f"pt_fig_{label}_{site}_{res.method}",
                             config=image_config(fname, img_format))
        r, n, worst = FP.agreement(atp, exact, site)
        st.caption(f"AtP against exact over {n} cells: correlation r = {r:.3f}.")
        if worst:
            st.dataframe(pd.DataFrame([{"token": f"{t}: {atp.clean_labels[t]}", "layer": l, "exact": e, "AtP": a,
                                        "AtP − exact": a - e} for t, l, e, a in worst]),
                         hide_index=True, width="stretch")
        with st.expander("AtP against exact, every cell"):
            st.plotly_chart(FP.atp_vs_exact_scatter(atp, exact, site), key=f"pt_scatter_{label}_{site}",
                            config=image_config(f"patching_{site}_atp_vs_exact{suffix}", img_format))
    d1, d2, d3, d4 = st.columns(4)
    for col, res in ((d1, atp), (d2, exact)):
        col.download_button(f"{res.method} grids (CSV)", lambda res=res: res.to_csv(),
                            file_name=f"patching_{res.method}{suffix}.csv", mime="text/csv", on_click="ignore",
                            key=f"pt_csv_{label}_{res.method}")
    for col, res in ((d3, atp), (d4, exact)):
        col.download_button(f"{res.method} grids (npz)", lambda res=res: _npz(res),
                            file_name=f"patching_{res.method}{suffix}.npz", mime="application/octet-stream",
                            on_click="ignore", key=f"pt_npz_{label}_{res.method}")


def _npz(res: PA.PatchResult) -> bytes:
    buf = io.BytesIO()
    res.to_npz(buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ state experiments


def state_section(runs: list[Run], img_format: str) -> None:
    """State transplant (B from A's state) and steering (alpha x (S_A - S_B) into C), on run A's model."""
    run = runs[0]
    st.header("State transplant and steering")
    if not st.session_state.get("pt_a"):
        st.session_state["pt_a"] = run.prompt
    if not st.session_state.get("pt_b"):
        st.session_state["pt_b"] = st.session_state.get("pt_corrupt") or run.prompt
    if not st.session_state.get("pt_c"):
        st.session_state["pt_c"] = run.prompt
    with st.form("pt_state_form"):
        c1, c2 = st.columns(2)
        a = c1.text_area("Prompt A (whose state is moved)", key="pt_a", height=70)
        b = c2.text_area("Prompt B (runs from A's state)", key="pt_b", height=70)
        c1, c2 = st.columns(2)
        layers = c1.text_input("Layers (empty: all)", key="pt_layers", help="e.g. 0, 2")
        heads = c2.text_input("Heads (empty: the whole state)", key="pt_heads",
                              help="Only these heads' WKV state is moved (not the token shifts).")
        c1, c2, c3 = st.columns([3, 1, 1])
        c = c1.text_input("Prompt C (steered)", key="pt_c")
        pos = c2.number_input("After token", 0, 10 ** 6, key="pt_pos")
        alpha = c3.number_input("alpha", -100.0, 100.0, step=0.5, key="pt_alpha")
        b1, b2, _ = st.columns([1, 1, 4])
        do_transplant = b1.form_submit_button("Transplant", type="primary", key="pt_transplant")
        do_steer = b2.form_submit_button("Steer", key="pt_steer")
    publish(*URL_KEYS)
    store = st.session_state.setdefault("pt_state_results", {})
    lm = run.loaded
    key = (run.model_key, a, b, layers, heads, c, int(pos), float(alpha))
    try:
        if do_transplant or do_steer:
            enc = lambda text: list(lm.tokenizer.encode(text).ids)  # noqa: E731
            L, H = parse_ints(layers, "layers"), parse_ints(heads, "heads")
            if do_transplant:
                store[("transplant",) + key] = gated(lambda: PA.transplant(lm.model, lm.tokenizer, enc(a), enc(b),
                                                                           layers=L, heads=H), "Transplanting")
            else:
                store[("steer",) + key] = gated(lambda: PA.steer(lm.model, lm.tokenizer, enc(c), int(pos),
                                                                 float(alpha), enc(a), enc(b), layers=L, heads=H),
                                                "Steering")
    except RWKVInspectorError as e:
        st.error((str(e).splitlines() or ["error"])[0])
    for what in ("transplant", "steer"):
        res = store.get((what,) + key)
        if res is None:
            continue
        st.subheader("B from A's state" if what == "transplant" else f"C steered by {alpha:g} × (A − B)")
        c1, c2 = st.columns(2)
        c1.plotly_chart(FP.kl_figure(res), key=f"pt_kl_{what}", config=image_config(f"state_{what}_kl", img_format))
        c2.plotly_chart(FP.top_predictions_figure(res, lm.tokenizer.display), key=f"pt_top_{what}",
                        config=image_config(f"state_{what}_top", img_format))
        st.download_button(f"Predictions per position (CSV)", lambda res=res: res.changes_csv(lm.tokenizer),
                           file_name=f"state_{what}.csv", mime="text/csv", on_click="ignore", key=f"pt_dl_{what}")

