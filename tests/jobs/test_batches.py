"""Batches of jobs on a real local Ray: the tasks spread over both workers and give the in-process runner's grids,
each outcome handed out once; another user's plain job takes the next free worker; failed tasks are rerun (a killed
worker, an error) up to their attempts; cancel drops the waiting tasks and stops the running ones; a batch counts as
one waiting item."""
from __future__ import annotations

import dataclasses
import os
import signal
import time

import numpy as np
import pytest
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.jobs.manager import JobLimitError
from rwkv_core.jobs.worker import JobRunner
from tests.jobs.test_worker_results import SPECS, trace_job


@pytest.fixture(scope="module")
def pool(ray_local):
    """One manager with two workers for the tests that need no settings of their own (each test its own users):
    the workers start and load the demo model once."""
    from rwkv_core.jobs.manager import ClusterSettings, JobManager

    jobs = JobManager(ClusterSettings(workers=2, stop_grace_s=10))
    yield jobs
    jobs.close()


def small(seed: int, **over):
    """A short trace (one block grid, 2 noise samples, ~1 s on one thread); seeds make the tasks' grids differ."""
    return dataclasses.replace(trace_job(**dict(dict(samples=2, seed=seed), **over)), specs=SPECS[:1])


def assert_same_grids(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g.kind, g.mode, g.window) == (e.kind, e.mode, e.window)
        for m in TR.METRICS:
            np.testing.assert_allclose(g.grids[m], e.grids[m], rtol=1e-6, atol=1e-6, equal_nan=True)


def reference(tasks: list) -> list:
    """Each task's trace run directly by the worker's runner in this process (one torch thread, as each worker: a
    second thread only spins on a busy 2-core machine; the process's own thread count is put back)."""
    threads = torch.get_num_threads()
    try:
        runner = JobRunner(torch_threads=1)
        return [runner.run(f"ref-{i}", t).value for i, t in enumerate(tasks)]
    finally:
        torch.set_num_threads(threads)


def collect(jobs, bid: str, timeout: float = 300) -> tuple[list, object]:
    """Every (task, outcome) take_results hands out until the batch ends, and its final status."""
    got, end = [], time.time() + timeout
    while True:
        got += jobs.take_results(bid)
        st = jobs.batch_status(bid)
        if st.ended or time.time() > end:
            got += jobs.take_results(bid)
            return got, st
        time.sleep(0.05)


def wait_for(cond, timeout: float = 300, what: str = ""):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_batch_spreads_over_the_workers_and_hands_out_each_outcome_once(pool):
    jobs = pool
    tasks = [small(seed) for seed in range(1, 7)]
    bid = jobs.submit_batch("alice", tasks, "six facts")
    assert bid.startswith("batch-")
    st = jobs.batch_status(bid)
    assert (st.state, st.total, st.user, st.label) in {("queued", 6, "alice", "six facts"),
                                                       ("running", 6, "alice", "six facts")}
    wait_for(lambda: jobs.batch_status(bid).running == 2, what="both workers running tasks")
    st = wait_for(lambda: (s := jobs.batch_status(bid)).cells_done > 0 and s, what="the first cells")
    assert 0 < st.fraction < 1 and st.seconds_left > 0 and st.state == "running"
    got, st = collect(jobs, bid)
    assert (st.state, st.done, st.failed, st.running, st.waiting, st.dropped) == ("done", 6, 0, 0, 0, 0), st
    assert st.fraction == 1.0 and st.seconds > 0 and st.seconds_left == 0
    assert sorted(i for i, _ in got) == list(range(6))  # each task once
    assert jobs.take_results(bid) == []
    expected = reference(tasks)
    for i, out in got:
        assert out.ok and out.extra["attempts"] == 1
        assert out.cells_done == out.cells_total > 0
        assert_same_grids(out.value, expected[i])  # task i's own grids
    assert {out.extra["worker"] for _, out in got} == {0, 1}
    assert len({out.extra["pid"] for _, out in got}) == 2
    spans = sorted((out.extra["started_at"], out.extra["started_at"] + out.seconds) for _, out in got)
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:])), spans  # two tasks at once
    assert jobs.counts()["batches"] == 0


def test_plain_jobs_take_the_next_free_workers(pool):
    """While ann's batch holds both workers, ben's plain job and then ann's own take the next two free workers:
    each waits for one running task, not for the batch."""
    jobs = pool
    a = jobs.submit_batch("ann", [small(seed) for seed in range(1, 5)], "batch")
    wait_for(lambda: jobs.batch_status(a).running == 2, what="ann's batch on both workers")
    b = jobs.submit("ben", small(9), "another user's trace")
    own = jobs.submit("ann", small(10), "ann's own trace")
    t0 = time.time()
    starts_plain = []
    for jid in (b, own):
        st = jobs.wait(jid, timeout=300)
        assert st.state == "done", st.message
        starts_plain.append(st.outcome.extra["started_at"])
    got, st = collect(jobs, a)
    assert st.state == "done" and len(got) == 4
    starts = sorted(out.extra["started_at"] for _, out in got)
    # no task of ann's left the queue between the submits and the plain jobs' starts
    assert not [s for s in starts if t0 < s < max(starts_plain)], (t0, starts_plain, starts)
    assert max(starts_plain) < starts[-1]  # and they did not wait for the whole batch


