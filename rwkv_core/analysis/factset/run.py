"""Tracing a fact set: one TraceJob per fact (the Causal tracing page's tracer and settings), run in this process or
as a batch on the Ray workers of a `JobManager`, each fact's grids written to the output folder as it finishes.

Resumable: the facts whose file is already in the folder (whole, complete, same run key) are not computed again; a
fact that fails is retried once (by the executor); a fact stopped half way is computed again on the next run."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence, Union

from rwkv_core.analysis import tracing as TR
from rwkv_core.analysis.factset.effects import AverageEffect
from rwkv_core.analysis.factset.facts import BadLine, FactLine
from rwkv_core.analysis.factset.store import FactSetFolder, run_key_of
from rwkv_core.errors import InputError
from rwkv_core.jobs.specs import JobOutcome, ModelSpec, TraceJob
from rwkv_core.jobs.worker import JobRunner

# the restore kinds of a fact-set run: name -> (kind, mode) of the tracer's TraceSpec
RESTORE_KINDS: dict[str, tuple[str, str]] = {"block": ("block", "both"), "state": ("block", "state"),
                                             "resid": ("block", "resid"), "att": ("att", "both"),
                                             "ffn": ("ffn", "both")}
KIND_TITLES = {"block": "Whole layer (residual and state)", "state": "Recurrent state only",
               "resid": "Residual stream only", "att": "Time-mix window", "ffn": "Channel-mix window"}


@dataclass(frozen=True)
class FactSetSettings:
    """How every fact is traced (the Causal tracing page's noise corruption) and which facts are averaged.
    window None: `TR.default_window(n_layer)`. threshold: a fact is known when its clean p(answer) >= threshold."""

    kinds: tuple[str, ...] = tuple(RESTORE_KINDS)
    samples: int = 10
    noise: float = 3.0
    noise_site: str = "resid_pre"
    seed: int = 1
    window: Optional[int] = None
    restore_v_first: bool = True
    threshold: float = 0.1
    memory_budget: int = TR.DEFAULT_MEMORY_BUDGET

    def check(self) -> "FactSetSettings":
        bad = [k for k in self.kinds if k not in RESTORE_KINDS]
        if bad or not self.kinds:
            raise InputError(f"unknown restore kind {', '.join(bad) or '(none)'}; expected some of "
                             f"{', '.join(RESTORE_KINDS)}")
        if int(self.samples) < 1:
            raise InputError("samples must be at least 1")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise InputError("the threshold is a probability: between 0 and 1")
        return self

    def specs(self, n_layer: int) -> tuple[TR.TraceSpec, ...]:
        w = int(self.window) if self.window else TR.default_window(n_layer)
        return tuple(TR.TraceSpec(*RESTORE_KINDS[k], w, bool(self.restore_v_first)) for k in self.kinds)

    def prepare(self, fact: FactLine) -> tuple:
        """prepare_trace's keyword arguments for this fact, as the sorted pairs of a TraceJob."""
        return tuple(sorted(dict(subject=fact.subject, answer=fact.answer, samples=int(self.samples),
                                 noise=float(self.noise), noise_site=self.noise_site, seed=int(self.seed)).items()))

    def traced(self) -> dict:
        """What the per-fact numbers depend on (not the threshold, which only chooses the facts averaged)."""
        d = asdict(self)
        d.pop("threshold"), d.pop("memory_budget")
        d["kinds"] = list(self.kinds)
        return d


def fact_jobs(model: ModelSpec, facts: Sequence[FactLine], settings: FactSetSettings, n_layer: int) -> list[TraceJob]:
    """One TraceJob per fact: every restore kind in one job, so the fact's clean and corrupted runs are made once."""
    specs = settings.specs(n_layer)
    return [TraceJob(model, f.prompt, settings.prepare(f), specs, int(settings.memory_budget)) for f in facts]


# ------------------------------------------------------------------------------------------------ executors


class Executor(Protocol):
    """Runs a list of jobs and hands back each outcome once, as (index, outcome), as they finish."""

    def start(self, jobs: Sequence[TraceJob]) -> None: ...

    def poll(self, timeout: float) -> list[tuple[int, JobOutcome]]: ...

    def running_cells(self) -> tuple[int, int]: ...

    def cancel(self) -> None: ...

    def finished(self) -> bool: ...

    def message(self) -> str: ...


class InProcessExecutor:
    """The jobs one after another in this process (no Ray): a failed job is run once more. Stop takes effect
    between jobs."""

    def __init__(self, runner: Optional[JobRunner] = None, retries: int = 1):
        self.runner = runner or JobRunner()
        self.retries = retries
        self._jobs: list[TraceJob] = []
        self._next = 0
        self._cancelled = False

    def start(self, jobs: Sequence[TraceJob]) -> None:
        self._jobs, self._next, self._cancelled = list(jobs), 0, False

    def poll(self, timeout: float) -> list[tuple[int, JobOutcome]]:
        if self.finished():
            return []
        i = self._next
        self._next += 1
        for attempt in range(1, self.retries + 2):
            out = self.runner.run(f"fact-{i}", self._jobs[i])
            out.extra["attempts"] = attempt
            if out.error is None:
                break
        return [(i, out)]

    def running_cells(self) -> tuple[int, int]:
        return 0, 0

    def cancel(self) -> None:
        self._cancelled = True

    def finished(self) -> bool:
        return self._cancelled or self._next >= len(self._jobs)

    def message(self) -> str:
        return ""


class RayExecutor:
    """The jobs as one batch on a JobManager's Ray workers (every worker of the machine or cluster); the manager
    retries a failed job once."""

    def __init__(self, manager, user: str = "trace-set", label: str = "fact set", retries: int = 1):
        self.manager, self.user, self.label, self.retries = manager, user, label, retries
        self.batch_id: Optional[str] = None
        self._total = self._handed = 0
        self._buffer: list[tuple[int, JobOutcome]] = []

    def start(self, jobs: Sequence[TraceJob]) -> None:
        self._total, self._handed, self._buffer = len(jobs), 0, []
        self.batch_id = self.manager.submit_batch(self.user, list(jobs), self.label, retries=self.retries)

    def poll(self, timeout: float) -> list[tuple[int, JobOutcome]]:
        got, self._buffer = self._buffer + self.manager.take_results(self.batch_id), []
        if not got:
            time.sleep(timeout)
        self._handed += len(got)
        return got

    def running_cells(self) -> tuple[int, int]:
        st = self.manager.batch_status(self.batch_id)
        return (st.cells_done, st.cells_total) if st is not None else (0, 0)

    def cancel(self) -> None:
        self.manager.cancel(self.batch_id)

    def message(self) -> str:
        """Why no fact of the batch runs now (its place in the queue of a shared server), else ""."""
        st = self.manager.batch_status(self.batch_id)
        return st.message if st is not None and st.running == 0 else ""

    def finished(self) -> bool:
        """Every outcome handed out, or the batch ended (stopped) with none left to hand out."""
        if self._handed >= self._total:
            return True
        st = self.manager.batch_status(self.batch_id)
        if st is None or st.ended:
            self._buffer += self.manager.take_results(self.batch_id) if st is not None else []
            return not self._buffer
        return False


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class FactSetProgress:
    """Where a run stands: facts in all, done before this run (resumed), done, failed and stopped in this run."""

    total: int
    resumed: int = 0
    done: int = 0
    failed: int = 0
    stopped: int = 0
    seconds: float = 0.0
    running_cells: tuple[int, int] = (0, 0)
    last_error: str = ""
    waiting: str = ""  # why no fact runs now (the batch waits for a worker), else ""

    @property
    def finished_facts(self) -> int:
        return self.resumed + self.done + self.failed

    def seconds_left(self) -> Optional[float]:
        """Time left from this run's speed (None before its first fact)."""
        if self.done + self.failed == 0:
            return None
        per = self.seconds / (self.done + self.failed)
        return per * max(0, self.total - self.finished_facts)


@dataclass
class FactSetSummary:
    progress: FactSetProgress
    aie: dict[str, AverageEffect]
    rows: list[dict]
    computed: list[str] = field(default_factory=list)  # ids computed by this run


def check_fact_tokens(tokenizer, facts: Sequence[FactLine], max_tokens: int = 2048
                      ) -> tuple[list[FactLine], list[BadLine]]:
    """Split off the facts this model's tokenizer cannot trace, each with its one-line reason: characters outside
    its alphabet, an answer of no token, a prompt longer than `max_tokens` (every fact of a set is a full trace)."""
    ok, bad = [], []
    for f in facts:
        try:
            enc = tokenizer.encode(f.prompt)
            TR.locate_subject(enc, f.subject)
            if not tokenizer.encode(f.answer).ids:
                raise InputError("the answer is no token for this model's tokenizer")
            if len(enc.ids) > max_tokens:
                raise InputError(f"the prompt is {len(enc.ids)} tokens; a fact set allows {max_tokens} per fact")
        except InputError as e:
            bad.append(BadLine(f.line, str(e).splitlines()[0], f.prompt[:200]))
            continue
        ok.append(f)
    return ok, bad


def run_fact_set(model: ModelSpec, n_layer: int, facts: Sequence[FactLine], out: Union[str, Path],
                 settings: FactSetSettings, *, executor: Optional[Executor] = None, bad: Sequence[BadLine] = (),
                 progress: Optional[Callable[[FactSetProgress], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None, n_boot: int = 1000) -> FactSetSummary:
    """Trace every fact not yet in the folder `out`, write each as it finishes, then the AIE and the table.

    `facts` are the good lines (and `bad` the skipped ones, recorded in the folder); `executor` runs the jobs
    (default: this process). progress(FactSetProgress) after each fact and about twice a second; should_stop() is
    read as often: the facts finished are kept, the ones running are dropped (computed again by the next run)."""
    settings = settings.check()
    folder = FactSetFolder(out)
    run = {"model": asdict(model), "n_layer": int(n_layer), "kinds": list(settings.kinds),
           "traced": settings.traced(), "window": settings.specs(n_layer)[0].window}
    run_key = run_key_of(run)
    folder.begin(run, run_key, facts, bad)
    done = folder.done_ids(run_key)
    todo = [f for f in facts if f.id not in done]
    state = FactSetProgress(total=len(facts), resumed=len(facts) - len(todo))
    executor = executor or InProcessExecutor()
    start = time.perf_counter()
    computed: list[str] = []

    def tell() -> None:
        state.seconds = time.perf_counter() - start
        if progress is not None:
            progress(state)

    tell()
    if todo:
        executor.start(fact_jobs(model, todo, settings, n_layer))
        stop_sent = False
        while not executor.finished():
            for i, out_i in executor.poll(0.25):
                fact = todo[i]
                attempts = int(out_i.extra.get("attempts", 1))
                value_ok = out_i.ok and out_i.value is not None and all(r.complete for r in out_i.value)
                if value_ok:
                    folder.save_fact(fact, out_i.value, settings.kinds, run_key)
                    folder.log_event(fact.id, "done", seconds=round(out_i.seconds, 3), attempts=attempts,
                                     worker=out_i.extra.get("worker"), pid=out_i.extra.get("pid"))
                    state.done += 1
                    computed.append(fact.id)
                elif out_i.extra.get("stopped") or (out_i.error is None and out_i.warning is None):
                    # stopped part way (its cells, or its restarted worker's error): not kept, computed next run
                    folder.log_event(fact.id, "stopped", cells=out_i.cells_done)
                    state.stopped += 1
                else:
                    reason = out_i.error or out_i.warning or "failed"
                    folder.log_event(fact.id, "failed", reason=reason, attempts=attempts)
                    state.failed += 1
                    state.last_error = reason
            state.running_cells = executor.running_cells()
            state.waiting = executor.message()
            tell()
            if not stop_sent and should_stop is not None and should_stop():
                executor.cancel()
                stop_sent = True
        state.stopped += max(0, len(todo) - state.done - state.failed - state.stopped) if stop_sent else 0
    aie, rows = folder.write_summary(facts, settings.threshold, n_boot=n_boot)
    tell()
    return FactSetSummary(state, aie, rows, computed)
