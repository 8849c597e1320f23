"""The compute thread and the OpenMP pool release (`rwkv_core.compute`): work runs on one long-lived thread, and a
caller's own OpenMP worker pool is gone once it has handed its work over (two pools make torch sleep between
operations)."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from rwkv_core.compute import ComputeThread, process_threads, release_openmp_pool, _GOMP

needs_pool = pytest.mark.skipif(_GOMP is None or torch.get_num_threads() < 2,
                                reason="torch here has no libgomp pool to make (one thread, or another OpenMP)")


def _in_thread(fn):
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _parallel_op() -> None:
    """An operation big enough for torch to run as an OpenMP parallel region (which makes the thread's pool)."""
    torch.ones(4_000_000).mul_(2.0)


def _settled_threads(expect, timeout: float = 5.0) -> int:
    """The process's thread count once `expect(count)` holds (pool workers exit asynchronously)."""
    end = time.monotonic() + timeout
    n = process_threads()
    while not expect(n) and time.monotonic() < end:
        time.sleep(0.01)
        n = process_threads()
    return n


def test_calls_run_in_order_on_one_long_lived_thread():
    compute = ComputeThread("test-compute")
    idents = [compute.call(threading.get_ident) for _ in range(3)]
    idents += [_in_thread(lambda: compute.call(threading.get_ident)) for _ in range(3)]  # from fresh callers too
    assert set(idents) == {compute.ident} and compute.ident != threading.get_ident()
    order: list[int] = []
    futures = [compute.submit(lambda i=i: order.append(i)) for i in range(20)]
    for f in futures:
        f.result(10)
    assert order == list(range(20))
    assert compute.call(lambda: compute.call(lambda: 7)) == 7  # a call from the compute thread runs in place


def test_exceptions_reach_the_caller_and_the_thread_goes_on():
    compute = ComputeThread("test-compute")
    with pytest.raises(ZeroDivisionError):
        compute.call(lambda: 1 / 0)
    assert compute.call(lambda: "next") == "next"


@needs_pool
def test_release_gives_back_the_callers_pool():
    def body():
        before = process_threads()
        _parallel_op()
        with_pool = _settled_threads(lambda n: n > before)
        assert with_pool > before, "a parallel region made no OpenMP workers"
        assert release_openmp_pool()
        after = _settled_threads(lambda n: n <= before)
        return before, with_pool, after

    before, with_pool, after = _in_thread(body)
    assert after <= before < with_pool


@needs_pool
def test_a_call_leaves_only_the_compute_threads_pool():
    compute = ComputeThread("test-compute")
    compute.call(_parallel_op)  # the compute thread's pool, made once

    def caller():
        base = process_threads()
        _parallel_op()  # the caller's own pool (a page's torch work outside the gate)
        grown = _settled_threads(lambda n: n > base)
        compute.call(_parallel_op)
        return base, grown, _settled_threads(lambda n: n <= base)

    base, grown, after = _in_thread(caller)
    assert grown > base and after <= base


@pytest.mark.skipif(_GOMP is None, reason="torch here does not use libgomp")
@pytest.mark.parametrize("preset, policy, spin", [(None, "PASSIVE", "0"), ("ACTIVE", "ACTIVE", "30000000000")])
def test_the_app_makes_openmp_workers_sleep_unless_told_otherwise(preset, policy, spin):
    """The app's package sets OMP_WAIT_POLICY before torch loads (libgomp reads it then): libgomp itself reports
    what it runs with (OMP_DISPLAY_ENV=VERBOSE; its default spins 300,000 times before sleeping, shown as
    'PASSIVE' with GOMP_SPINCOUNT '300000'), and a value from the environment wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import inspector_ui, torch; torch.ones(4_000_000).mul_(2.0)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"OMP_WAIT_POLICY = '{policy}'" in out.stderr and f"GOMP_SPINCOUNT = '{spin}'" in out.stderr
