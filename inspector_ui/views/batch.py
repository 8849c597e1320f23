"""The Batch tracing page below the shared sidebar: choose a fact set and the tracing settings, see the cost, start a
run on the job workers (its id in the URL: a reload or a shared link finds it again), follow it, then ROME's Figure 2
for each restore kind, the table of facts with links into the Causal tracing page, and the downloads."""
from __future__ import annotations

import io
import time
from dataclasses import replace
from typing import Optional
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from inspector_ui import settings as app_settings
from inspector_ui.prompt_store import store_prompt
from inspector_ui.resources import get_factset_runs, model_spec, warm_jobs
from inspector_ui.session import PageContext, Run, bind, publish, qp_get
from inspector_ui.views.tracing import session_user
from inspector_ui.widgets import csv_bytes, duration_text, gated, progress_text
from rwkv_core.analysis import factset as FS
from rwkv_core.analysis import tracing as TR
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.figures import factset as FF
from rwkv_core.figures.common import IMAGE_FORMATS, image_config
from rwkv_core.jobs import cost as COST

ABOUT = ("Causal tracing over a set of facts: ROME's average indirect effect of restoring each layer at each kind "
         "of token, for the whole layer, the recurrent state alone, the residual stream alone and the time-mix and "
         "channel-mix windows, over the facts the model knows, with confidence intervals.")

HOW_IT_WORKS = """
Every fact (`prompt`, `subject`, `answer`) is traced as on the **Causal tracing** page, with the same settings: the
subject's tokens corrupted with Gaussian noise, then the clean value restored at one (token *t*, layer *l*) at a time.

- **Indirect effect** of a cell: IE(*t*, *l*) = p(answer | restored at *t*, *l*) − p(answer | corrupted).
- **Token classes** (ROME): the first, middle (mean) and last subject token, the first token after the subject, the
  further tokens (mean) and the last token. A class a fact has no token of (a one-token subject has no middle) is
  left out of that class's average.
- **Average indirect effect** (AIE): the mean of IE over the facts the model *knows*: clean p(answer) ≥ the
  threshold. The band and the hover give a 95 % percentile bootstrap interval over facts (1,000 resamples).
- **Restore kinds**: the whole layer (residual stream and recurrent state), the recurrent state alone (it reaches
  only later tokens), the residual stream alone, and the time-mix and channel-mix outputs over a window of layers.

The facts run as one batch on the job workers (every worker of the machine or cluster; another user's job still gets
the next free worker), each written to the run's folder as it finishes: Stop keeps the facts done, and a run cut short
(a server restart) resumes where it stopped. The same run from a terminal:
`python -m rwkv_core trace-set CHECKPOINT FACTS.jsonl --out DIR`.
"""

DEMO, UPLOAD = "demo facts", "upload JSONL"


# ------------------------------------------------------------------------------------------------ settings


def _read_upload(data: bytes) -> tuple[list[FS.FactLine], list[FS.BadLine]]:
    return FS.read_facts(data)


def fact_source() -> Optional[tuple[list[FS.FactLine], list[FS.BadLine], str]]:
    """The chosen facts (good lines, bad lines, a label), or None while nothing usable is chosen."""
    bind("bt_source", DEMO, options=(DEMO, UPLOAD))
    st.radio("Fact set", [DEMO, UPLOAD], key="bt_source", horizontal=True,
             help="The demo corpus's held-out fact phrasings (never seen with their subject in training), or your "
                  'own JSONL: one {"prompt": ..., "subject": ..., "answer": ..., "id": optional} per line, at most '
                  f"{FS.MAX_FACTSET_BYTES // 2**20} MB.")
    if st.session_state.bt_source == DEMO:
        facts, bad = FS.demo_facts()
        label = "demo facts"
    else:
        up = st.file_uploader("Fact set (.jsonl)", type=["jsonl", "json", "txt"], key="bt_upload")
        if up is None:
            st.caption('Example line: `{"prompt": "The Eiffel Tower is located in the city of", "subject": '
                       '"The Eiffel Tower", "answer": " Paris"}`')
            return None
        if up.size > FS.MAX_FACTSET_BYTES:
            st.error(f"{up.name} is {up.size / 2**20:.1f} MB; the limit is {FS.MAX_FACTSET_BYTES // 2**20} MB: split it.")
            return None
        try:
            facts, bad = _read_upload(up.getvalue())
        except RWKVInspectorError as e:
            st.error(f"{up.name}: {str(e).splitlines()[0]}")
            return None
        label = up.name
    return facts, bad, label


