"""Causal tracing page: ROME's causal trace for RWKV (the RWKV paper's "information propagation" figure) and layer
ablation, computed by `rwkv_core.analysis.tracing` and drawn by `rwkv_core.figures.tracing`.

Model and prompt come from the shared sidebar (`inspector_ui.sidebar.page_setup`): a model by registry name, never by
path, and the prompt traced is the sidebar prompt of each run, so compare mode (prompt or model) traces both runs
with the same subject, answer and settings, side by side. The subject and answer default to the registry entry's
tracing example when its prompt is the run's prompt, otherwise to the prompt's first word and the model's greedy
next token. The heavy work (clean/corrupted runs, the grids, the ablations) runs as jobs on Ray workers
(`rwkv_core.jobs`, through `inspector_ui.resources.get_jobs`), never in the server process: the page shows each
trace's cost first (cells, time at this model's measured speed, peak memory against the job budget), refuses one that
cannot fit with one line, asks before one past the confirmation threshold (and on such a long prompt offers the
proposed tokens or attribution patching first, `long_prompt_choices`), then follows the jobs with progress bars
and a Stop button (a rerun leaves them running; the next run follows them again). Results are kept in `st.session_state["ct_results"]` keyed by (model, prompt, settings), so
changing only a display option (metric, image format) redraws without recomputing. Settings are in the URL (ct_*).
`render` reads as its sections: settings form, cost, the jobs (progress and Stop), results per run, ablation.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from inspector_ui import settings as app_settings
from inspector_ui.resources import get_jobs, model_spec, warm_jobs
from inspector_ui.session import PageContext, Run, bind, greedy_tokens, publish, qp_get
from inspector_ui.widgets import duration_text, gated, hours_minutes, progress_text, run_columns, url_bool
from rwkv_core.jobs import cost as COST
from rwkv_core.jobs.specs import AblationJob, TraceJob
from rwkv_core.figures import tracing as FT
from rwkv_core.figures.common import IMAGE_FORMATS, image_config
from rwkv_core.analysis import tracing as TR
from rwkv_core.errors import RWKVInspectorError

# Character tokenizers of the reverse-digits model: the engine's ("chars") and the registry's ("digits").
CHAR_KINDS = ("chars", "digits")
# (alternative subject, reference text for mean ablation)
DIGITS_EXAMPLE = ("7", "1234567890,0987654321#80,08#")
TEXT_EXAMPLE = ("The Colosseum", "The quick brown fox jumps over the lazy dog. Paris is the capital of France.")
# Replacement subjects offered for subject replacement, landmarks of many lengths: the first that takes the subject's
# tokens in place is the default (`TR.suggest_replacement`).
REPLACEMENT_SUBJECTS = ("The Colosseum", "The Space Needle", "Big Ben", "The Kremlin", "Times Square",
                        "The Great Wall", "Buckingham Palace", "Niagara Falls", "The Golden Gate Bridge",
                        "The Statue of Liberty", "The Empire State Building", "Mount Everest", "Stonehenge")
EXTRAS = ["resid and state separately", "window 1"]
ABOUT = ("Where does the subject of a prompt reach the answer: up the layers at one token, or forward in time "
         "through the recurrent state? ROME's causal trace (Meng et al. 2022) as in the RWKV paper's "
         "information-propagation figure, with the RWKV-specific restore modes. The prompt is the sidebar's.")
METRIC_NAMES = {"prob": "probability (ROME)", "logprob": "log-probability (RWKV paper)",
                "first_prob": "first answer token's probability", "logit_diff": "logit difference",
                "recovery": "normalised recovery"}

ABLATION_TARGET_NAMES = {"block": "whole block output", "att": "time-mix output", "ffn": "channel-mix output",
                         "state": "WKV state (reset)"}
REPLACEMENT_NAMES = {"zero": "zero", "mean": "reference-text mean", "corrupt": "corrupted run's value"}


def is_char_tokenizer(tokenizer) -> bool:
    return getattr(tokenizer, "kind", None) in CHAR_KINDS


# ------------------------------------------------------------------------------------------------ defaults


def _greedy_answer(run: Run) -> str:
    """The model's greedy continuation of the prompt as text: one token, or two where one token alone is not
    text that tokenises back to itself (a byte of a multi-byte character, half a UTF-16 code unit)."""
    tok = run.loaded.tokenizer
    try:
        for n in (1, 2):  # a second token only where the first alone is not text
            got = greedy_tokens(run.model_key, tuple(run.tokens), n)
            text = tok.decode(got)
            try:
                if text and list(tok.encode(text).ids) == got:
                    return text
            except RWKVInspectorError:
                pass
        return tok.decode(got[:1])
    except RWKVInspectorError:
        return ""


def default_subject_answer(run: Run) -> tuple[str, str]:
    """The registry's tracing example when it is for this prompt, otherwise the first word of the prompt and the
    model's greedy next token."""
    ex = run.loaded.entry.tracing or {}
    if ex.get("prompt") == run.prompt and ex.get("subject") and ex.get("answer"):
        return ex["subject"], ex["answer"]
    words = run.prompt.split()
    return (words[0] if words else run.prompt), _greedy_answer(run)


def default_replacement(run: Run, subject: str) -> str:
    """A replacement subject that takes this subject's tokens in place on the run's tokenizer (a landmark of the
    right length, a run of sevens for the digits model, other ids for a model typed as ids), so subject replacement
    works as offered; the page's example where none fits (the subject is not in the prompt)."""
    tok = run.loaded.tokenizer
    example = DIGITS_EXAMPLE[0] if is_char_tokenizer(tok) else TEXT_EXAMPLE[0]
    candidates = (example * max(1, len(subject)),) if is_char_tokenizer(tok) else REPLACEMENT_SUBJECTS
    return TR.suggest_replacement(tok, run.prompt, subject, candidates) or example


