"""The Batch tracing page under Streamlit's AppTest: the cost before a run, an uploaded fact set's bad lines, a run
started from the page and followed to ROME's figure, a run opened by its link while it runs (a reload), the numbers
of the figure equal to the run folder's, and the link of a fact into the Causal tracing page.

Runs on the demo RWKV-7 model of the repository; the facts run on the server's Ray job workers."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from tests.ui.page_helpers import app_session, chart_specs, plotly_array, run_clean

PAGE = "pages/8_Batch_tracing.py"
SMALL = dict(bt_count="2", bt_kinds="block|state", bt_samples="2")


@pytest.fixture(autouse=True)
def factset_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_INSPECTOR_FACTSET_DIR", str(tmp_path / "factsets"))
    from inspector_ui.resources import get_factset_runs

    get_factset_runs.clear()  # a registry for this test's folder
    yield tmp_path / "factsets"
    get_factset_runs.clear()


def test_the_cost_is_shown_before_a_run():
    at = run_clean(app_session(PAGE))
    info = " ".join(i.value for i in at.info)
    assert "12 facts from demo facts" in info and "5 grid(s) each" in info and "cells · about" in info
    assert "with 1 worker(s)" in info
    assert any(b.label == "Start" for b in at.button)
    assert not chart_specs(at)  # nothing runs before Start


def test_an_uploaded_fact_set_lists_its_bad_lines():
    at = run_clean(app_session(PAGE, bt_source="upload JSONL"))
    lines = [json.dumps({"prompt": "The Eiffel Tower is located in the city of", "subject": "The Eiffel Tower",
                         "answer": " Paris"}), "{broken", json.dumps({"prompt": "Tokyo is in", "subject": "Kyoto",
                                                                     "answer": " Japan"}),
             json.dumps({"prompt": "Tokyo is in the country of", "subject": "Tokyo", "answer": " Japan"})]
    at.file_uploader(key="bt_upload").set_value(("mine.jsonl", "\n".join(lines).encode(), "application/json"))
    at = run_clean(at)
    assert "2 facts from mine.jsonl" in " ".join(i.value for i in at.info)
    assert any("2 line(s) skipped" in e.label for e in at.expander)
    at.file_uploader(key="bt_upload").set_value(("bad.jsonl", b"\xff\xfe", "application/json"))
    at.run()
    assert any("bad.jsonl: the fact set is not UTF-8 text" in e.value for e in at.error)


def _figure_matches_folder(at, folder, kinds) -> None:
    specs = chart_specs(at)
    titles = [f["layout"]["title"]["text"] for f in specs]
    assert titles[0].startswith("Average indirect effect at the last subject token")
    heat = [f for f in specs if f["data"][0]["type"] == "heatmap"]
    assert len(heat) == len(kinds)
    with np.load(folder / "aie.npz") as z:
        for k, f in zip(kinds, heat):
            np.testing.assert_allclose(plotly_array(f["data"][0]["z"]), z[k], rtol=1e-6, atol=1e-9, equal_nan=True)


def test_a_run_from_the_page_ends_in_rome_figure_and_a_link_finds_it(factset_dir):
    at = run_clean(app_session(PAGE, **SMALL))
    at.button(key="bt_start").click()
    at = run_clean(at)  # the page follows the run to its end
    rid = at.query_params["bt_run"]
    rid = rid[0] if isinstance(rid, list) else rid
    folder = factset_dir / rid
    assert (folder / "aie.npz").exists() and len(list((folder / "facts").glob("*.npz"))) == 2
    _figure_matches_folder(at, folder, ["block", "state"])
    table = at.dataframe[0].value
    assert list(table["status"]) == ["done", "done"]
    link = urlparse(table["open"][0])
    q = parse_qs(link.query)
    assert link.path == "Causal_tracing" and q["ct_subject"] == ["The Eiffel Tower"] and q["ct_answer"] == [" Paris"]
    assert q["prompt"] == ["The Eiffel Tower is a famous landmark in the city of"] and q["ct_samples"] == ["2"]
    # the link opens the Causal tracing page with the fact filled in
    ct = run_clean(app_session("pages/4_Causal_tracing.py", **{k: v[0] for k, v in q.items()}))
    assert ct.session_state["ct_subject"] == "The Eiffel Tower" and ct.session_state["ct_samples"] == 2
    assert ct.sidebar.text_area(key="prompt").value == q["prompt"][0]
    # a reload (a new session with the run's link) shows the same figure from the folder
    again = run_clean(app_session(PAGE, bt_run=rid))
    _figure_matches_folder(again, folder, ["block", "state"])


def test_a_run_opened_by_its_link_while_it_runs_is_followed_to_the_end(factset_dir):
    from inspector_ui.registry import list_models
    from inspector_ui.resources import get_factset_runs, get_jobs
    from rwkv_core.analysis import factset as FS
    from rwkv_core.jobs.specs import ModelSpec

    get_jobs()
    demo = list_models()["demo: demo v7 facts+retrieval"]
    runs = get_factset_runs()
    rid = runs.start("someone else", ModelSpec(str(demo.path), "bytes"), 4, FS.demo_facts()[0][:3],
                     FS.FactSetSettings(kinds=("ffn",), samples=2))
    at = run_clean(app_session(PAGE, bt_run=rid))  # opened mid-run: the page follows it, then draws
    assert runs.get(rid).state == "done"
    _figure_matches_folder(at, factset_dir / rid, ["ffn"])
    at = run_clean(at)  # AppTest drops a widget's new value in the run after an st.rerun (the follow's end)
    at.number_input(key="bt_result_threshold").set_value(1.0)  # no fact is known at p >= 1: nothing to average
    at = run_clean(at)
    assert any("nothing to average" in w.value for w in at.warning) and not chart_specs(at)
    assert len(at.dataframe[0].value) == 3  # the table stays
    bad = app_session(PAGE, bt_run="../../etc")
    bad.run()
    assert any("not a fact-set run id" in e.value for e in bad.error)