def settings_form(run: Run, n_facts_all: int) -> tuple[FS.FactSetSettings, int]:
    L = run.cfg.n_layer
    bind("bt_count", min(12, n_facts_all), int, bounds=(1, max(1, n_facts_all)))
    bind("bt_kinds", "|".join(FS.RESTORE_KINDS))
    bind("bt_samples", 10, int, bounds=(1, 100))
    bind("bt_threshold", 0.1, float, bounds=(0.0, 1.0))
    bind("bt_window", TR.default_window(L), int, bounds=(1, max(1, L)))
    c = st.columns([1, 3, 1, 1, 1])
    count = c[0].number_input("Facts", 1, max(1, n_facts_all), key="bt_count",
                              help="Trace the first N facts of the set (the demo set lists every fact once before "
                                   "its second phrasing).")
    chosen = [k for k in st.session_state.bt_kinds.split("|") if k in FS.RESTORE_KINDS] or ["block"]
    kinds = c[1].multiselect("Restore kinds", list(FS.RESTORE_KINDS), default=chosen,
                             format_func=lambda k: FS.KIND_TITLES[k], key="bt_kinds_ms",
                             help="Each kind is one grid per fact: the cost grows with their number.")
    st.session_state.bt_kinds = "|".join(kinds)
    samples = c[2].number_input("Noise samples", 1, 100, key="bt_samples")
    window = c[3].number_input("Window (layers)", 1, max(1, L), key="bt_window")
    threshold = c[4].number_input("Known when p ≥", 0.0, 1.0, step=0.05, key="bt_threshold",
                                  help="A fact enters the average when the clean probability of its answer is at "
                                       "least this (the facts the model knows, as ROME averages).")
    publish("bt_source", "bt_count", "bt_kinds", "bt_samples", "bt_threshold", "bt_window")
    fs = FS.FactSetSettings(kinds=tuple(kinds) or ("block",), samples=int(samples), window=int(window),
                            threshold=float(threshold))
    return fs, int(count)


def estimate(run: Run, facts: list[FS.FactLine], fs: FS.FactSetSettings, workers: int
             ) -> tuple[float, int, COST.JobCost]:
    """The whole run's time (each fact's trace estimate at this model's measured speed, shared by the workers), its
    cells, and the cost of its longest fact (memory: the batch budget every fact's job runs with, or the refusal)."""
    tok, model = run.loaded.tokenizer, run.loaded.model
    speed = gated(lambda: COST.measure_speed(model, rows=max(1, min(fs.samples, 8))), "Measuring the model's speed",
                  show_waiting=False)
    threads = app_settings.job_threads()
    specs = fs.specs(run.cfg.n_layer)
    total, cells, longest = 0.0, 0, None
    for f in facts:
        enc = tok.encode(f.prompt)
        cells += len(enc.ids) * run.cfg.n_layer * len(specs)
        (s0, s1), _ = TR.locate_subject(enc, f.subject)
        K = max(1, len(tok.encode(f.answer).ids))
        total += COST.trace_seconds(run.cfg, len(enc.ids), K, s0, int(fs.samples), specs, speed.with_threads(threads))
        size = (len(enc.ids) + K, s1 - s0)
        if longest is None or size > longest[0]:
            longest = (size, len(enc.ids), K, s0, s1 - s0)
    _, T, K, s0, n_subject = longest
    cost = COST.estimate_trace(model, T, K, s0, int(fs.samples), specs,
                               app_settings.job_memory_bytes(run.loaded.device), speed, subject_tokens=n_subject,
                               threads=threads)
    return total / max(1, workers), cells, cost


def setup_section(run: Run) -> None:
    chosen = fact_source()
    if chosen is None:
        return
    facts_all, bad_all, label = chosen
    fs, count = settings_form(run, len(facts_all))
    facts = facts_all[:count]
    facts, bad_tokens = FS.check_fact_tokens(run.loaded.tokenizer, facts)
    bad = list(bad_all) + bad_tokens
    if bad:
        with st.expander(f"{len(bad)} line(s) skipped"):
            st.dataframe(pd.DataFrame([{"line": b.line, "reason": b.reason, "text": b.text} for b in bad]),
                         hide_index=True, width="stretch")
    if not facts:
        st.warning("No fact of this set can be traced with this model: see the skipped lines.")
        return
    workers = max(1, app_settings.JOB_WORKERS)
    seconds, cells, longest = estimate(run, facts, fs, workers)
    st.info(f"{len(facts)} facts from {label} · {len(fs.kinds)} grid(s) each · {cells:,} cells · about "
            f"{duration_text(seconds)} on {run.loaded.device} with {workers} worker(s) · peak memory of the longest "
            f"fact about {longest.peak_bytes / COST.GB:.1f} GB of the {longest.budget_bytes / COST.GB:.1f} GB job "
            "budget")
    if not longest.fits:
        st.error(f"The longest fact does not fit a job's memory: {longest.refusal}")
        return
    fs = replace(fs, memory_budget=int(longest.batch_bytes))
    if st.button("Start", type="primary", key="bt_start"):
        try:
            rid = get_factset_runs().start(session_user(), model_spec(run.loaded), run.cfg.n_layer, facts, fs,
                                           bad=bad, label=label)
        except RWKVInspectorError as e:
            st.error(str(e).splitlines()[0])
            return
        st.query_params["bt_run"] = rid
        st.rerun()


