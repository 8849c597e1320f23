"""The job manager: Ray started on this machine (or joined by address), a few long-lived worker actors, and a fair
queue of jobs between users.

Jobs are served round robin between users (one user's ten jobs do not hold back another's one), each user runs at
most `per_user_running` jobs at a time and may have at most `per_user_queued` waiting. A dispatcher thread hands
jobs to idle workers, reads their progress, and ends jobs: Stop asks the worker to stop after its batch in hand (the
cells done so far come back) and restarts the worker if it has not stopped within `stop_grace_s` (or three of the
job's own batch times, if longer). A worker that dies (out of memory, killed, crashed) fails its job with one line and
is restarted by Ray; the next job runs on it.

**Batches** (`submit_batch`: many independent jobs, such as one trace per fact of a fact set) spread their jobs, the
batch's *tasks*, over the workers:
- Turns: when a worker is free, the user served least recently who has something runnable gets it (a user never
  served comes first). A user's turn gives their oldest plain job if they are under `per_user_running`, else one task
  of their oldest batch that runs fewer than its `max_workers` tasks. So one user's batch fills an idle cluster, two
  users' batches share the workers about evenly, and a plain job (interactive, short) submitted while batches run
  takes the first free worker that comes to its user's turn: behind one user's batch it waits for one task to end,
  not for the batch (and behind several users' batches, for one task of each user served before it).
- Limits: `per_user_running` counts plain jobs only; a batch's tasks are limited by its `max_workers` (default: every
  worker). A batch counts as one waiting item toward `per_user_queued` while any of its tasks waits.
- A task is dispatched like a job (`run.remote(task id, job)`; progress, Stop, the grace/kill rule and worker deaths
  as above, its worker keeps its loaded model for the next task). A task that ends with an error, or whose worker
  died, is queued again at the front of its batch (so it runs on the next free, possibly restarted, worker) until it
  has had `1 + retries` attempts; a warning outcome (a setting to change) and a stopped task are final.
- Results: every task's final outcome is kept until `take_results` hands it out, exactly once, as (task index,
  outcome) with `extra["attempts"]` (1 + reruns), `extra["worker"]` (the worker slot of its last attempt) and
  `extra["stopped"]` (True when cancel stopped it: its value holds the cells done so far, or it has an error when the
  worker had to be restarted). Every outcome of a job or task that ran, a plain job's too, has `extra["started_at"]`
  (epoch seconds it was dispatched) and, when its worker returned it, `extra["pid"]` (the worker's process).
- `cancel(batch id)` drops the waiting tasks (they have no outcome; `BatchStatus.dropped` counts them) and stops the
  running ones like a job; the batch is "cancelled" once none runs. `forget(batch id)` cancels it too and it is gone
  for the caller at once (batch_status None, take_results []); its record goes when its stopped tasks end.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from rwkv_core.errors import RWKVInspectorError
from rwkv_core.jobs.specs import JobOutcome
from rwkv_core.jobs.worker import Job, job_board_class, job_worker_class, one_line

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
BATCH_STATES = ("queued", "running", "done", "cancelled")  # "done" also when some tasks failed


class JobLimitError(RWKVInspectorError):
    """A user asked for more jobs than the per-user limit allows: one line saying how many and what to do."""


@dataclass
class JobStatus:
    """What a caller sees of a job: its state, progress and, once ended, its outcome."""

    id: str
    user: str
    label: str
    state: str  # one of STATES
    done: int = 0  # cells done
    total: int = 0  # cells in all (0 until the worker starts)
    seconds: float = 0.0  # since the worker started it
    ahead: int = 0  # jobs before it (queued jobs only)
    message: str = ""  # why it waits, why it failed
    outcome: Optional[JobOutcome] = None

    @property
    def ended(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass
class BatchStatus:
    """What a caller sees of a batch: its state, how many of its tasks ended, run and failed, and the cells of the
    running tasks (a progress bar that moves between tasks: `fraction`). total = done + running + waiting + dropped."""

    id: str
    user: str
    label: str
    state: str  # one of BATCH_STATES
    total: int  # tasks
    done: int = 0  # tasks with their final outcome (ok, warning, failed after its attempts, or stopped)
    failed: int = 0  # of `done`: an error after the last attempt (a stopped task is not counted here)
    running: int = 0  # tasks on a worker now
    waiting: int = 0  # tasks queued (retries included)
    dropped: int = 0  # tasks cancel dropped before they ran (no outcome)
    retried: int = 0  # attempts rerun so far
    cells_done: int = 0  # of the running tasks
    cells_total: int = 0  # of the running tasks (0 until their workers start them)
    seconds: float = 0.0  # since its first task was dispatched (to its end, once ended)
    ahead: int = 0  # jobs and tasks before it (a batch not started yet)
    message: str = ""  # why it waits, what stops it, how many failed

    @property
    def ended(self) -> bool:
        return self.state in ("done", "cancelled")

    @property
    def fraction(self) -> float:
        """Tasks done plus the running tasks' share of their cells, over all tasks (0..1)."""
        if self.total == 0:
            return 1.0
        part = self.running * self.cells_done / self.cells_total if self.cells_total else 0.0
        return min(1.0, (self.done + self.dropped + part) / self.total)

    @property
    def seconds_left(self) -> Optional[float]:
        """Time to the end at the pace so far (seconds); None before any progress."""
        f = self.fraction
        if self.ended or f >= 1.0:
            return 0.0
        return None if f <= 0.0 or self.seconds <= 0.0 else self.seconds * (1.0 - f) / f