@pytest.mark.slow  # fairness between two batches; plain jobs before batches stays in the default run
def test_two_users_batches_share_the_workers(pool):
    jobs = pool
    a = jobs.submit_batch("cat", [small(seed) for seed in range(1, 4)], "a")
    wait_for(lambda: jobs.batch_status(a).running == 2, what="cat's batch on both workers")
    b = jobs.submit_batch("dan", [small(seed) for seed in range(4, 6)], "b")
    t0 = time.time()
    (ga, _), (gb, _) = collect(jobs, a), collect(jobs, b)
    order = sorted([(o.extra["started_at"], "a") for _, o in ga] + [(o.extra["started_at"], "b") for _, o in gb])
    users = [u for s, u in order if s > t0]
    assert users == ["b", "a", "b"], users  # turns alternate once dan has tasks waiting (not cat's batch first)


@pytest.mark.slow  # a cap on one batch
def test_max_workers_caps_a_batch(pool):
    jobs = pool
    bid = jobs.submit_batch("carol", [small(seed) for seed in range(1, 3)], "one at a time", max_workers=1)
    seen = set()
    while not (st := jobs.batch_status(bid)).ended:
        seen.add(st.running)
        time.sleep(0.02)
    assert seen <= {0, 1} and st.done == 2
    spans = sorted((o.extra["started_at"], o.extra["started_at"] + o.seconds) for _, o in jobs.take_results(bid))
    assert all(b0 >= a1 for (_, a1), (b0, _) in zip(spans, spans[1:])), spans


def test_failing_tasks_get_their_attempts_and_a_warning_is_final(pool):
    jobs = pool
    bad, warn = small(1, subject="The Louvre"), small(1, corruption="replace", alt_subject="Rome")
    bid = jobs.submit_batch("erin", [bad, warn, small(2)], "mixed", retries=1)
    none = jobs.submit_batch("erin", [bad], "no retry", retries=0)
    three = jobs.submit_batch("erin", [bad], "two retries", retries=2)
    got, st = collect(jobs, bid)
    assert (st.state, st.done, st.failed, st.retried) == ("done", 3, 1, 1), st
    assert st.message == "1 of 3 task(s) failed; the first: the subject 'The Louvre' does not occur in the prompt"
    out = dict(got)
    assert len(got) == 3
    assert out[0].error == "the subject 'The Louvre' does not occur in the prompt" and out[0].extra["attempts"] == 2
    assert out[1].warning and "same number of tokens" in out[1].warning and out[1].extra["attempts"] == 1
    assert out[2].ok and out[2].extra["attempts"] == 1
    [(_, o)] = collect(jobs, none)[0]
    assert o.error and o.extra["attempts"] == 1
    [(_, o)] = collect(jobs, three)[0]
    assert o.error and o.extra["attempts"] == 3


def test_cancel_drops_waiting_tasks_and_stops_running_ones(pool):
    jobs = pool
    tasks = [dataclasses.replace(small(seed, samples=6), memory_budget=1 << 16) for seed in range(1, 7)]
    bid = jobs.submit_batch("frank", tasks, "to be stopped")
    wait_for(lambda: (s := jobs.batch_status(bid)).running == 2 and s.cells_done > 0, what="two tasks with cells")
    early = jobs.take_results(bid)
    t0 = time.time()
    jobs.cancel(bid)
    st = jobs.batch_status(bid)
    assert st.waiting == 0 and st.dropped == 6 - st.done - st.running >= 2
    got, st = collect(jobs, bid, timeout=60)
    assert time.time() - t0 < 15
    assert st.state == "cancelled" and st.running == 0
    got = early + got
    assert len({i for i, _ in got}) == len(got) == st.done == 6 - st.dropped  # each once, none for dropped ones
    stopped = [o for _, o in got if o.extra.get("stopped")]
    assert len(stopped) >= 1
    for o in stopped:
        assert o.ok and o.value is not None, o.error  # ended by itself, with the cells done so far
        assert o.cells_done <= o.cells_total  # (0 of 0: stopped before its grids began)
        assert o.value[0].complete == (0 < o.cells_done == o.cells_total)
    assert any(not o.value[0].complete for o in stopped)  # stopped early, not run to the end
    assert jobs.take_results(bid) == []
    jobs.forget(bid)
    assert jobs.batch_status(bid) is None
    assert jobs.wait(jobs.submit("frank", small(1), "after"), timeout=300).state == "done"  # the workers are free