# ------------------------------------------------------------------------------------------------ a run


def _stop(rid: str) -> None:
    get_factset_runs().stop(rid)


def follow(rid: str) -> None:
    """Progress (facts, time left, cells of the facts in hand) and Stop while the run's thread works; returns when
    it ends (the page then shows the results)."""
    runs = get_factset_runs()
    st.button("Stop", key="bt_stop", on_click=_stop, args=(rid,),
              help="Stop after the batch in hand: the facts finished are kept (and a later run resumes the rest).")
    bar = st.progress(0.0, text="Starting…")
    while True:
        r = runs.get(rid)
        if r is None or r.state != "running":
            break
        p = r.progress
        done_now = p.done + p.failed
        text = progress_text("Tracing facts", p.finished_facts, p.total, p.seconds, "facts")
        if done_now == 0:
            text += " · about ? left until the first fact ends"
        if p.waiting:
            text += f" · {p.waiting}"
        cd, ct = p.running_cells
        if ct:
            text += f" · facts in hand: {cd:,} / {ct:,} cells"
        bar.progress(min(1.0, p.finished_facts / max(1, p.total)), text=text)
        time.sleep(0.5)
    bar.empty()


@st.cache_data(show_spinner=False, max_entries=16)
def _summary(path: str, threshold: float, stamp: tuple) -> tuple[dict, list[dict]]:
    """AIE and the fact table of a run's folder (cached until a fact file or event is added)."""
    folder = FS.FactSetFolder(path)
    return folder.summarise(folder.facts(), threshold)


def _stamp(folder: FS.FactSetFolder) -> tuple:
    ev = folder.path / "events.jsonl"
    return (len(list(folder.facts_dir.glob("*.npz"))), ev.stat().st_mtime_ns if ev.exists() else 0)


def tracing_link(fact: FS.FactLine, info: dict) -> str:
    """A link into the Causal tracing page with this fact and the run's settings filled in."""
    traced = info.get("traced", {})
    params = {"source": "model", "model": st.session_state.get("model", ""), "ct_subject": fact.subject,
              "ct_answer": fact.answer, "ct_corruption": "noise", "ct_samples": traced.get("samples", 10),
              "ct_noise": traced.get("noise", 3.0), "ct_seed": traced.get("seed", 1),
              "ct_window": info.get("window", 10)}
    if len(fact.prompt) > app_settings.URL_PROMPT_CHARS:
        params["prompt_id"] = store_prompt(fact.prompt)
    else:
        params["prompt"] = fact.prompt
    return "Causal_tracing?" + urlencode(params)


def results(rid: str) -> None:
    runs = get_factset_runs()
    folder = runs.folder(rid)
    info = folder.run_info() or {}
    threshold = st.number_input("Known when p ≥", 0.0, 1.0, float(st.session_state.get("bt_threshold", 0.1)),
                                step=0.05, key="bt_result_threshold",
                                help="Facts averaged: clean p(answer) at least this. Changing it recomputes the "
                                     "average from the fact files.")
    aie, rows = _summary(str(folder.path), float(threshold), _stamp(folder))
    done = [r for r in rows if r["status"] == "done"]
    known = sum(1 for r in done if r["known"] is True)
    m = st.columns(4)
    m[0].metric("facts traced", f"{len(done)} / {len([r for r in rows if r['status'] != 'skipped'])}")
    m[1].metric("known (averaged)", known)
    m[2].metric("failed", sum(1 for r in rows if r["status"] == "failed"))
    m[3].metric("lines skipped", sum(1 for r in rows if r["status"] == "skipped"))
    if not done:
        st.info("No fact finished yet.")
        return
    if known == 0:
        best = max(float(r["clean_prob"]) for r in done)
        st.warning(f"No fact traced is known to this model at p ≥ {threshold:g} (the best clean p(answer) is "
                   f"{best:.3g}): there is nothing to average. Lower the threshold (0 averages every fact traced), "
                   "or trace facts this model knows.")
    if known:
        figures(aie, known)
    facts_table(folder, info, rows)
    downloads(folder, rid, aie, rows, known, float(threshold))