@dataclass
class _Job:
    id: str
    user: str
    label: str
    job: Job
    submitted: float
    state: str = "queued"
    worker: Optional[int] = None
    ref: Any = None
    progress: tuple = (0, 0, 0.0)
    stop_at: Optional[float] = None
    progress_at: Optional[float] = None  # when the progress last moved (or the job started running)
    longest_step_s: float = 0.0  # the longest wait for a progress move (a batch on the worker; the first: with
    # the job's clean and corrupted runs, so a Stop right after the first cells still waits long enough for a batch)
    message: str = ""
    outcome: Optional[JobOutcome] = None
    ended_at: Optional[float] = None
    batch: Optional[str] = None  # a batch's task: the batch id (the record lives only while the task runs)
    task: int = -1  # its index in the batch
    started_at: Optional[float] = None  # when it was dispatched (epoch seconds)


@dataclass
class _Batch:
    """A batch's tasks: which wait, which run (as _Job records), how often each was tried, and the final outcomes
    not yet taken."""

    id: str
    user: str
    label: str
    jobs: list  # [Job], one per task
    retries: int
    max_workers: Optional[int]
    submitted: float
    waiting: deque = field(default_factory=deque)  # task indices; reruns go first
    running: dict = field(default_factory=dict)  # task index -> its attempt's job id
    attempts: list = field(default_factory=list)  # per task: attempts dispatched
    results: list = field(default_factory=list)  # [(task index, JobOutcome)] not taken yet
    done: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0
    first_error: str = ""
    cancelled: bool = False
    forgotten: bool = False
    started_at: Optional[float] = None
    ended_at: Optional[float] = None

    @property
    def state(self) -> str:
        if self.waiting or self.running:
            return "queued" if self.started_at is None else "running"
        return "cancelled" if self.cancelled else "done"


@dataclass
class _Worker:
    handle: Any
    job: Optional[str] = None  # job id it runs
    alive: bool = True  # False while Ray restarts it
    ping: Any = None  # pending ping while restarting


@dataclass
class ClusterSettings:
    """Where jobs run. address None: a Ray instance started on this machine (ray.init); "host:port" or "auto":
    an existing cluster. workers: CPU workers when the cluster has no GPU (one per GPU otherwise).
    torch_threads: per CPU worker (default: this machine's cores shared between the workers)."""

    address: Optional[str] = None
    workers: int = 1
    torch_threads: Optional[int] = None
    per_user_running: int = 1
    per_user_queued: int = 4
    stop_grace_s: float = 10.0  # at least; a job whose batches take longer gets three of its own batch times
    keep_ended_s: float = 3600.0
    object_store_mb: int = 256
    extra_init: dict = field(default_factory=dict)


_RAY_KEEPER: Optional[threading.Thread] = None