def test_a_batch_counts_as_one_waiting_item(pool):
    jobs = pool  # per_user_running 1, per_user_queued 4
    first = jobs.submit("gina", small(1, samples=30), "holds gina's one running job")
    wait_for(lambda: jobs.status(first).state == "running", what="gina's first job on a worker")
    bid = jobs.submit_batch("gina", [small(s) for s in range(2, 7)], "five tasks")  # one counted, not five
    plain = [jobs.submit("gina", small(7), f"plain {k}") for k in range(3)]
    assert jobs.batch_status(bid).waiting >= 1  # (one free worker: its tasks still wait)
    with pytest.raises(JobLimitError, match=r"you already have 4 jobs waiting \(the limit per user is 4\).*"
                                            r"a batch with tasks waiting counts as one; you have 1"):
        jobs.submit("gina", small(8), "one too many")
    with pytest.raises(JobLimitError, match="you already have 4 jobs waiting"):
        jobs.submit_batch("gina", [small(8)], "one too many")
    other = jobs.submit_batch("hank", [small(8)], "another user")  # the limit is per user
    for x in [first, bid, other] + plain:
        jobs.forget(x)
    assert jobs.batch_status(bid) is None and jobs.take_results(bid) == []
    wait_for(lambda: jobs.counts()["running"] == 0, timeout=60, what="the stopped jobs and tasks to end")
    assert jobs.counts()["batches"] == 0


@pytest.mark.slow  # a worker killed and restarted: ~20 s
def test_a_task_whose_worker_is_killed_is_rerun(pool):
    """(Last of the pool's tests: it kills a worker, which Ray restarts.)"""
    jobs = pool
    tasks = [small(3), small(4)]
    bid = jobs.submit_batch("dora", tasks, "one to be killed")
    wait_for(lambda: jobs.batch_status(bid).running == 2, what="both tasks on a worker")
    time.sleep(0.5)  # in the workers' hands (killed before or while it runs, the attempt fails the same way)
    os.kill(jobs.worker_pids()[0], signal.SIGKILL)
    got, st = collect(jobs, bid)
    assert (st.state, st.done, st.failed, st.retried) == ("done", 2, 0, 1), st
    assert sorted(i for i, _ in got) == [0, 1]
    assert sorted(o.extra["attempts"] for _, o in got) == [1, 2]
    expected = reference(tasks)
    for i, out in got:
        assert out.ok, out.error
        assert_same_grids(out.value, expected[i])


@pytest.mark.slow
def test_two_batches_a_killed_worker_and_a_cancel_lose_nothing(manager_factory):
    """Two users' batches at once, read by another thread while a worker is killed and one batch is cancelled:
    every task of the other batch comes back once (the bad ones after two attempts, the rest ok), the cancelled
    batch's outcomes come back once and its other tasks are counted dropped."""
    import threading

    jobs = manager_factory(workers=2)
    a_tasks = [small(s, subject="The Louvre") if s % 4 == 0 else small(s) for s in range(1, 13)]  # 3 bad of 12
    b_tasks = [small(s) for s in range(20, 30)]
    a, b = jobs.submit_batch("ada", a_tasks, "a"), jobs.submit_batch("bea", b_tasks, "b")
    taken: dict[str, list] = {a: [], b: []}
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for bid in (a, b):
                taken[bid] += jobs.take_results(bid)
            time.sleep(0.01)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_for(lambda: jobs.batch_status(a).done >= 3 and jobs.batch_status(a).running, what="a's third task")
        os.kill(jobs.worker_pids()[1], signal.SIGKILL)
        wait_for(lambda: jobs.batch_status(b).done >= 3, what="b's third task")
        jobs.cancel(b)
        sa, sb = jobs.wait_batch(a, timeout=600), jobs.wait_batch(b, timeout=600)
    finally:
        stop.set()
        thread.join()
    for bid in (a, b):
        taken[bid] += jobs.take_results(bid)
    assert sa.state == "done" and sb.state == "cancelled"
    assert sorted(i for i, _ in taken[a]) == list(range(12))
    for i, o in taken[a]:
        if (i + 1) % 4 == 0:  # a bad one
            assert o.error and o.extra["attempts"] == 2, (i, o.error)
        else:
            assert o.ok and o.extra["attempts"] in (1, 2), (i, o.error)  # 2: on the killed worker
    assert sa.failed == 3 and sa.retried >= 3
    idx = [i for i, _ in taken[b]]
    assert len(set(idx)) == len(idx) == sb.done and sb.dropped == 10 - sb.done > 0
    # a stopped task may have needed its worker restarted (one still loading after the kill: no batch to stop after)
    assert all(o.ok or o.extra.get("stopped") for _, o in taken[b]), [(i, o.error) for i, o in taken[b] if not o.ok]
    assert jobs.take_results(a) == jobs.take_results(b) == []