def figures(aie: dict, known: int) -> None:
    """ROME's Figure 2: the AIE at one token class by layer (one line per kind), then each kind's class x layer map."""
    img = st.radio("Figure download format", IMAGE_FORMATS, horizontal=True, key="bt_imgfmt")
    cls = st.selectbox("AIE by layer at", list(range(len(FS.TOKEN_CLASSES))), index=2,
                       format_func=lambda i: FS.TOKEN_CLASSES[i], key="bt_class")
    st.plotly_chart(FF.aie_lines(aie, cls, known), width="stretch",
                    config=image_config(f"aie_{FS.TOKEN_CLASSES[cls].replace(' ', '_')}", img), key="bt_lines")
    tabs = st.tabs([FS.KIND_TITLES[k] for k in aie])
    for tab, (k, a) in zip(tabs, aie.items()):
        with tab:
            st.plotly_chart(FF.aie_heatmap(a, k, known), width="stretch",
                            config=image_config(f"aie_{k}", img), key=f"bt_heat_{k}")


def facts_table(folder: FS.FactSetFolder, info: dict, rows: list[dict]) -> None:
    """One row per fact (and per skipped line), each traced fact linked into the Causal tracing page."""
    by_id = {f.id: f for f in folder.facts()}
    table = pd.DataFrame([{**{c: r.get(c, "") for c in ("id", "status", "known", "clean_prob", "corrupt_prob",
                                                           "reason", "prompt", "subject", "answer")},
                           "open": tracing_link(by_id[r["id"]], info) if r.get("id") in by_id else None}
                          for r in rows])
    st.dataframe(table, hide_index=True, width="stretch", key="bt_table",
                 column_config={"open": st.column_config.LinkColumn("Causal tracing", display_text="open"),
                                "clean_prob": st.column_config.NumberColumn("clean p", format="%.3f"),
                                "corrupt_prob": st.column_config.NumberColumn("corrupted p", format="%.3f")})


def downloads(folder: FS.FactSetFolder, rid: str, aie: dict, rows: list[dict], known: int, threshold: float) -> None:
    arrays = FS.aie_arrays(aie, known, threshold)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    d = st.columns(4)
    d[0].download_button("AIE (npz)", buf.getvalue(), f"aie_{rid}.npz", key="bt_dl_npz")
    d[1].download_button("AIE (CSV)", FS.aie_csv(aie).encode(), f"aie_{rid}.csv", "text/csv", key="bt_dl_csv")
    d[2].download_button("Facts (CSV)", FS.facts_csv(rows).encode(), f"facts_{rid}.csv", "text/csv",
                         key="bt_dl_facts")
    d[3].download_button("Run folder (zip)", lambda: folder.zip_bytes(), f"factset_{rid}.zip", "application/zip",
                         key="bt_dl_zip")


def show_run(run: Run, rid: str) -> None:
    runs = get_factset_runs()
    try:
        r = runs.get(rid)
    except RWKVInspectorError as e:
        st.error(str(e).splitlines()[0])
        r = None
    if st.button("New fact set", key="bt_new"):
        st.query_params.pop("bt_run", None)
        st.rerun()
    if r is None:
        st.error(f"No fact-set run {rid!r} on this server: start a new one.")
        return
    st.caption(f"Run `{rid}` · {r.label} · {r.progress.total} facts · this page's link finds it again")
    if r.state == "running":
        follow(rid)
        st.rerun()
    if r.state == "failed":
        st.error(f"The run failed: {r.message}")
    elif r.state == "interrupted":
        st.warning(f"This run stopped at {r.progress.resumed} of {r.progress.total} facts (stopped, or the server "
                   "restarted). Resume computes only the facts not done.")
        if st.button("Resume", key="bt_resume"):
            _resume(run, rid)
    elif r.state == "stopped":
        st.warning(f"Stopped: {r.progress.finished_facts} of {r.progress.total} facts done (kept).")
    results(rid)


def _resume(run: Run, rid: str) -> None:
    runs = get_factset_runs()
    folder = runs.folder(rid)
    info = folder.run_info() or {}
    traced = dict(info.get("traced", {}))
    traced["kinds"] = tuple(traced.get("kinds", FS.RESTORE_KINDS))
    fs = FS.FactSetSettings(**traced)
    model = info.get("model", {})
    spec = model_spec(run.loaded)
    if model.get("path") != spec.path:
        st.error("This run traced another model: choose it in the sidebar to resume it.")
        return
    try:
        runs.start(session_user(), spec, int(info.get("n_layer", run.cfg.n_layer)), folder.facts(), fs,
                   bad=folder.bad_lines(), run_id=rid)
    except RWKVInspectorError as e:
        st.error(str(e).splitlines()[0])
        return
    st.rerun()


def render(ctx: PageContext) -> None:
    run = ctx.runs[0]
    if not run.has_model:
        st.info("Batch tracing needs a live model: it traces every fact again. Choose **Source: model** in the "
                "sidebar.")
        return
    st.caption("Each fact brings its own prompt: the sidebar's prompt is not used here, only its model.")
    with st.expander("How it works"):
        st.markdown(HOW_IT_WORKS)
    rid = qp_get("bt_run")
    if rid:
        show_run(run, rid)
    else:
        setup_section(run)
    warm_jobs()
