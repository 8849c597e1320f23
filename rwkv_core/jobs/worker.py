"""The job functions and the Ray actor that runs them.

`JobRunner` is plain Python (tested without Ray): it loads a model once and keeps it (one at a time, the last one
asked for), keeps the cached clean and corrupted runs of its last trace for the ablations that follow, and runs a
job with progress and a stop flag that other threads read and set. As a Ray actor (`job_worker_class`) it runs its
calls one at a time on the process's main thread: torch's intra-op threads run about 3x slower when called from
another thread (measured on the demo trace: 7.8 s on the main thread, 25 s on any other). Progress, Stop and the
worker's process id then go through a `JobBoard`, a small threaded actor that the caller and the workers share.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional, Union

import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs.specs import AblationJob, JobOutcome, ModelSpec, TraceJob
from rwkv_core.model.rwkv import DTYPES

Job = Union[TraceJob, AblationJob]


def one_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


class JobRunner:
    """Runs trace and ablation jobs in this process, one at a time; answers progress and cancel from any thread."""

    def __init__(self, torch_threads: Optional[int] = None, board: Any = None, slot: int = 0):
        self._threads = int(torch_threads) if torch_threads else None
        self._board, self._slot = board, slot
        if board is not None:
            board.set_pid.remote(slot, os.getpid())
        self._model_spec: Optional[ModelSpec] = None
        self._model = self._tokenizer = None
        self._setup_key: Optional[tuple] = None
        self._setup: Optional[TR.TraceSetup] = None
        self._progress: dict[str, tuple[int, int, float]] = {}  # job id -> (done, total, seconds)
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- answered while a job runs

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> bool:
        return True

    def progress(self, job_id: str) -> Optional[tuple[int, int, float]]:
        """(cells done, cells in all, seconds since the job started), or None before it starts."""
        return self._progress.get(job_id)

    def cancel(self, job_id: str) -> None:
        """Stop the job after the batch in hand (its result comes back with the cells done so far)."""
        with self._lock:
            self._cancel.setdefault(job_id, threading.Event()).set()

    # ---------------------------------------------------------------- jobs

    def run(self, job_id: str, job: Job) -> JobOutcome:
        """Run one job to its outcome; errors the user can act on come back as one line, not as exceptions."""
        with self._lock:
            stop = self._cancel.setdefault(job_id, threading.Event())
        if self._threads:  # per calling thread: an actor runs each call on a thread of its pool
            torch.set_num_threads(self._threads)
        start = time.perf_counter()
        self._progress[job_id] = (0, 0, 0.0)
        try:
            if isinstance(job, TraceJob):
                out = self._trace(job_id, job, stop, start)
            elif isinstance(job, AblationJob):
                out = self._ablate(job)
            else:
                raise RWKVInspectorError(f"unknown job type {type(job).__name__}")
        except TR.ReplacementLengthError as e:
            out = JobOutcome(warning=one_line(e))
        except RWKVInspectorError as e:
            out = JobOutcome(error=one_line(e))
        except torch.cuda.OutOfMemoryError:
            self._forget_setup()
            done, total, _ = self._progress.get(job_id, (0, 0, 0.0))
            out = JobOutcome(error=f"the GPU ran out of memory at {done} of {total} cells: use fewer noise samples "
                                   "or a shorter prompt")
        except MemoryError:
            self._forget_setup()
            done, total, _ = self._progress.get(job_id, (0, 0, 0.0))
            out = JobOutcome(error=f"the worker ran out of memory at {done} of {total} cells: use fewer noise "
                                   "samples or a shorter prompt")
        finally:
            with self._lock:
                self._cancel.pop(job_id, None)
        done, total, _ = self._progress.pop(job_id, (0, 0, 0.0))
        out.cells_done, out.cells_total = done, total
        out.seconds = time.perf_counter() - start
        out.extra["pid"] = os.getpid()  # which worker process ran it (a batch's tasks spread over several)
        return out

    def _load(self, spec: ModelSpec):
        if spec != self._model_spec:
            self._model = self._tokenizer = None
            self._forget_setup()
            model = load_model(spec.path, device=spec.device, dtype=DTYPES[spec.dtype])
            self._tokenizer = tokenizer_for(model.cfg.vocab_size, kind=spec.tokenizer, path=spec.tokenizer_file)
            self._model, self._model_spec = model, spec
        return self._model, self._tokenizer

    def _forget_setup(self) -> None:
        self._setup_key = self._setup = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _prepared(self, job: TraceJob) -> TR.TraceSetup:
        """The job's clean and corrupted runs: the cached ones when the last trace had the same setup."""
        model, tokenizer = self._load(job.model)
        if self._setup_key != job.setup_key:
            self._forget_setup()  # the old runs go before the new ones are made
            self._setup = TR.prepare_trace(model, tokenizer, job.prompt, memory_budget=job.memory_budget,
                                           **dict(job.prepare))
            self._setup_key = job.setup_key
        return self._setup

    def _trace(self, job_id: str, job: TraceJob, stop: threading.Event, start: float) -> JobOutcome:
        board, last = self._board, {"report": 0.0, "ask": 0.0}
        if board is not None:
            board.report.remote(job_id, 0, 0, 0.0)
        setup = self._prepared(job)

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            self._progress[job_id] = (done, total, now - start)
            if board is not None and (now - last["report"] > 0.2 or done == total):
                board.report.remote(job_id, done, total, now - start)
                last["report"] = now

        def should_stop() -> bool:
            if stop.is_set():
                return True
            now = time.perf_counter()
            if board is not None and now - last["ask"] > 0.3:
                last["ask"] = now
                import ray

                if ray.get(board.stopped.remote(job_id), timeout=30):
                    stop.set()
            return stop.is_set()

        if job.method == "atp":  # one forward and backward: no cells to count or stop between
            from rwkv_core.analysis.patching.attribution import atp_trace

            progress(0, 1)
            results = atp_trace(setup, list(job.specs), memory_budget=job.memory_budget)  # per group of rows
            progress(1, 1)
        else:
            results = TR.trace_grids(setup, list(job.specs), metric="prob", progress=progress,
                                     should_stop=should_stop, memory_budget=job.memory_budget,
                                     method=job.method, tokens=None if job.tokens is None else list(job.tokens))
        return JobOutcome(value=results)

    def _ablate(self, job: AblationJob) -> JobOutcome:
        setup = self._prepared(job.trace)
        ref_ids = (list(setup.tokenizer.encode(job.reference).ids)
                   if job.replacement == "mean" and job.reference else None)
        token = setup.subject[1] - 1 if job.reset_token < 0 else min(job.reset_token, setup.T - 1)
        result = TR.ablate_layers(setup, job.target, job.replacement, reference_tokens=ref_ids, reset_token=token,
                                  memory_budget=job.trace.memory_budget)
        return JobOutcome(value=result)