def start_ray(settings: ClusterSettings) -> None:
    """ray.init once per process: a local instance (no dashboard, small object store) or the cluster at the address.

    Ray's local processes die with the *thread* that started them (the kernel's parent-death signal follows the
    thread), and a Streamlit script run is a short-lived thread: off the main thread, Ray is started from a thread
    that lives as long as the process."""
    import ray

    global _RAY_KEEPER
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                                  ignore_reinit_error=True, **settings.extra_init)
    if settings.address:
        kwargs["address"] = settings.address
    else:
        kwargs.update(num_cpus=os.cpu_count() or 1, object_store_memory=settings.object_store_mb * 2**20)
    if threading.current_thread() is threading.main_thread():
        ray.init(**kwargs)
        atexit.register(_cancel_abort_alarm)
        return
    started, failure = threading.Event(), []

    def keep():
        try:
            ray.init(**kwargs)
        except BaseException as e:  # handed to the caller
            failure.append(e)
        started.set()
        if not failure:
            threading.Event().wait()  # live as long as the process: Ray's processes are this thread's children

    _RAY_KEEPER = threading.Thread(target=keep, name="rwkv-inspector-ray", daemon=True)
    _RAY_KEEPER.start()
    started.wait()
    if failure:
        raise failure[0]
    atexit.register(_cancel_abort_alarm)


def _cancel_abort_alarm() -> None:
    """Ray's driver handles SIGTERM with abseil's failure signal handler, which arms a 3-second alarm that aborts the
    process (exit code -6, SIGABRT) if it is still shutting down then (ray-project/ray#64830); the server's stop and
    Ray's own shutdown take about that long. Registered after ray.init, this exit handler runs before Ray's shutdown
    and cancels the alarm, so a server stopped with SIGTERM exits normally."""
    if hasattr(signal, "alarm"):
        signal.alarm(0)


def _wait_ended(read, timeout: Optional[float]):
    """Poll read() until it gives None or an ended status, or the timeout (seconds) passes."""
    end = None if timeout is None else time.time() + timeout
    while True:
        st = read()
        if st is None or st.ended or (end is not None and time.time() > end):
            return st
        time.sleep(0.05)


