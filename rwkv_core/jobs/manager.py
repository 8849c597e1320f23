"""The job manager: Ray started on this machine (or joined by address), a few long-lived worker actors, and a fair
queue of jobs between users.

Jobs are served round robin between users (one user's ten jobs do not hold back another's one), each user runs at
most `per_user_running` jobs at a time and may have at most `per_user_queued` waiting. A dispatcher thread hands
jobs to idle workers, reads their progress, and ends jobs: Stop asks the worker to stop after its batch in hand (the
cells done so far come back) and restarts the worker if it has not stopped within `stop_grace_s` (or three of the
job's own batch times, if longer). A worker that dies (out of memory, killed, crashed) fails its job with one line and
is restarted by Ray; the next job runs on it.
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
from typing import Any, Optional

from rwkv_core.errors import RWKVInspectorError
from rwkv_core.jobs.specs import JobOutcome
from rwkv_core.jobs.worker import Job, job_board_class, job_worker_class, one_line

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")


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


class JobManager:
    """Queue, dispatch and watch jobs on Ray workers (see the module docstring). Thread-safe."""

    def __init__(self, settings: Optional[ClusterSettings] = None):
        import ray

        self.settings = settings or ClusterSettings()
        self._ray = ray
        start_ray(self.settings)
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, deque] = {}
        self._users: list[str] = []  # round-robin order
        self._rr = 0
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
            q = self._queues.setdefault(user, deque())
            if user not in self._users:
                self._users.append(user)
            if len(q) >= self.settings.per_user_queued:
                raise JobLimitError(f"you already have {len(q)} jobs waiting (the limit per user is "
                                    f"{self.settings.per_user_queued}): wait for them or stop one")
            jid = f"job-{next(self._ids)}-{os.getpid()}"
            self._jobs[jid] = _Job(jid, user, label, job, time.time())
            q.append(jid)
        self._wake.set()
        return jid

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
        """Stop a job: a queued one is dropped, a running one stops after its batch in hand."""
        with self._lock:
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
        self._wake.set()

    def forget(self, job_id: str) -> None:
        """Drop an ended job's record (its outcome has been taken); a job still going is stopped first."""
        self.cancel(job_id)
        with self._lock:
            j = self._jobs.get(job_id)
            if j is not None and j.state in ("done", "failed", "cancelled"):
                del self._jobs[job_id]

    def wait(self, job_id: str, timeout: Optional[float] = None) -> JobStatus:
        """Block until the job ends (or the timeout passes) and return its status."""
        end = None if timeout is None else time.time() + timeout
        while True:
            st = self.status(job_id)
            if st is None or st.ended or (end is not None and time.time() > end):
                return st
            time.sleep(0.05)

    def counts(self) -> dict[str, int]:
        """Jobs queued and running, and the workers, for a status line."""
        with self._lock:
            return {"queued": sum(len(q) for q in self._queues.values()),
                    "running": sum(1 for j in self._jobs.values() if j.state == "running"),
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
        return sum(1 for j in self._jobs.values() if j.user == user and j.state == "running")

    def _ahead(self, j: _Job) -> int:
        """Jobs served before j in round robin: those of its own queue before it, up to as many of each other
        user's, and those running."""
        mine = list(self._queues[j.user]).index(j.id)
        others = sum(min(len(q), mine + 1) for u, q in self._queues.items() if u != j.user)
        return mine + others + sum(1 for x in self._jobs.values() if x.state == "running")

    def _next_job(self) -> Optional[_Job]:
        n = len(self._users)
        for k in range(n):
            u = self._users[(self._rr + k) % n]
            q = self._queues.get(u)
            if q and self._running(u) < self.settings.per_user_running:
                self._rr = (self._rr + k + 1) % n
                return self._jobs[q.popleft()]
        return None

    def _end(self, j: _Job, state: str, outcome: JobOutcome, message: str = "") -> None:
        j.state, j.outcome, j.ended_at = state, outcome, time.time()
        self._board.forget.remote(j.id)
        j.message = message or (outcome.error or outcome.warning or "")
        j.ref = None
        if j.worker is not None and self._workers[j.worker].job == j.id:
            self._workers[j.worker].job = None

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
            if not any(j.state in ("queued", "running") for j in list(self._jobs.values())):
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
                self._end(j, "failed", JobOutcome(
                    error=f"the worker stopped unexpectedly at {done} of {total} cells (killed or crashed: "
                          f"{one_line(e)[:120]}); press the button again to rerun it", cells_done=done,
                    cells_total=total))

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