class JobBoard:
    """Progress, Stop requests and worker process ids, shared by the caller and the workers (a Ray actor with a few
    threads: answered at once while the workers compute)."""

    def __init__(self):
        self._progress: dict[str, tuple[int, int, float]] = {}
        self._stopped: set[str] = set()
        self._pids: dict[int, int] = {}

    def report(self, job_id: str, done: int, total: int, seconds: float) -> None:
        self._progress[job_id] = (done, total, seconds)

    def progress(self, job_ids: list[str]) -> dict[str, tuple[int, int, float]]:
        return {j: self._progress[j] for j in job_ids if j in self._progress}

    def cancel(self, job_id: str) -> None:
        self._stopped.add(job_id)

    def stopped(self, job_id: str) -> bool:
        return job_id in self._stopped

    def forget(self, job_id: str) -> None:
        self._progress.pop(job_id, None)
        self._stopped.discard(job_id)

    def set_pid(self, slot: int, pid: int) -> None:
        self._pids[slot] = pid

    def pid(self, slot: int) -> Optional[int]:
        return self._pids.get(slot)


def job_worker_class() -> Any:
    """`JobRunner` as a Ray actor class: restarted by Ray when its process dies; its calls run one at a time on the
    worker's main thread (see the module docstring), Stop and progress go through the `JobBoard`."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=0)(JobRunner)


def job_board_class() -> Any:
    import ray

    return ray.remote(max_concurrency=8, num_cpus=0)(JobBoard)