class JobManager:
    """Queue, dispatch and watch jobs on Ray workers (see the module docstring). Thread-safe."""

    def __init__(self, settings: Optional[ClusterSettings] = None):
        import ray

        self.settings = settings or ClusterSettings()
        self._ray = ray
        start_ray(self.settings)
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, deque] = {}  # user -> plain job ids waiting
        self._batches: dict[str, _Batch] = {}  # in submission order (a user's oldest batch first)
        self._users: list[str] = []  # in order of arrival (breaks ties between users never served)
        self._served: dict[str, int] = {}  # user -> turn number of their last dispatch (round robin)
        self._turns = itertools.count()
        self._ids = itertools.count(1)
        self._closed = False
        self._board = job_board_class().remote()
        self._workers = [_Worker(self._new_worker(i)) for i in range(self._worker_count())]
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rwkv-inspector-jobs", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- workers

    def _worker_count(self) -> int:
        gpus = int(self._ray.cluster_resources().get("GPU", 0))
        return gpus if gpus > 0 else max(1, int(self.settings.workers))

    def _new_worker(self, slot: int):
        cls = job_worker_class()
        if int(self._ray.cluster_resources().get("GPU", 0)) > 0:
            return cls.options(num_gpus=1, num_cpus=1).remote(None, self._board, slot)
        n = max(1, int(self.settings.workers))
        if self.settings.address:  # a cluster: one CPU each, spread over the machines
            threads = self.settings.torch_threads or 1
            return cls.options(num_cpus=1, scheduling_strategy="SPREAD").remote(threads, self._board, slot)
        # this machine: the cores shared by thread counts, not by Ray's CPU resource (which would leave a second
        # manager in the same process, such as a test's, waiting for CPUs the first one's idle workers hold)
        threads = self.settings.torch_threads or max(1, (os.cpu_count() or 1) // n)
        return cls.options(num_cpus=0).remote(threads, self._board, slot)

    def worker_pids(self, timeout: float = 120) -> list[int]:
        """Process ids of the workers (for the operator, and for tests that kill one), as each reported it when it
        started (answered while they compute)."""
        end = time.time() + timeout
        pids = []
        for slot in range(len(self._workers)):
            pid = None
            while pid is None and time.time() < end:
                pid = self._ray.get(self._board.pid.remote(slot), timeout=timeout)
                if pid is None:
                    time.sleep(0.1)
            pids.append(pid)
        return pids

    @property
    def n_workers(self) -> int:
        return len(self._workers)

    # ---------------------------------------------------------------- the caller's side

    def submit(self, user: str, job: Job, label: str = "") -> str:
        """Queue a job for `user`; JobLimitError when the user already has `per_user_queued` jobs waiting."""
        with self._lock:
            q = self._admit(user)
            jid = f"job-{next(self._ids)}-{os.getpid()}"
            self._jobs[jid] = _Job(jid, user, label, job, time.time())
            q.append(jid)
        self._wake.set()
        return jid

    def submit_batch(self, user: str, jobs: Sequence[Job], label: str = "", *, retries: int = 1,
                     max_workers: Optional[int] = None) -> str:
        """Queue a batch of independent jobs (its tasks) for `user`: they run on every worker the user's turns give
        them (at most `max_workers` at once; None: all), a task that fails (an error, or its worker died) is rerun up
        to `retries` times, and `take_results` hands out each task's final outcome once (see the module docstring).
        The batch counts as one waiting item toward `per_user_queued` (JobLimitError as for submit). Returns its id."""
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be 1 or more (or None: every worker), not {max_workers}")
        with self._lock:
            self._admit(user)
            bid = f"batch-{next(self._ids)}-{os.getpid()}"
            b = _Batch(bid, user, label, list(jobs), int(retries), max_workers, time.time())
            b.waiting.extend(range(len(b.jobs)))
            b.attempts = [0] * len(b.jobs)
            if not b.jobs:
                b.ended_at = b.submitted
            self._batches[bid] = b
        self._wake.set()
        return bid

    def _admit(self, user: str) -> deque:
        """The user's queue of plain jobs, once they may add one more waiting item (else JobLimitError)."""
        q = self._queues.setdefault(user, deque())
        if user not in self._users:
            self._users.append(user)
        waiting = self._waiting_items(user)
        if waiting >= self.settings.per_user_queued:
            batches = waiting - len(q)
            counted = f" (a batch with tasks waiting counts as one; you have {batches})" if batches else ""
            raise JobLimitError(f"you already have {waiting} jobs waiting (the limit per user is "
                                f"{self.settings.per_user_queued}): wait for them or stop one{counted}")
        return q

    def _waiting_items(self, user: str) -> int:
        """Plain jobs waiting plus batches with tasks waiting: what per_user_queued limits."""
        return len(self._queues.get(user, ())) + sum(1 for b in self._batches.values()
                                                      if b.user == user and b.waiting)

    def batch_status(self, batch_id: str) -> Optional[BatchStatus]:
        """The batch's state, tasks and progress; None for an unknown (or forgotten) batch."""
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None or b.forgotten:
                return None
            st = BatchStatus(b.id, b.user, b.label, b.state, len(b.jobs), b.done, b.failed, len(b.running),
                             len(b.waiting), b.dropped, b.retried)
            for jid in b.running.values():
                done, total, _ = self._jobs[jid].progress
                st.cells_done += done
                st.cells_total += total
            if b.started_at is not None:
                st.seconds = (b.ended_at or time.time()) - b.started_at
            if st.state == "queued":
                st.ahead = self._ahead_of(b.user, 0)
                st.message = f"waiting for a worker: {st.ahead} job(s) ahead"
            elif st.state == "running" and b.cancelled:
                st.message = f"stopping: {st.running} task(s) still running"
            elif st.state == "running" and st.waiting:
                cap = "" if b.max_workers is None else f" (at most {b.max_workers} at once)"
                st.message = f"{st.running} task(s) running{cap}, {st.waiting} waiting for a worker"
            elif b.failed:
                st.message = f"{b.failed} of {st.total} task(s) failed; the first: {b.first_error}"
            return st

    def take_results(self, batch_id: str) -> list[tuple[int, JobOutcome]]:
        """The batch's task outcomes that ended since the last call, as (task index, outcome), each handed out
        exactly once (in the order they ended); [] for an unknown batch."""
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None or b.forgotten:
                return []
            out, b.results = b.results, []
            return out

    def wait_batch(self, batch_id: str, timeout: Optional[float] = None) -> Optional[BatchStatus]:
        """Block until the batch ends (or the timeout passes) and return its status."""
        return _wait_ended(lambda: self.batch_status(batch_id), timeout)

    def status(self, job_id: str) -> Optional[JobStatus]:
        """The job's state and progress; None for an unknown (or long forgotten) job."""
        with self._lock:
            j = self._jobs.get(job_id)
            if j is None:
                return None
            done, total, secs = j.progress
            st = JobStatus(j.id, j.user, j.label, j.state, done, total, secs, message=j.message, outcome=j.outcome)
            if j.state == "queued":
                st.ahead = self._ahead(j)
                running = self._running(j.user)
                if running >= self.settings.per_user_running:
                    st.message = (f"waiting: you have {running} job(s) running and the limit per user is "
                                  f"{self.settings.per_user_running}")
                else:
                    st.message = f"waiting for a worker: {st.ahead} job(s) ahead"
            return st

    def cancel(self, job_id: str) -> None:
        """Stop a job: a queued one is dropped, a running one stops after its batch in hand. A batch id: its
        waiting tasks are dropped, its running ones stopped (their outcomes still come through take_results)."""
        with self._lock:
            b = self._batches.get(job_id)
            if b is not None:
                self._cancel_batch(b)
            else:
                self._cancel_job(job_id)
        self._wake.set()

    def _cancel_job(self, job_id: str) -> None:
        j = self._jobs.get(job_id)
        if j is None or j.state in ("done", "failed", "cancelled"):
            return
        if j.state == "queued":
            self._queues[j.user].remove(job_id)
            self._end(j, "cancelled", JobOutcome(error="stopped before it started"))
            return
        if j.stop_at is None:
            j.stop_at = time.time()
            self._board.cancel.remote(job_id)

    def forget(self, job_id: str) -> None:
        """Drop an ended job's record (its outcome has been taken); a job still going is stopped first. A batch id:
        the batch is cancelled and gone for the caller at once (None, no results), with any outcomes not taken; its
        record goes when its stopped tasks end."""
        self.cancel(job_id)
        with self._lock:
            b = self._batches.get(job_id)
            if b is not None:
                b.forgotten = True
                if not b.running:
                    del self._batches[job_id]
                return
            j = self._jobs.get(job_id)
            if j is not None and j.state in ("done", "failed", "cancelled"):
                del self._jobs[job_id]

    def wait(self, job_id: str, timeout: Optional[float] = None) -> JobStatus:
        """Block until the job ends (or the timeout passes) and return its status."""
        return _wait_ended(lambda: self.status(job_id), timeout)

    def counts(self) -> dict[str, int]:
        """Jobs queued and running (a batch's tasks counted as jobs), batches not ended, and the workers, for a
        status line."""
        with self._lock:
            return {"queued": sum(len(q) for q in self._queues.values())
                    + sum(len(b.waiting) for b in self._batches.values()),
                    "running": sum(1 for j in self._jobs.values() if j.state == "running"),
                    "batches": sum(1 for b in self._batches.values() if b.ended_at is None),
                    "workers": len(self._workers)}

    def close(self) -> None:
        """Stop the dispatcher and the workers (Ray itself stays up for the process)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        for handle in [w.handle for w in self._workers] + [self._board]:
            try:
                self._ray.kill(handle, no_restart=True)
            except Exception:
                pass

    # ---------------------------------------------------------------- queue

    def _running(self, user: str) -> int:
        """The user's plain jobs running (what per_user_running limits; batch tasks are not counted)."""
        return sum(1 for j in self._jobs.values() if j.user == user and j.state == "running" and j.batch is None)

    def _ahead(self, j: _Job) -> int:
        """Jobs served before j in round robin: those of its own queue before it, up to as many of each other
        user's jobs and batch tasks, and those running."""
        return self._ahead_of(j.user, list(self._queues[j.user]).index(j.id))

    def _ahead_of(self, user: str, mine: int) -> int:
        """Jobs and tasks served before the user's item with `mine` of their own items before it."""
        others = 0
        for u in self._users:
            if u != user:
                tasks = sum(len(b.waiting) for b in self._batches.values() if b.user == u)
                others += min(len(self._queues.get(u, ())) + tasks, mine + 1)
        return mine + others + sum(1 for x in self._jobs.values() if x.state == "running")

    def _next_job(self) -> Optional[_Job]:
        """The next job or task to run, from the user served least recently who has one runnable (a plain job
        under per_user_running first, else a task of their oldest batch under its max_workers); it is marked served."""
        order = sorted(range(len(self._users)), key=lambda i: (self._served.get(self._users[i], -1), i))
        for i in order:
            u = self._users[i]
            q = self._queues.get(u)
            if q and self._running(u) < self.settings.per_user_running:
                j = self._jobs[q.popleft()]
            else:
                b = next((b for b in self._batches.values() if b.user == u and b.waiting and not b.cancelled
                          and (b.max_workers is None or len(b.running) < b.max_workers)), None)
                if b is None:
                    continue
                j = self._task_job(b)
            self._served[u] = next(self._turns)
            return j
        return None

    def _task_job(self, b: _Batch) -> _Job:
        """The batch's next waiting task as a job record (one per attempt), registered as running for the batch."""
        task = b.waiting.popleft()
        b.attempts[task] += 1
        jid = f"{b.id}-task-{task}-{b.attempts[task]}"
        j = _Job(jid, b.user, f"{b.label} #{task}", b.jobs[task], time.time(), batch=b.id, task=task)
        self._jobs[jid] = j
        b.running[task] = jid
        b.started_at = b.started_at or j.submitted
        return j

    def _cancel_batch(self, b: _Batch) -> None:
        """Drop the waiting tasks and stop the running ones (their outcomes come as stopped)."""
        if b.ended_at is not None:
            return
        b.cancelled = True
        b.dropped += len(b.waiting)
        b.waiting.clear()
        for jid in list(b.running.values()):
            self._cancel_job(jid)
        self._batch_maybe_ended(b)

    def _task_ended(self, j: _Job) -> None:
        """A task's attempt ended (its _Job record already ended): queue it again or keep its final outcome."""
        del self._jobs[j.id]
        b = self._batches.get(j.batch)
        if b is None:
            return
        b.running.pop(j.task, None)
        outcome = j.outcome
        stopped = j.stop_at is not None
        if outcome.error is not None and not stopped and not b.cancelled and b.attempts[j.task] <= b.retries:
            log.info("batch %s: task %d failed (%s); running it again", b.id, j.task, outcome.error)
            b.waiting.appendleft(j.task)
            b.retried += 1
            return
        outcome.extra.update(attempts=b.attempts[j.task], worker=j.worker)
        if stopped:
            outcome.extra["stopped"] = True
        elif outcome.error is not None:
            b.failed += 1
            b.first_error = b.first_error or outcome.error
        b.done += 1
        b.results.append((j.task, outcome))
        self._batch_maybe_ended(b)

    def _batch_maybe_ended(self, b: _Batch) -> None:
        if b.waiting or b.running or b.ended_at is not None:
            return
        b.ended_at = time.time()
        if b.forgotten:
            self._batches.pop(b.id, None)

    def _end(self, j: _Job, state: str, outcome: JobOutcome, message: str = "") -> None:
        j.state, j.outcome, j.ended_at = state, outcome, time.time()
        if j.started_at is not None:
            outcome.extra.setdefault("started_at", j.started_at)  # epoch seconds it was dispatched
        self._board.forget.remote(j.id)
        j.message = message or (outcome.error or outcome.warning or "")
        j.ref = None
        if j.worker is not None and self._workers[j.worker].job == j.id:
            self._workers[j.worker].job = None
        if j.batch is not None:
            self._task_ended(j)

    # ---------------------------------------------------------------- dispatcher

    def _loop(self) -> None:
        last_progress = 0.0
        while not self._closed:
            try:
                self._revive()
                self._dispatch()
                self._collect(timeout=0.1)
                if time.time() - last_progress > 0.3:
                    self._read_progress()
                    last_progress = time.time()
                self._enforce_stops()
                self._expire()
            except Exception:  # the dispatcher must outlive anything a worker or Ray throws at it
                log.exception("job dispatcher")
                time.sleep(0.2)
            if not any(j.state in ("queued", "running") for j in list(self._jobs.values())) and not any(
                    b.waiting for b in list(self._batches.values())):
                self._wake.wait(0.5)
                self._wake.clear()

    def _dispatch(self) -> None:
        with self._lock:
            for i, w in enumerate(self._workers):
                if not w.alive or w.job is not None:
                    continue
                j = self._next_job()
                if j is None:
                    return
                j.state, j.worker, j.progress, j.progress_at = "running", i, (0, 0, 0.0), time.time()
                j.started_at = j.progress_at
                j.ref = w.handle.run.remote(j.id, j.job)
                w.job = j.id

    def _collect(self, timeout: float) -> None:
        with self._lock:
            running = {j.ref: j for j in self._jobs.values() if j.state == "running" and j.ref is not None}
        if not running:
            time.sleep(timeout)
            return
        ready, _ = self._ray.wait(list(running), num_returns=len(running), timeout=timeout)
        for ref in ready:
            j = running[ref]
            try:
                outcome: JobOutcome = self._ray.get(ref)
            except Exception as e:  # the worker died: out of memory, killed, crashed
                self._worker_died(j, e)
                continue
            with self._lock:
                j.progress = (outcome.cells_done, outcome.cells_total, outcome.seconds)
                state = "done" if outcome.ok else "failed"
                if j.stop_at is not None and outcome.ok:
                    state = "cancelled"  # stopped: the cells done so far are in the outcome
                self._end(j, state, outcome)

    def _worker_died(self, j: _Job, e: Exception) -> None:
        done, total, _ = j.progress
        text = f"{type(e).__name__}: {e}".lower()
        with self._lock:
            w = self._workers[j.worker]
            w.alive, w.ping = False, None
            if j.stop_at is not None:
                self._end(j, "cancelled", JobOutcome(error="stopped (its worker was restarted to stop it)",
                                                     cells_done=done, cells_total=total))
            elif "memory" in text or "oom" in text:
                self._end(j, "failed", JobOutcome(
                    error=f"the worker ran out of memory at {done} of {total} cells; try fewer noise samples, a "
                          "shorter prompt or a lower RWKV_INSPECTOR_JOB_MEMORY_GB", cells_done=done, cells_total=total))
            else:
                again = "; press the button again to rerun it" if j.batch is None else ""  # a task is rerun for us
                self._end(j, "failed", JobOutcome(
                    error=f"the worker stopped unexpectedly at {done} of {total} cells (killed or crashed: "
                          f"{one_line(e)[:120]}){again}", cells_done=done, cells_total=total))

    def _revive(self) -> None:
        """Workers Ray is restarting: ping until they answer; one that is gone for good is replaced."""
        for i, w in enumerate(self._workers):
            if w.alive:
                continue
            if w.ping is None:
                w.ping = w.handle.ping.remote()
                continue
            ready, _ = self._ray.wait([w.ping], timeout=0)
            if not ready:
                continue
            try:
                self._ray.get(w.ping)
                w.alive, w.ping = True, None
            except self._ray.exceptions.ActorDiedError:
                self._workers[i] = _Worker(self._new_worker(i))
            except Exception:
                w.ping = None  # still restarting: ask again

    def _read_progress(self) -> None:
        with self._lock:
            running = [j.id for j in self._jobs.values() if j.state == "running"]
        if not running:
            return
        try:
            seen = self._ray.get(self._board.progress.remote(running), timeout=5)
        except Exception:
            return
        now = time.time()
        with self._lock:
            for jid, p in seen.items():
                j = self._jobs.get(jid)
                if j is not None and j.state == "running":
                    if tuple(p)[:1] != j.progress[:1]:  # the cells done moved
                        if j.progress_at is not None:  # the first move: since the start (its runs and a batch)
                            j.longest_step_s = max(j.longest_step_s, now - j.progress_at)
                        j.progress_at = now
                    j.progress = tuple(p)

    def _enforce_stops(self) -> None:
        now = time.time()
        with self._lock:
            late = [j for j in self._jobs.values()
                    if j.state == "running" and j.stop_at is not None and now - j.stop_at > self.stop_grace(j)]
        for j in late:
            try:
                self._ray.kill(self._workers[j.worker].handle, no_restart=False)
            except Exception:
                pass
            j.stop_at = now  # the kill ends the job through _collect

    def stop_grace(self, j: _Job) -> float:
        """How long a stopped job may take to end by itself (and bring back its cells) before its worker is
        restarted: `stop_grace_s`, or three times the longest batch it has taken so far on a slow or busy machine."""
        return max(self.settings.stop_grace_s, 3.0 * j.longest_step_s)

    def _expire(self) -> None:
        now = time.time()
        with self._lock:
            for jid in [jid for jid, j in self._jobs.items()
                        if j.ended_at is not None and now - j.ended_at > self.settings.keep_ended_s]:
                del self._jobs[jid]
            for bid in [bid for bid, b in self._batches.items()
                        if b.ended_at is not None and now - b.ended_at > self.settings.keep_ended_s]:
                del self._batches[bid]
