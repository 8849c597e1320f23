"""How many torch threads a computation gets on the CPU.

The WKV recurrences are a loop over chunks (or tokens) of many small operations on a few thousand numbers each. With
torch's OpenMP every operation opens a parallel region; when the waiting threads sleep between regions
(`OMP_WAIT_POLICY=PASSIVE`, as the app sets it so that a busy server shares its cores), waking them costs more than
the work: the RWKV-7 chunked kernel over 1,031 tokens of 12 heads took 0.18 s on two threads and 0.11 s on one (2-core
CPU), and the 0.1B forward 5.2 s against 3.2 s with the kernel on one thread (`python -m bench.bench_omp_wait
--before REV` compares checkouts). With spinning threads (libgomp's default, what the commands keep) two threads are
as fast for one row and faster for several, so the count is left alone there.

torch's thread count is the calling thread's own (`omp_set_num_threads`): other threads computing meanwhile keep
theirs.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

def threads_sleep() -> bool:
    """Whether OpenMP's idle threads sleep between parallel regions (OMP_WAIT_POLICY=PASSIVE)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads for the block (this thread only), then back."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread() -> contextlib.AbstractContextManager:
    """torch on one thread for the block: for serial work of many small operations."""
    return torch_threads(1)


def recurrence_threads(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """The thread count for a WKV recurrence over `x`: one thread on the CPU where the threads sleep between parallel
    regions, else unchanged."""
    if x.device.type == "cpu" and threads_sleep() and torch.get_num_threads() > 1:
        return one_thread()
    return contextlib.nullcontext()
