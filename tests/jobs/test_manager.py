"""The job manager on a real local Ray: fair order between users and the per-user limits, a worker killed mid-job
(its job fails with one line, the next job runs), Stop within a few seconds, and a Ray cluster joined by address."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rwkv_core.jobs.manager import JobLimitError
from tests.jobs.test_worker_results import PROMPT, trace_job

ROOT = Path(__file__).resolve().parents[2]


def started_order(jobs, ids, timeout=600):
    """Job ids in the order they left the queue (polled)."""
    order, end = [], time.time() + timeout
    while len(order) < len(ids) and time.time() < end:
        for jid in ids:
            st = jobs.status(jid)
            if jid not in order and st.state != "queued":
                order.append(jid)
        time.sleep(0.02)
    return order


def test_users_are_served_round_robin_and_limits_are_told(manager_factory):
    jobs = manager_factory(workers=1, per_user_running=1, per_user_queued=3)
    small = trace_job(samples=1)
    a = [jobs.submit("alice", small, f"a{i}") for i in range(3)]
    b = jobs.submit("bob", small, "b0")
    with pytest.raises(JobLimitError, match="you already have 3 jobs waiting .the limit per user is 3."):
        for _ in range(3):
            jobs.submit("alice", small, "one too many")
    # while alice's first job runs, her others wait on her own limit; bob's waits for the worker
    st = jobs.status(a[1])
    if st.state == "queued" and jobs.status(a[0]).state == "running":
        assert st.message == "waiting: you have 1 job(s) running and the limit per user is 1"
    order = started_order(jobs, a + [b])
    assert order[:2] == [a[0], b], order  # bob's one job is not held back by alice's three
    for jid in a + [b]:
        assert jobs.wait(jid, timeout=600).state == "done"


def test_per_user_running_limit_with_two_workers(manager_factory):
    jobs = manager_factory(workers=2, per_user_running=1)
    long = trace_job(samples=30)
    first = jobs.submit("carol", long, "long")
    second = jobs.submit("carol", trace_job(samples=1), "short")
    while jobs.status(first).state == "queued":
        time.sleep(0.05)
    time.sleep(1.0)  # a worker is free, but carol is at her limit
    st = jobs.status(second)
    assert st.state == "queued"
    assert st.message == "waiting: you have 1 job(s) running and the limit per user is 1"
    other = jobs.submit("dave", trace_job(samples=1), "other user")
    assert jobs.wait(other, timeout=600).state == "done"  # the free worker serves another user meanwhile
    jobs.cancel(first)
    assert jobs.wait(second, timeout=600).state == "done"


def test_a_killed_worker_fails_one_job_and_the_next_runs(manager_factory):
    jobs = manager_factory(workers=1)
    jid = jobs.submit("erin", trace_job(samples=60), "to be killed")
    while (jobs.status(jid).done or 0) == 0:
        assert not jobs.status(jid).ended
        time.sleep(0.05)
    done_before = jobs.status(jid).done
    os.kill(jobs.worker_pids()[0], signal.SIGKILL)
    st = jobs.wait(jid, timeout=120)
    assert st.state == "failed"
    assert st.message.startswith("the worker stopped unexpectedly at ")
    assert "\n" not in st.message
    assert int(st.message.split(" at ")[1].split(" of ")[0]) >= done_before
    nxt = jobs.wait(jobs.submit("erin", trace_job(samples=1), "after the kill"), timeout=600)
    assert nxt.state == "done", nxt.message  # the restarted worker took it


def test_stop_ends_a_job_within_seconds_with_its_cells(manager_factory):
    jobs = manager_factory(workers=1, stop_grace_s=10)
    jid = jobs.submit("frank", trace_job(samples=60), "to be stopped")
    while (jobs.status(jid).done or 0) == 0:
        time.sleep(0.05)
    t0 = time.time()
    jobs.cancel(jid)
    st = jobs.wait(jid, timeout=60)
    assert time.time() - t0 < 10
    assert st.state == "cancelled"
    assert 0 < st.outcome.cells_done < st.outcome.cells_total
    assert not st.outcome.value[0].complete


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_cluster(temp_dir: str) -> None:
    """Kill the processes of the cluster started with this temp dir, and their children (not this session's Ray)."""
    def cmdline(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def parent(pid):
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    victims = {p for p in pids if temp_dir in cmdline(p)}
    grew = True
    while grew:
        more = {p for p in pids if parent(p) in victims} - victims
        victims |= more
        grew = bool(more)
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_cluster_joined_by_address(tmp_path):
    """`ray start --head` on 127.0.0.1 with its own port and token; a separate process (the app's place) joins it by
    RWKV_INSPECTOR_RAY_ADDRESS's value and runs a trace there; the cluster is stopped again."""
    pytest.importorskip("ray")
    port = _free_port()
    temp_dir = f"/tmp/rwkv-inspector-ray-test-{os.getpid()}-{port}"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    ray_cli = str(Path(sys.executable).parent / "ray")
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={temp_dir}"], env=env, capture_output=True,
                           text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        script = f"""
import json, sys
from rwkv_core.jobs.manager import ClusterSettings, JobManager
from tests.jobs.test_worker_results import trace_job
import ray
jobs = JobManager(ClusterSettings(address="127.0.0.1:{port}"))
st = jobs.wait(jobs.submit("remote", trace_job(samples=2), "t"), timeout=600)
node = ray.get_runtime_context().gcs_address
print(json.dumps({{"state": st.state, "message": st.message, "gcs": node,
                   "grid": st.outcome.value[0].grids["prob"].tolist() if st.outcome.value else None}}))
jobs.close()
"""
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["state"] == "done", res["message"]
        assert res["gcs"].endswith(f":{port}")  # the cluster it joined, not a new local instance

        import numpy as np

        from rwkv_core.analysis import tracing as TR
        from rwkv_core.io.checkpoint import load_model
        from rwkv_core.io.tokenizer import tokenizer_for
        from tests.jobs.conftest import DEMO_V7

        model = load_model(DEMO_V7)
        job = trace_job(samples=2)
        setup = TR.prepare_trace(model, tokenizer_for(model.cfg.vocab_size, kind="bytes"), PROMPT, **dict(job.prepare))
        expected = TR.trace_grids(setup, [job.specs[0]])[0].grids["prob"]
        np.testing.assert_allclose(np.array(res["grid"], dtype=float), expected, rtol=1e-6, atol=1e-6)
    finally:
        _kill_cluster(temp_dir)
    time.sleep(1)
    left = [p for p in os.listdir("/proc") if p.isdigit() and temp_dir in
            Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")] if Path("/proc").exists() else []
    assert not left


@pytest.mark.parametrize("batches", [2, 1])
def test_a_stop_waits_for_a_slow_batch_and_keeps_its_cells(manager_factory, batches):
    """A stopped job whose batches take longer than `stop_grace_s` still ends by itself and brings back its cells:
    its worker gets three of the job's own batch times before it is restarted (a slow or busy machine loses
    nothing to a Stop), also when the Stop comes right after the first cells (timed from the job's start)."""
    jobs = manager_factory(workers=1, stop_grace_s=0.01)
    jid = jobs.submit("gina", trace_job(samples=200), "slow batches")
    seen: set[int] = set()
    while len(seen - {0}) < batches:  # this many batches done
        st = jobs.status(jid)
        assert not st.ended, st.message
        seen.add(st.done or 0)
        time.sleep(0.02)
    jobs.cancel(jid)
    st = jobs.wait(jid, timeout=300)
    assert st.state == "cancelled", st.message
    assert st.outcome.value is not None, st.outcome.error  # not "stopped (its worker was restarted to stop it)"
    assert 0 < st.outcome.cells_done < st.outcome.cells_total
