"""Where torch computes in a threaded server: one long-lived compute thread, and each caller's OpenMP pool released.

torch on CPU parallelises with OpenMP (libgomp). libgomp gives every thread that starts a parallel region a pool of
worker threads, kept until that thread exits, and when it manages more threads than there are CPUs it stops
spin-waiting between parallel regions and puts its workers to sleep after every one. So as soon as two threads of a
process each hold a pool (the server's main thread and a page's script thread, two script threads, a loader and a
worker), every forward pass pays a sleep and a wake-up per operation: measured on 2 cores, a 0.1B forward over
1,031 tokens took 1.8-2.9 s on a lone thread and 4.0-4.5 s beside a second pool, and a 64 x 64 matmul 12x longer.

`ComputeThread` runs callables on one thread that lives as long as the process, so its pool is made once and stays
warm; `release_openmp_pool()` gives the calling thread's own pool back before it waits, so only one pool exists.
"""
from __future__ import annotations

import ctypes
import os
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Optional

import torch

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft (OpenMP 5.0)


def _libgomp() -> Optional[ctypes.CDLL]:
    """torch's own libgomp (the wheel ships it in torch/lib), or None where torch does not use it."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if not os.path.exists(path):
        return None
    try:
        lib = ctypes.CDLL(path)
        return lib if hasattr(lib, "omp_pause_resource_all") else None
    except OSError:
        return None


_GOMP = _libgomp()


def release_openmp_pool() -> bool:
    """Give back the calling thread's OpenMP worker pool, if it has one (libgomp's `omp_pause_resource_all`): the
    next parallel region on this thread makes a new one. True where the call was made and succeeded."""
    if _GOMP is None:
        return False
    return _GOMP.omp_pause_resource_all(_OMP_PAUSE_SOFT) == 0


def process_threads() -> int:
    """Threads of this process (from /proc): each OpenMP pool adds its workers, so tests can see pools come and go."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class ComputeThread:
    """One daemon thread that runs submitted callables in order, for the life of the process.

    `call(fn)` runs `fn` there and returns its result (or raises its exception) in the caller, after releasing the
    caller's own OpenMP pool. `fn` runs outside the caller's thread: it must not rely on thread-local state (a web
    framework's per-request context)."""

    def __init__(self, name: str = "rwkv-compute"):
        self._queue: "queue.SimpleQueue[tuple[Future, Callable[[], Any]]]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> Optional[int]:
        return self._thread.ident

    def _loop(self) -> None:
        while True:
            future, fn = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller, whatever it is
                future.set_exception(e)
            del future, fn  # nothing of a finished call is kept alive by the idle thread

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._queue.put((future, fn))
        return future

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the compute thread and wait for it. From the compute thread itself, `fn` runs in place."""
        if threading.get_ident() == self._thread.ident:
            return fn()
        release_openmp_pool()
        return self.submit(fn).result()