def _bind_extras() -> None:
    if "ct_extra" not in st.session_state:
        raw = qp_get("ct_extra", "") or ""
        st.session_state["ct_extra"] = [x for x in EXTRAS if x in raw.split("|")]
    else:
        st.session_state["ct_extra"] = [x for x in st.session_state["ct_extra"] if x in EXTRAS]


def _publish_extras() -> None:
    v = "|".join(st.session_state.get("ct_extra") or [])
    if not v:
        st.query_params.pop("ct_extra", None)
    elif st.query_params.get("ct_extra") != v:
        st.query_params["ct_extra"] = v


def bind_settings(runs: list[Run], n_layer: int) -> None:
    """Seed every setting from the URL once per session; the subject and answer follow run A's model and prompt
    (new defaults when either changes)."""
    a = runs[0]
    ex_key = (a.model_key[0], a.prompt)
    if "ct_subject" not in st.session_state or "ct_answer" not in st.session_state:
        from_url = qp_get("ct_subject") is not None and qp_get("ct_answer") is not None
        subj, ans = ("", "") if from_url else default_subject_answer(a)
        bind("ct_subject", subj)
        bind("ct_answer", ans)
        st.session_state["ct_defaults_for"] = ex_key
    elif st.session_state.get("ct_defaults_for") != ex_key:
        st.session_state["ct_subject"], st.session_state["ct_answer"] = default_subject_answer(a)
        st.session_state["ct_alt"] = default_replacement(a, st.session_state["ct_subject"])
        st.session_state["ct_defaults_for"] = ex_key
    else:
        bind("ct_subject", "")
        bind("ct_answer", "")
    example = DIGITS_EXAMPLE if is_char_tokenizer(a.loaded.tokenizer) else TEXT_EXAMPLE
    bind("ct_answer2", "")
    bind("ct_corruption", "noise", options=("noise", "replace"))
    if "ct_alt" not in st.session_state and qp_get("ct_alt") is None:
        st.session_state["ct_alt"] = default_replacement(a, st.session_state["ct_subject"])
    bind("ct_alt", example[0])
    bind("ct_samples", 10, int, bounds=(1, 100))
    bind("ct_noise", 3.0, float, bounds=(0.0, 100.0))
    bind("ct_seed", 1, int, bounds=(0, 2 ** 31 - 1))
    bind("ct_site", "resid_pre", options=tuple(TR.NOISE_SITES))
    bind("ct_mode", "both", options=TR.MODES)
    bind("ct_window", TR.default_window(n_layer), int, bounds=(1, max(1, n_layer)))
    bind("ct_vfirst", True, url_bool)
    _bind_extras()
    bind("ct_metric", "prob", options=TR.METRICS)
    bind("ct_imgfmt", "png", options=IMAGE_FORMATS)
    bind("ct_abl_target", "block", options=TR.ABLATION_TARGETS)
    bind("ct_abl_repl", "zero", options=tuple(REPLACEMENT_NAMES))
    if "ct_abl_ref" not in st.session_state:
        st.session_state["ct_abl_ref"] = example[1]
    else:
        st.session_state["ct_abl_ref"] = st.session_state["ct_abl_ref"]


URL_KEYS = ("ct_subject", "ct_answer", "ct_answer2", "ct_corruption", "ct_alt", "ct_samples", "ct_noise", "ct_seed",
            "ct_site", "ct_mode", "ct_window", "ct_vfirst", "ct_metric", "ct_imgfmt", "ct_abl_target", "ct_abl_repl")


# ------------------------------------------------------------------------------------------------ work


