"""Fact-set runs in the background of a server: each run is a thread that drives `run_fact_set` on the job
manager's workers (the facts as one batch, fairly queued between users) and writes the run's folder under `root`;
a page finds a run again by its id (a link, a reload), live while its thread runs, from its folder afterwards
(also after a server restart, when it can be resumed)."""
from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from rwkv_core.analysis.factset import (BadLine, FactLine, FactSetFolder, FactSetProgress, FactSetSettings,
                                        RayExecutor, run_fact_set)
from rwkv_core.errors import InputError, RWKVInspectorError
from rwkv_core.jobs.specs import ModelSpec

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{6,40}$")


@dataclass
class FactSetRun:
    """A run as a page sees it: `state` is running, done, stopped, failed or interrupted (its folder is incomplete
    and no thread runs it: the server restarted)."""

    id: str
    user: str
    label: str
    state: str
    progress: FactSetProgress
    message: str = ""
    started: float = field(default_factory=time.time)


class FactSetRuns:
    """The fact-set runs of this server (thread-safe), their folders under `root`."""

    def __init__(self, root: Path, manager: Callable[[], object], per_user: int = 1):
        self.root = Path(root)
        self._manager = manager  # called when a run starts (the job manager may still be starting)
        self.per_user = per_user
        self._runs: dict[str, FactSetRun] = {}
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def folder(self, run_id: str) -> FactSetFolder:
        """The run's folder; InputError for an id that is not one of ours (a hand-edited link)."""
        if not _RUN_ID.match(run_id or ""):
            raise InputError(f"{run_id!r} is not a fact-set run id")
        return FactSetFolder(self.root / run_id)

    def start(self, user: str, model: ModelSpec, n_layer: int, facts: Sequence[FactLine], settings: FactSetSettings,
              *, bad: Sequence[BadLine] = (), label: str = "fact set", run_id: Optional[str] = None) -> str:
        """Start a run (or resume `run_id`'s folder) in the background; returns its id. A user runs at most
        `per_user` fact sets at once."""
        settings.check()
        with self._lock:
            mine = [r for r in self._runs.values() if r.user == user and r.state == "running"]
            if len(mine) >= self.per_user:
                raise InputError(f"you already have {len(mine)} fact set(s) running (the limit is {self.per_user}): "
                                 "wait for it or stop it")
            run_id = run_id or secrets.token_urlsafe(9).replace("-", "x").replace("_", "y")
            if run_id in self._threads and self._threads[run_id].is_alive():
                raise InputError("this run is already running")
            folder = self.folder(run_id)
            run = FactSetRun(run_id, user, label, "running", FactSetProgress(total=len(facts)))
            stop = threading.Event()
            self._runs[run_id], self._stops[run_id] = run, stop

        def body() -> None:
            try:
                manager = self._manager()
                executor = RayExecutor(manager, user=user, label=label)

                def progress(p: FactSetProgress) -> None:
                    run.progress = FactSetProgress(**vars(p))

                summary = run_fact_set(model, n_layer, facts, folder.path, settings, executor=executor, bad=bad,
                                       progress=progress, should_stop=stop.is_set)
                run.progress = summary.progress
                run.state = "stopped" if stop.is_set() else "done"
            except RWKVInspectorError as e:
                run.state, run.message = "failed", (str(e).splitlines() or ["failed"])[0]
            except Exception as e:  # the thread must tell the page, not die silently
                run.state, run.message = "failed", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"

        t = threading.Thread(target=body, name=f"factset-{run_id}", daemon=True)
        self._threads[run_id] = t
        t.start()
        return run_id

    def get(self, run_id: str) -> Optional[FactSetRun]:
        """The run: live from its thread, else read from its folder ("done" or "interrupted"); None if unknown."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            return run
        folder = self.folder(run_id)
        info = folder.run_info()
        if info is None:
            return None
        facts = folder.facts()
        done = folder.done_ids(info.get("run_key", ""))
        state = "done" if facts and all(f.id in done for f in facts) else "interrupted"
        return FactSetRun(run_id, "", info.get("label", "fact set"), state,
                          FactSetProgress(total=len(facts), resumed=len(done & {f.id for f in facts})),
                          started=float(info.get("started", 0)))

    def stop(self, run_id: str) -> None:
        """Stop a run: the facts finished are kept, the running ones stop after their batch in hand."""
        with self._lock:
            ev = self._stops.get(run_id)
        if ev is not None:
            ev.set()

    def wait(self, run_id: str, timeout: Optional[float] = None) -> Optional[FactSetRun]:
        t = self._threads.get(run_id)
        if t is not None:
            t.join(timeout)
        return self.get(run_id)
