"""Fact sets on the Ray workers: the batch on 2 workers gives the in-process numbers fact by fact, a background run
(the Batch tracing page's) is followed, stopped, found again from its folder and resumed; a cluster joined by
address gives the same results (slow)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rwkv_core.analysis import factset as FS
from rwkv_core.analysis import tracing as TR
from rwkv_core.jobs.factsets import FactSetRuns
from rwkv_core.jobs.specs import ModelSpec
from tests.jobs.conftest import DEMO_V7

ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(str(DEMO_V7), "bytes")
SETTINGS = FS.FactSetSettings(kinds=("block", "ffn"), samples=2, window=2)


def facts(n: int) -> list[FS.FactLine]:
    return FS.demo_facts()[0][:n]


def _grids(folder: Path, fact_id: str) -> dict:
    rec = FS.FactSetFolder(folder).load_fact(fact_id)
    return {k: r.grids for k, r in rec.results.items()}


def test_a_fact_set_on_two_workers_equals_the_in_process_run(manager_factory, tmp_path):
    chosen = facts(4)
    local = FS.run_fact_set(SPEC, 4, chosen, tmp_path / "local", SETTINGS, n_boot=100)
    jobs = manager_factory(workers=2)
    seen = []
    ray_run = FS.run_fact_set(SPEC, 4, chosen, tmp_path / "ray", SETTINGS, executor=FS.RayExecutor(jobs),
                              progress=lambda p: seen.append(p.finished_facts), n_boot=100)
    assert sorted(ray_run.computed) == sorted(local.computed) == sorted(f.id for f in chosen)
    assert seen[-1] == 4 and seen == sorted(seen)  # progress streams back as facts end
    for f in chosen:
        a, b = _grids(tmp_path / "local", f.id), _grids(tmp_path / "ray", f.id)
        for k in SETTINGS.kinds:
            for m in TR.METRICS:
                np.testing.assert_allclose(b[k][m], a[k][m], rtol=1e-6, atol=1e-6, equal_nan=True)
    with np.load(tmp_path / "local" / "aie.npz") as za, np.load(tmp_path / "ray" / "aie.npz") as zb:
        for k in SETTINGS.kinds:
            np.testing.assert_allclose(zb[k], za[k], rtol=1e-6, atol=1e-9)
        assert int(za["n_facts"]) == int(zb["n_facts"])
    # the facts were spread over both workers (the events name each fact's worker slot and process)
    events = [e for e in FS.FactSetFolder(tmp_path / "ray").events() if e["event"] == "done"]
    assert {e["worker"] for e in events} == {0, 1} and len({e["pid"] for e in events}) == 2


@pytest.mark.slow  # ~1 min of Ray work; resume is also tested in process (test_factset_engine)
def test_a_background_run_is_followed_stopped_found_again_and_resumed(manager_factory, tmp_path):
    jobs = manager_factory(workers=1)
    runs = FactSetRuns(tmp_path, lambda: jobs)
    chosen = facts(5)
    rid = runs.start("alice", SPEC, 4, chosen, SETTINGS)
    with pytest.raises(Exception, match="already have 1 fact set"):
        runs.start("alice", SPEC, 4, chosen, SETTINGS)
    end = time.time() + 300
    while time.time() < end and runs.get(rid).progress.finished_facts < 1:
        time.sleep(0.1)
    assert runs.get(rid).state == "running"
    runs.stop(rid)
    r = runs.wait(rid, timeout=300)
    assert r.state == "stopped"
    kept = r.progress.done
    assert 1 <= kept < 5
    # a server restart: a new registry finds the run from its folder, incomplete, and resumes only the rest
    fresh = FactSetRuns(tmp_path, lambda: jobs)
    again = fresh.get(rid)
    assert again.state == "interrupted" and again.progress.resumed == kept and again.progress.total == 5
    folder = fresh.folder(rid)
    fresh.start("alice", SPEC, 4, folder.facts(), SETTINGS, run_id=rid)
    r = fresh.wait(rid, timeout=600)
    assert r.state == "done", r.message
    assert r.progress.resumed == kept and r.progress.done == 5 - kept
    done = [e["id"] for e in folder.events() if e["event"] == "done"]
    assert sorted(done) == sorted(f.id for f in chosen)  # each fact once over both runs
    assert FactSetRuns(tmp_path, lambda: jobs).get(rid).state == "done"
    with pytest.raises(Exception, match="not a fact-set run id"):
        fresh.folder("../../etc")


@pytest.mark.slow
def test_trace_set_on_a_cluster_joined_by_address(tmp_path):
    """`ray start --head` on its own port; `trace-set --ray-address` joins it and gives the in-process numbers."""
    from tests.jobs.test_manager import _free_port, _kill_cluster

    port = _free_port()
    temp_dir = f"/tmp/rwkv-inspector-ray-test-{os.getpid()}-{port}"
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={temp_dir}"], env=env, capture_output=True,
                           text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        facts_file = tmp_path / "facts.jsonl"
        facts_file.write_text("".join(json.dumps({"id": f.id, "prompt": f.prompt, "subject": f.subject,
                                                  "answer": f.answer}) + "\n" for f in facts(3)))
        out = subprocess.run([sys.executable, "-m", "rwkv_core", "trace-set", str(DEMO_V7), str(facts_file), "--out",
                              str(tmp_path / "cluster"), "--ray-address", f"127.0.0.1:{port}", "--workers", "2",
                              "--samples", "2", "--kinds", "block,ffn", "--window", "2"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        local = FS.run_fact_set(SPEC, 4, facts(3), tmp_path / "local", SETTINGS, n_boot=100)
        for fid in local.computed:
            a, b = _grids(tmp_path / "local", fid), _grids(tmp_path / "cluster", fid)
            for k in SETTINGS.kinds:
                np.testing.assert_allclose(b[k]["prob"], a[k]["prob"], rtol=1e-6, atol=1e-6, equal_nan=True)
    finally:
        _kill_cluster(temp_dir)