def _one_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def session_user() -> str:
    """Whose jobs these are, for the fair queue: this browser session."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def _speed(run: Run, rows: int) -> COST.Speed:
    """This model's measured speed on its device (once per model and batch size), holding the work gate: the
    forward runs on the shared model object."""
    return gated(lambda: COST.measure_speed(run.loaded.model, rows=rows), "Measuring the model's speed",
                 show_waiting=False)


@dataclass
class RunPlan:
    """A run's prompt as a trace sees it before any job: T prompt tokens, the subject's tokens [s0, s1), K answer
    tokens, n noise rows, the token labels, the measured speed, and the cost of the full grid."""

    T: int
    subject: tuple[int, int]
    K: int
    n: int
    labels: list[str]
    speed: COST.Speed
    full: COST.JobCost

    def subset_cost(self, run: Run, specs: list, tokens: list[int]) -> COST.JobCost:
        """The cost of tracing only the rows `tokens` (`COST.estimate_trace` with tokens)."""
        return COST.estimate_trace(run.loaded.model, self.T, self.K, self.subject[0], self.n, specs,
                                   app_settings.job_memory_bytes(run.loaded.device), self.speed,
                                   subject_tokens=self.subject[1] - self.subject[0],
                                   threads=app_settings.job_threads(), tokens=tokens)

    def atp_cost(self, run: Run, specs: list) -> COST.JobCost:
        """The cost of attribution patching every cell (`COST.estimate_atp_trace`)."""
        return COST.estimate_atp_trace(run.loaded.model, self.T, self.K, self.n, specs,
                                       app_settings.job_memory_bytes(run.loaded.device), self.speed,
                                       subject_tokens=self.subject[1] - self.subject[0],
                                       threads=app_settings.job_threads())


def plan_run(run: Run, settings: dict, specs: list) -> Optional[RunPlan]:
    """The trace's plan on this run: its tokens, subject and the full grid's cost (cells, time, peak memory against
    the job budget); None while the subject or answer is not usable (the job would say why)."""
    tok = run.loaded.tokenizer
    try:
        enc = tok.encode(run.prompt)
        (s0, s1), _chars = TR.locate_subject(enc, settings["subject"])
        K = len(tok.encode(settings["answer"]).ids) if settings["answer"] else 0
    except RWKVInspectorError:
        return None
    if K == 0 or len(enc) == 0:
        return None
    n = int(settings["samples"]) if settings["corruption"] == "noise" else 1
    speed = _speed(run, max(1, min(n, 8)))
    full = COST.estimate_trace(run.loaded.model, len(enc), K, s0, n, specs,
                               app_settings.job_memory_bytes(run.loaded.device), speed, subject_tokens=s1 - s0,
                               threads=app_settings.job_threads())
    labels = [tok.display(int(i)) for i in enc.ids]
    return RunPlan(len(enc), (s0, s1), K, n, labels, speed, full)


def cost_line(cost: COST.JobCost, device: str) -> str:
    return (f"{cost.cells:,} cells · about {duration_text(cost.seconds)} on {device} · "
            f"peak memory about {cost.peak_bytes / COST.GB:.1f} GB of the {cost.budget_bytes / COST.GB:.1f} GB "
            "job budget")


def trace_job(run: Run, settings: dict, specs: list, cost: Optional[COST.JobCost],
              tokens: Optional[list[int]] = None, method: str = "fast") -> TraceJob:
    """The job of one run: every row, the rows `tokens`, or attribution patching (method "atp"), with its cost's
    memory per batch of cells (per group of noise rows for attribution patching)."""
    budget = cost.batch_bytes if cost is not None else TR.DEFAULT_MEMORY_BUDGET
    return TraceJob(model_spec(run.loaded), run.prompt, tuple(sorted(settings.items())), tuple(specs), int(budget),
                    None if tokens is None else tuple(int(t) for t in tokens), method)


def _jobs_of_session() -> dict:
    return st.session_state.setdefault("ct_jobs", {})  # results key -> (job id, TraceJob)


def _request_stop() -> None:
    """Stop every trace of this session (the workers stop after their batch in hand; the cells done are kept)."""
    st.session_state["ct_stop"] = True
    jobs = get_jobs()
    for jid, _job in _jobs_of_session().values():
        jobs.cancel(jid)


def start_traces(runs: list[Run], request: "TraceRequest", costs: list) -> None:
    """Queue one trace job per run (a new press replaces the run's earlier job and result)."""
    jobs = get_jobs()
    pending = _jobs_of_session()
    store: dict = st.session_state.setdefault("ct_results", {})
    st.session_state["ct_stop"] = False
    for run, key, cost, tokens in zip(runs, request.keys, costs, request.tokens):
        if key in pending:
            jobs.forget(pending.pop(key)[0])
        store.pop(key, None)
        job = trace_job(run, request.settings, request.specs, cost, tokens,
                        "atp" if request.scope == "atp" else "fast")
        try:
            pending[key] = (jobs.submit(session_user(), job, f"trace {run.label}"), job)
        except RWKVInspectorError as e:
            store[key] = {"error": _one_line(e)}


def entry_from_outcome(run: Run, settings: dict, job: TraceJob, outcome) -> dict:
    """What the page keeps of a finished trace job: {"results", "job", "ablations"}, or {"warning"} for a replacement
    subject of the wrong length, or {"error"} (one line)."""
    if outcome.warning:
        message = outcome.warning
        return {"warning": f"{message[:1].upper()}{message[1:]}; for example "
                           f"{default_replacement(run, settings['subject'])!r}."}
    if outcome.error:
        return {"error": outcome.error[:1].upper() + outcome.error[1:]}
    return {"results": outcome.value, "job": job, "ablations": {}}


def follow_traces(runs: list[Run], cols: list, request: "TraceRequest") -> None:
    """Progress bars (cells, time left, place in line) and one Stop button while this session's trace jobs run;
    each result is kept as soon as its job ends (a stopped job's incomplete grids included). A rerun (another
    widget touched) leaves the jobs running: the next run follows them again."""
    pending = _jobs_of_session()
    store: dict = st.session_state.setdefault("ct_results", {})
    for key in [k for k in store if k not in request.keys]:  # results not shown: dropped
        del store[key]
    if not pending:
        return  # no job of this session: the job manager is not needed (it may still be starting)
    jobs = get_jobs()
    for key in [k for k in pending if k not in request.keys]:  # settings changed: that job is not shown any more
        jobs.forget(pending.pop(key)[0])
    if not pending:
        return
    stop_slot = st.empty()
    stop_slot.button("Stop", key="ct_stop_button", on_click=_request_stop)
    bars = {}
    for col, run, key in zip(cols, runs, request.keys):
        if key in pending:
            with col:
                bars[key] = st.progress(0.0, text="Queued…")
    while pending:
        for col, run, key in zip(cols, runs, request.keys):
            if key not in pending:
                continue
            jid, job = pending[key]
            status = jobs.status(jid)
            if status is None or status.ended:
                if status is not None:
                    store[key] = entry_from_outcome(run, request.settings, job, status.outcome)
                jobs.forget(jid)
                del pending[key]
                bars[key].empty()
            elif status.state == "queued":
                bars[key].progress(0.0, text=f"Queued: {status.message}.")
            elif job.method == "atp" and status.total:
                bars[key].progress(0.5, text=f"Attribution patching: one forward and backward… "
                                             f"({duration_text(status.seconds)})")
            elif status.total:
                bars[key].progress(min(1.0, status.done / status.total),
                                   text=progress_text("Tracing", status.done, status.total, status.seconds, "cells"))
            else:
                bars[key].progress(0.0, text=f"Clean and corrupted runs… ({duration_text(status.seconds)})")
        if pending:
            time.sleep(0.25)
    stop_slot.empty()


def cells_done(results: list[TR.TraceResult]) -> tuple[int, int]:
    """(cells computed, cells asked for) of a run's grids: a stopped trace leaves its other cells NaN (a subset
    trace asks for the cells of its rows only)."""
    done = sum(int(np.isfinite(r.grids["prob"]).sum()) for r in results)
    return done, sum(len(r.traced_tokens) * r.grids["prob"].shape[1] for r in results)


def ablate_one(entry: dict, abl_key: tuple) -> Any:
    """Ablate every layer of one traced run as `abl_key` (target, replacement, reset token, reference) says, in a job
    worker (which still holds the trace's runs, or makes them again)."""
    target, replacement, reset_token, reference = abl_key
    job = AblationJob(entry["job"], target, replacement, int(reset_token), reference)
    jobs = get_jobs()
    jid = jobs.submit(session_user(), job, "ablation")
    try:
        with st.spinner("Ablating every layer…"):
            while True:
                status = jobs.status(jid)
                if status is None or status.ended:
                    break
                time.sleep(0.2)
    finally:
        jobs.forget(jid)
    if status is None or not status.outcome.ok:
        raise RWKVInspectorError(status.outcome.error if status else "the ablation job was lost")
    return status.outcome.value


# ------------------------------------------------------------------------------------------------ drawing


def show_trace(entry: dict, P: str, metric: str, img_format: str, narrow: bool = False) -> None:
    """Metrics, heat maps and downloads of one run (in the current container)."""
    results: list[TR.TraceResult] = entry["results"]
    first = results[0]
    info = first.settings
    for w in first.warnings:
        st.warning(w)
    if not all(r.complete for r in results):
        done, total = cells_done(results)
        st.warning(f"Stopped after {done} of {total} cells: the grids show those (blank cells were not computed). "
                   "Press **Trace** to compute them all.")
    if narrow:  # half a page: two rows of two, so small numbers (6.15e-17) are not cut
        m1, m2 = st.columns(2)
        m3, m4 = st.columns(2)
    else:
        m1, m2, m3, m4 = st.columns(4)
    answer = first.answer_label
    lbl = {"prob": f"p({answer!r})", "logprob": f"log p({answer!r})",
           "first_prob": "p(first answer token)", "logit_diff": "logit difference", "recovery": "recovery"}[metric]
    m1.metric(f"clean {lbl}", f"{first.clean.get(metric, 1.0):.4g}" if metric != "recovery" else "1")
    m2.metric(f"corrupted {lbl}", f"{first.corrupt.get(metric, 0.0):.4g}" if metric != "recovery" else "0")
    m3.metric("subject tokens", f"{first.subject[0]}…{first.subject[1] - 1}")
    noise = info["corruption"] == "noise"
    m4.metric("noise std" if noise else "replacement", f"{info['noise_std']:.3g}" if noise else str(info["alt_subject"]))
    atp = info.get("method") == "atp"
    shown_metric = metric
    if atp:
        base = info["recovery_of"]  # the metric estimated: prob, or logit_diff with a second answer
        if metric not in (base, "recovery"):
            shown_metric = base  # the estimate is of one metric (and its recovery): the others are not estimated
        st.info(f"**Attribution patching: a first-order estimate, not exact.** Every cell is "
                f"{base}(corrupted) + ∇{base}(corrupted) · (clean − corrupted) at that cell, from one forward pass "
                "with gradients and one backward pass; it can be far from the exact value where the metric is "
                "not close to linear (a probability near 0 or 1). Trace the tokens that stand out to get their "
                "exact rows." + (f" Shown: {METRIC_NAMES[base]} (the metric estimated), not "
                                 f"{METRIC_NAMES[metric]}." if shown_metric != metric else ""))
    elif first.settings.get("tokens") is not None:
        rows = first.traced_tokens
        st.caption(f"Traced {len(rows)} of {len(first.tokens):,} tokens ({TR.format_positions(rows)}); the heat maps "
                   "show those rows, a blank row stands for the tokens not traced between them.")
    if metric == "logit_diff" and not info.get("answer2_ids"):
        st.info("The logit difference needs a second answer; the grids are blank.")
    for i, res in enumerate(results):
        name = {"block": f"State ({res.mode})", "att": f"Time-mix window {res.window}",
                "ffn": f"Channel-mix window {res.window}"}[res.kind]
        if atp:
            name += " · attribution patching (estimate)"
        shown = res.with_metric(shown_metric)
        fname = f"causal_trace_{res.kind}_{res.mode if res.kind == 'block' else f'w{res.window}'}_{shown_metric}"
        if atp:
            fname += "_atp"
        if P != "A":
            fname += f"_{P}"
        st.subheader(name)
        st.plotly_chart(FT.trace_heatmap(shown), key=f"ct_fig_{P}_{i}", config=image_config(fname, img_format))
        npz = io.BytesIO()
        shown.to_npz(npz)
        b1, b2, _ = st.columns([1, 1, 2] if narrow else [1, 1, 5])
        b1.download_button("Grid (CSV)", shown.to_csv(), file_name=fname + ".csv", mime="text/csv",
                           key=f"ct_csv_{P}_{i}", on_click="ignore")
        b2.download_button("Grid (npz)", npz.getvalue(), file_name=fname + ".npz",
                           mime="application/octet-stream", key=f"ct_npz_{P}_{i}", on_click="ignore")


# ------------------------------------------------------------------------------------------------ page


HOW_IT_WORKS = """
The prompt is the sidebar's (in compare mode both runs are traced with the same subject, answer and settings).
Layers are numbered from 0, as on every page.

1. **Clean run**: the prompt, then the answer teacher-forced; the metric is the answer's probability (all its
   tokens). **Corrupted run**: the subject's tokens corrupted — Gaussian noise (GN) on their input to block 0, or
   the subject replaced by another of the same token length (STR).
2. For every prompt token *t* (rows, subject starred) and layer *l* (columns, from 0), the corrupted run once more
   with something of the clean run **restored** at *t*; the colour is the metric (samples averaged as ROME does:
   the mean of probabilities). Bright cells are where the clean information matters.
- **Block / both** (default, the RWKV paper's "states and activation"): the residual stream after block *l* at
  token *t* **and** layer *l*'s recurrent state after *t*.
- **Block / resid**: only the residual stream (ROME's hidden state): the path *up the layers* at token *t*.
- **Block / state**: only layer *l*'s recurrent state after *t* (time-mix token shift, WKV state, channel-mix
  token shift), which reaches only later tokens: the path *forward in time*.
- **Time-mix window** (Reds, ROME's attention): the time-mix output at token *t* in a window of layers centred on
  *l* (default 10, as ROME, or half the layers of a smaller model; windows inflate peaks, so compare with window 1).
- **Channel-mix window** (Greens, ROME's MLP): the same for the channel-mix output.
- **Restore v_first** (RWKV-7): layer 0's value at token *t* enters every layer; with this on it is restored in
  the layers above *l* together with the residual, otherwise the corrupted subject keeps leaking in.
- **Noise site**: *block-0 input* (after ln0, the default: RWKV renormalises its small embedding at once) or the
  raw *embedding* (ROME). The noise std is the multiple times the std of that tensor over every vocabulary row.
- **Long prompts**: a trace costs one patched run per cell over the tokens from the cell's token to the end, so
  the full grid grows with the square of the prompt's length. When it would take longer than the confirmation
  threshold, the page proposes a subset of rows instead (the subject's tokens, the token after it, four tokens
  evenly spaced up to the last one, and the last token; edit the list freely) or **attribution patching**: every
  cell estimated as metric(corrupted) + ∇metric(corrupted) · (clean − corrupted) from one forward pass with
  gradients and one backward pass, a first-order estimate, not the exact value.
- **Layer ablation** (below): the clean run with one layer's output replaced (zero, a reference-text mean, or the
  corrupted run's value), or its WKV state reset after one token; bars show the change of the metric.
"""


@dataclass
class TraceRequest:
    """What the settings form asks for: the trace settings and grids of every run, and how to show them."""

    settings: dict  # keyword arguments of `TR.prepare_trace`
    specs: list  # TR.TraceSpec per grid
    keys: list[tuple]  # per run: the key of its results in `st.session_state["ct_results"]` (`finish`)
    submitted: bool  # the Trace button was pressed in this run (or a button of the long-prompt choices)
    metric: str
    img_format: str
    spec_key: tuple = ()
    scope: str = "full"  # what is traced: "full" (every cell), "tokens" (the rows listed), "atp" (attribution)
    tokens: list = field(default_factory=list)  # per run: the rows to trace (None: every row)

    def finish(self, runs: list[Run], scope: str, tokens: list[Optional[list[int]]]) -> None:
        """Fix what is traced (and so the key of each run's results): model, prompt, settings, grids, scope."""
        self.scope, self.tokens = scope, tokens
        settings_key = tuple(sorted(self.settings.items()))
        self.keys = [(run.model_key, run.prompt, settings_key, self.spec_key,
                      (scope,) + ((tuple(t),) if t is not None else ())) for run, t in zip(runs, tokens)]


def render(ctx: PageContext) -> None:
    """The causal tracing page below the shared sidebar: settings form, grids of each run, layer ablation."""
    runs = ctx.runs
    if any(not r.has_model for r in runs):
        st.info("Causal tracing needs a live model: it runs the model again with the subject corrupted and parts of "
                "the clean run restored. Choose **Source: model** in the sidebar.")
        return
    describe_models(runs)
    with st.expander("How it works, and what each mode restores"):
        st.markdown(HOW_IT_WORKS)
    request = settings_section(runs)
    costs = cost_section(runs, request)
    cols = run_columns(len(runs))
    if ctx.compare:
        for col, run in zip(cols, runs):
            col.markdown(f"**{run.title}** · `{run.prompt}`")
    if request.submitted:
        start_traces(runs, request, costs)
    follow_traces(runs, cols, request)
    store: dict = st.session_state.setdefault("ct_results", {})
    entries = [store.get(k) for k in request.keys]
    results_section(runs, cols, entries, request, ctx.compare)
    traced = [(run, e) for run, e in zip(runs, entries) if e is not None and "results" in e]
    if traced:
        ablation_section(runs, traced, request, ctx.compare)
    warm_jobs()  # after drawing: the first render does not wait for Ray, and Trace finds the workers ready


def describe_models(runs: list[Run]) -> None:
    """One sidebar line per run: version, layers, width, vocabulary and tokenizer."""
    for run in runs:
        cfg = run.cfg
        st.sidebar.caption(f"{run.label}: RWKV v{cfg.version}, {cfg.n_layer} layers, width {cfg.n_embd}, vocabulary "
                           f"{cfg.vocab_size} ({run.loaded.tokenizer.kind} tokenizer)")


def settings_section(runs: list[Run]) -> TraceRequest:
    """The settings form (bound to the URL) and the display options below it; what they ask for."""
    max_layers = max(r.cfg.n_layer for r in runs)
    any_v7 = any(str(r.cfg.version).startswith("7") for r in runs)
    bind_settings(runs, max_layers)
    with st.form("ct_form"):
        c1, c2, c3 = st.columns([3, 1, 1])
        subject = c1.text_input("Subject (first occurrence in the prompt)", key="ct_subject")
        answer = c2.text_input("Answer", key="ct_answer",
                               help="Tokenised on its own: include a leading space where the vocabulary has one. "
                                    "Defaults to the model's greedy next token.")
        answer2 = c3.text_input("Second answer (optional)", key="ct_answer2",
                                help="For the logit difference logit(answer) − logit(second answer), first tokens.")
        c1, c2, c3, c4, c5 = st.columns(5)
        corruption = c1.radio("Corruption", ["noise", "replace"], key="ct_corruption", horizontal=True,
                              format_func=lambda v: {"noise": "Gaussian noise", "replace": "subject replacement"}[v])
        alt_subject = c2.text_input("Replacement subject (STR)", key="ct_alt",
                                    help="Same number of tokens as the subject.")
        samples = c3.number_input("Noise samples", 1, 100, key="ct_samples")
        noise = c4.number_input("Noise × embedding std", 0.0, 100.0, step=0.5, key="ct_noise")
        seed = c5.number_input("Seed", 0, 2 ** 31 - 1, key="ct_seed")
        c1, c2, c3, c4, c5 = st.columns(5)
        noise_site = c1.selectbox("Noise site", list(TR.NOISE_SITES), key="ct_site",
                                  format_func={"resid_pre": "block-0 input (after ln0)", "embed": "embedding"}.get)
        mode = c2.selectbox("Block restore mode", list(TR.MODES), key="ct_mode",
                            format_func=lambda v: {"both": "both (resid + state)", "resid": "resid",
                                                   "state": "state"}[v])
        window = c3.number_input("Window (layers)", 1, max(1, max_layers), key="ct_window")
        v_first = c4.checkbox("Restore v_first (v7)", key="ct_vfirst", disabled=not any_v7)
        extra = c5.multiselect("Also trace", EXTRAS, key="ct_extra")
        submitted = st.form_submit_button("Trace", type="primary")

    d1, d2, _ = st.columns([2, 1, 3])
    metric = d1.selectbox("Metric shown", list(TR.METRICS), key="ct_metric", format_func=METRIC_NAMES.get)
    img_format = d2.radio("Image download", list(IMAGE_FORMATS), key="ct_imgfmt", horizontal=True,
                          help="Format of the camera button in each chart's toolbar.")
    publish(*URL_KEYS)
    _publish_extras()

    settings = dict(subject=subject, answer=answer, answer2=answer2 or None, corruption=corruption,
                    alt_subject=alt_subject if corruption == "replace" else None, samples=int(samples),
                    noise=float(noise), noise_site=noise_site, seed=int(seed))
    specs = [TR.TraceSpec(k, mode, int(window), bool(v_first)) for k in ("block", "att", "ffn")]
    if "resid and state separately" in extra:
        specs += [TR.TraceSpec("block", m, int(window), bool(v_first)) for m in ("resid", "state") if m != mode]
    if "window 1" in extra and int(window) != 1:
        specs += [TR.TraceSpec("att", mode, 1, bool(v_first)), TR.TraceSpec("ffn", mode, 1, bool(v_first))]
    spec_key = tuple((s.kind, s.mode, s.window, s.restore_v_first) for s in specs)
    return TraceRequest(settings, specs, [], submitted, metric, img_format, spec_key)


def cost_section(runs: list[Run], request: TraceRequest) -> list[Optional[COST.JobCost]]:
    """Each run's cost before it starts (cells, time on this model's device, peak memory against the job budget);
    a trace that cannot fit is refused here with its one line. When the full grid would take longer than the
    confirmation threshold (a long prompt), the long-prompt choices come first (`long_prompt_choices`): the
    proposed tokens, attribution patching, or the full grid anyway, which like any full grid past the threshold
    waits for a second press. Fixes what is traced (`TraceRequest.finish`); returns the cost of what is traced."""
    plans: list[Optional[RunPlan]] = []
    for run in runs:
        try:
            plans.append(plan_run(run, request.settings, request.specs))
        except RWKVInspectorError as e:
            st.error(_one_line(e))
            plans.append(None)
    full = [p.full if p is not None else None for p in plans]
    seconds = sum(c.seconds for c in full if c is not None)
    long_prompt = seconds > app_settings.CONFIRM_SECONDS and any(c is not None and c.fits for c in full)
    scope, tokens = "full", [None] * len(runs)
    costs: list[Optional[COST.JobCost]] = list(full)
    form_pressed, chosen = request.submitted, False
    if long_prompt:
        scope, tokens, costs, chosen = long_prompt_choices(runs, plans, request)
        request.submitted = chosen  # a choice's own button (its cost is on it) starts at once
    else:
        for run, cost in zip(runs, full):
            if cost is not None and cost.fits:
                prefix = f"{run.label}: " if len(runs) > 1 else ""
                st.caption(f"{prefix}Cost: {cost_line(cost, run.loaded.device)}.")
    for run, cost in zip(runs, full):
        if cost is not None and not cost.fits:
            prefix = f"{run.label}: " if len(runs) > 1 else ""
            st.error(f"{prefix}{cost.refusal[:1].upper()}{cost.refusal[1:]}.")
    if (form_pressed or chosen) and any(c is not None and not c.fits for c in full):
        st.session_state["ct_confirm_pending"] = False
        request.submitted = False  # refused: nothing starts (a subset needs the same memory)
    elif form_pressed and long_prompt and not chosen:  # Trace on a long prompt: the full grid, once confirmed
        st.session_state["ct_confirm_pending"] = True
    if st.session_state.get("ct_confirm_pending"):
        st.warning(f"The full grid will take about {hours_minutes(seconds)} on this machine (a worker computes it; "
                   "you can leave the page and come back, or press Stop). Start it?")
        c1, c2, _ = st.columns([1, 1, 4])
        if c1.button(f"Start ({hours_minutes(seconds)})", key="ct_confirm", type="primary"):
            st.session_state["ct_confirm_pending"] = False
            st.session_state["ct_scope"] = scope = "full"
            tokens, costs = [None] * len(runs), list(full)
            request.submitted = True
        if c2.button("Cancel", key="ct_confirm_cancel"):
            st.session_state["ct_confirm_pending"] = False
            st.rerun()
    request.finish(runs, scope, tokens)
    return costs


def _bind_tokens(plan: RunPlan, key: tuple) -> None:
    """`ct_tokens` (the rows to trace, as typed) from the URL once per session, else run A's proposal; a new
    proposal when the prompt or subject changes (`ct_tokens_for`)."""
    proposal = TR.format_positions(TR.propose_tokens(plan.T, plan.subject))
    if "ct_tokens" not in st.session_state:
        st.session_state["ct_tokens"] = qp_get("ct_tokens", proposal) or proposal
        st.session_state["ct_tokens_for"] = key
    elif st.session_state.get("ct_tokens_for") != key:
        st.session_state["ct_tokens"] = proposal
        st.session_state["ct_tokens_for"] = key
    else:
        st.session_state["ct_tokens"] = st.session_state["ct_tokens"]
    bind("ct_scope", "full", options=SCOPES)


SCOPES = ("full", "tokens", "atp")


def tokens_caption(plan: RunPlan, tokens: list[int], limit: int = 40) -> str:
    """The rows listed with their text ("0 'T', 1 'h', … 1030 ' of'"), at most `limit` of them."""
    shown = [f"{t} {plan.labels[t]!r}" for t in tokens[:limit]]
    more = f", … ({len(tokens) - limit} more)" if len(tokens) > limit else ""
    return ", ".join(shown) + more


def long_prompt_choices(runs: list[Run], plans: list[Optional[RunPlan]], request: TraceRequest
                        ) -> tuple[str, list, list, bool]:
    """A long prompt: the full grid's cost in hours and minutes, and what to do instead, before any run: trace the
    proposed tokens (`TR.propose_tokens`: the subject's tokens, the one after it, four between, the last; the list
    can be edited), or attribution patching (a first-order estimate of every cell from one forward and one
    backward pass, `atp_trace`), or the full grid anyway (**Trace**, then a confirmation). The rows and the choice
    are in the URL (ct_tokens, ct_scope). Returns (scope, rows per run, cost per run, a choice's button pressed)."""
    a = next((p for p in plans if p is not None), None)
    run_a = runs[plans.index(a)]
    _bind_tokens(a, (run_a.model_key, run_a.prompt, request.settings["subject"]))
    for run, plan in zip(runs, plans):
        if plan is None:
            continue
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        st.info(f"{prefix}A long prompt ({plan.T:,} tokens): the full grid is {plan.full.cells:,} cells, about "
                f"**{hours_minutes(plan.full.seconds)}** on {run.loaded.device} (more than the "
                f"{duration_text(app_settings.CONFIRM_SECONDS)} that a trace starts without asking). Trace the "
                "proposed tokens, or estimate every cell by attribution patching, instead.")
    text = st.text_input("Tokens to trace (positions from 0)", key="ct_tokens",
                         help="The proposal: the subject's tokens, the token after it, four tokens evenly spaced "
                              "between it and the last token, and the last token. Edit freely: 3, 7, 10-12. The "
                              "rows not listed stay blank. In compare mode each run traces the positions within "
                              "its prompt.")
    tokens: list = []
    subset: list = []
    error = None
    for run, plan in zip(runs, plans):
        if plan is None:
            tokens.append(None)
            subset.append(None)
            continue
        try:
            # one run: a position past its prompt is an error; in compare mode each run takes those within its own
            rows = (TR.parse_positions(text, plan.T if len(runs) == 1 else 10 ** 9)
                    or TR.propose_tokens(plan.T, plan.subject))
            rows = [t for t in rows if t < plan.T]
            if not rows:
                raise RWKVInspectorError(f"none of the positions listed is within the prompt's {plan.T} tokens")
        except RWKVInspectorError as e:
            error = _one_line(e)
            rows = TR.propose_tokens(plan.T, plan.subject)
        tokens.append(rows)
        subset.append(plan.subset_cost(run, request.specs, rows))
    if error:
        st.error(f"{error[:1].upper()}{error[1:]}; the proposal is used instead.")
    atp = [p.atp_cost(r, request.specs) if p is not None else None for r, p in zip(runs, plans)]
    for run, plan, rows, cost in zip(runs, plans, tokens, subset):
        if plan is not None:
            prefix = f"{run.label}: " if len(runs) > 1 else ""
            st.caption(f"{prefix}{len(rows)} of {plan.T:,} rows: {tokens_caption(plan, rows)} · "
                       f"{cost.cells:,} cells · about {hours_minutes(cost.seconds)}.")
    sub_s = sum(c.seconds for c in subset if c is not None)
    atp_s = sum(c.seconds for c in atp if c is not None)
    atp_refusal = next((c.refusal for c in atp if c is not None and c.refusal), None)
    c1, c2, _ = st.columns([2, 2, 3])
    pressed = None
    if c1.button(f"Trace these tokens ({hours_minutes(sub_s)})", key="ct_trace_tokens", type="primary"):
        pressed = "tokens"
    if c2.button(f"Attribution patching ({hours_minutes(atp_s)})", key="ct_trace_atp",
                 disabled=atp_refusal is not None,
              help="Every cell estimated to first order from one forward pass with gradients and one backward "
                   "pass: metric(restored) ≈ metric(corrupted) + ∇metric(corrupted) · (clean − corrupted). Not "
                   "exact: check the cells that matter by tracing their tokens."):
        pressed = "atp"
    if pressed:
        st.session_state["ct_scope"] = pressed
        st.session_state["ct_confirm_pending"] = False
    if atp_refusal:
        c2.caption(f"{atp_refusal[:1].upper()}{atp_refusal[1:]}.")
    st.caption("**Trace** (above) computes the full grid anyway, after a confirmation.")
    publish("ct_tokens", "ct_scope")
    scope = st.session_state.get("ct_scope", "full")
    if scope == "tokens":
        return scope, tokens, subset, pressed is not None
    if scope == "atp":
        return scope, [None] * len(runs), atp, pressed is not None
    return "full", [None] * len(runs), [p.full if p is not None else None for p in plans], False


def results_section(runs: list[Run], cols: list, entries: list[Optional[dict]], request: TraceRequest,
                    compare: bool) -> None:
    """Per run, in its column: what to do next, its error, or its metrics, heat maps and downloads."""
    for col, run, entry in zip(cols, runs, entries):
        with col:
            if entry is None:
                if st.session_state.get("ct_stop"):
                    st.warning("Stopped before it started. Press **Trace** to start again.")
                else:
                    st.info("Set the subject and answer (the prompt is the sidebar's), then press **Trace**.")
            elif "warning" in entry:
                st.warning(entry["warning"])
            elif "error" in entry:
                st.error(entry["error"])
            else:
                show_trace(entry, run.label, request.metric, request.img_format, compare)


def ablation_section(runs: list[Run], traced: list[tuple[Run, dict]], request: TraceRequest, compare: bool) -> None:
    """Layer ablation of every traced run: its controls, then one bar chart per run (cached with the trace)."""
    st.subheader("Layer ablation")
    a1, a2, a3, a4 = st.columns([1, 1, 1, 3])
    target = a1.selectbox("Ablate", list(TR.ABLATION_TARGETS), key="ct_abl_target",
                          format_func=ABLATION_TARGET_NAMES.get)
    replacement = a2.selectbox("Replace with", list(REPLACEMENT_NAMES), key="ct_abl_repl",
                               format_func=REPLACEMENT_NAMES.get)
    max_t = max(len(e["results"][0].tokens) for _, e in traced)
    if not -1 <= int(st.session_state.get("ct_abl_token", -1)) <= max_t - 1:
        st.session_state["ct_abl_token"] = -1
    reset_token = a3.number_input("Reset after token", -1, max_t - 1, -1, key="ct_abl_token",
                                  disabled=target != "state",
                                  help="For the state reset: the token after which the layer's WKV state is reset; "
                                       "-1: the subject's last token.")
    reference = a4.text_input("Reference text (mean ablation)", key="ct_abl_ref", disabled=replacement != "mean")
    abl_key = (target, replacement, int(reset_token), reference if replacement == "mean" else None)
    abl_cols = run_columns(len(runs))
    for run, entry in traced:
        with abl_cols[runs.index(run)]:
            if compare:
                st.caption(run.title)
            abl = entry["ablations"].get(abl_key)
            if abl is None:
                try:
                    first = entry["results"][0]
                    T, K, n = len(first.tokens), len(first.settings["answer_ids"]), int(first.settings["samples"])
                    speed = _speed(run, max(1, min(n, 8))).with_threads(app_settings.job_threads())
                    secs = COST.ablation_seconds(run.cfg, T + K - 1, K, n, replacement, speed)
                    st.caption(f"Ablating every layer: about {duration_text(secs)} on {run.loaded.device}.")
                    abl = ablate_one(entry, abl_key)
                    entry["ablations"][abl_key] = abl
                except RWKVInspectorError as e:
                    st.error(_one_line(e))
            if abl is not None:
                abl_metric = request.metric if request.metric in abl.delta else "prob"
                fname = f"layer_ablation_{target}_{replacement}_{abl_metric}" + ("" if run.label == "A" else "_B")
                st.plotly_chart(FT.ablation_bars(abl, abl_metric), key=f"ct_abl_fig_{run.label}",
                                config=image_config(fname, request.img_format))
    st.caption("Noising: the clean run with one layer ablated at every token (the state reset: after one "
               "token); the bar is the change of the metric at the answer. Negative = the layer is needed.")
