"""The process-wide resources of `inspector_ui.resources`: the model pool (one instance per (name, device, dtype),
least recently used evicted beyond the memory budget) and the work gate (FIFO, at most `slots` inside, a waiter that
cancels gives up its place, `waiting()` counts). Threads record what they saw; every wait has a timeout, and nothing
asserts on timing.
"""
from __future__ import annotations

import threading
import time

import pytest

from inspector_ui.registry import ModelEntry
from inspector_ui.resources import ModelPool, WorkGate
from inspector_ui.settings import model_budget_bytes
from tests.conftest import shared_file

JOIN_S = 60  # generous: the machine may be loaded


def _wait_until(cond, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _join_all(threads) -> None:
    for t in threads:
        t.join(JOIN_S)
        assert not t.is_alive(), f"thread {t.name} still running after {JOIN_S} s"


# ------------------------------------------------------------------------------------------------ ModelPool


def _entry(fname: str, tok: str = "bytes") -> ModelEntry:
    return ModelEntry(f"shared: {fname}", str(shared_file(fname)), tok)


V4 = "tiny-rwkv-4v0-660K-FP32.bin"
V5 = "tiny-rwkv-5v2-730K-FP32.bin"
DIG = "260123_reverse_L2_only_rwkv7.pth"


def test_pool_one_instance_per_name_device_dtype():
    pool = ModelPool(budget_bytes=1 << 34)
    e = _entry(V5)
    a = pool.get(e, "cpu", "fp32")
    assert pool.get(e, "cpu", "fp32") is a
    assert pool.get(ModelEntry(e.name, e.path, e.tokenizer), "cpu", "fp32") is a  # equal entry, same instance
    b = pool.get(e, "cpu", "bf16")
    assert b is not a and b.key == (e.name, "cpu", "bf16")
    assert next(b.model.parameters()).dtype != next(a.model.parameters()).dtype or b.n_bytes < a.n_bytes
    assert sorted(pool.loaded_names()) == sorted([(e.name, "cpu", "fp32"), (e.name, "cpu", "bf16")])
    assert pool.total_bytes() == a.n_bytes + b.n_bytes


def test_pool_concurrent_gets_load_once():
    """Eight sessions asking for the same model at once get the same instance (the pool's lock)."""
    pool = ModelPool(budget_bytes=1 << 34)
    e = _entry(DIG, "digits")
    got, errors = [], []
    start = threading.Barrier(8)

    def worker():
        try:
            start.wait(JOIN_S)
            got.append(pool.get(e, "cpu", "fp32"))
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    threads = [threading.Thread(target=worker, name=f"get{i}") for i in range(8)]
    for t in threads:
        t.start()
    _join_all(threads)
    assert not errors, errors
    assert len(got) == 8 and all(g is got[0] for g in got)
    assert pool.loaded_names() == [(e.name, "cpu", "fp32")]


def test_pool_evicts_least_recently_used_beyond_budget():
    e4, e5, e7 = _entry(V4), _entry(V5), _entry(DIG, "digits")
    sizes = {e.name: ModelPool(1 << 34).get(e).n_bytes for e in (e4, e5, e7)}
    # room for any two of the three, never for all three
    budget = sum(sizes.values()) - min(sizes.values()) // 2
    assert all(budget >= sizes[a] + sizes[b] for a in sizes for b in sizes if a != b)
    assert budget < sum(sizes.values())
    pool = ModelPool(budget_bytes=budget)
    pool.get(e4)
    pool.get(e5)
    assert [k[0] for k in pool.loaded_names()] == [e4.name, e5.name]
    pool.get(e4)  # e4 is now the most recently used: e5 is the one to go
    pool.get(e7)
    names = [k[0] for k in pool.loaded_names()]
    assert e7.name in names and e5.name not in names, names
    assert pool.total_bytes() <= budget
    # a model bigger than the budget alone still loads (it is the only one then)
    tiny = ModelPool(budget_bytes=1)
    tiny.get(e4)
    tiny.get(e7)
    assert [k[0] for k in tiny.loaded_names()] == [e7.name]


def test_pool_failed_load_keeps_nothing(tmp_path):
    from rwkv_core.errors import CheckpointError

    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x80\x02not really a pickle")
    pool = ModelPool(budget_bytes=1 << 34)
    with pytest.raises(CheckpointError):
        pool.get(ModelEntry("broken", str(bad)))
    assert pool.loaded_names() == [] and pool.total_bytes() == 0


def test_default_budget_from_env(monkeypatch):
    monkeypatch.setenv("RWKV_INSPECTOR_MODEL_BUDGET_GB", "0.5")
    assert model_budget_bytes() == 2**29
    monkeypatch.delenv("RWKV_INSPECTOR_MODEL_BUDGET_GB")
    assert model_budget_bytes() == 8 * 2**30


def test_default_model_from_env(monkeypatch):
    """RWKV_INSPECTOR_DEFAULT_MODEL names the model a hosted app opens on; a name not offered leaves the v7 demo, with
    no error."""
    from inspector_ui.registry import default_model_name

    models = {"demo: demo v6": None, "demo: demo v7": None, "shared: tiny.bin": None}
    monkeypatch.delenv("RWKV_INSPECTOR_DEFAULT_MODEL", raising=False)
    assert default_model_name(models) == "demo: demo v7"
    monkeypatch.setenv("RWKV_INSPECTOR_DEFAULT_MODEL", "shared: tiny.bin")
    assert default_model_name(models) == "shared: tiny.bin"
    monkeypatch.setenv("RWKV_INSPECTOR_DEFAULT_MODEL", "shared: not offered.bin")
    assert default_model_name(models) == "demo: demo v7"


# ------------------------------------------------------------------------------------------------ WorkGate


class Holder:
    """A thread that takes a slot and keeps it until released."""

    def __init__(self, gate: WorkGate, name: str, log: list, on_wait=None):
        self.inside = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(gate, name, log, on_wait), name=name)

    def _run(self, gate, name, log, on_wait):
        try:
            with gate.slot(on_wait, poll_s=0.02):
                log.append(name)
                self.inside.set()
                assert self.release.wait(JOIN_S), "never released"
        except BaseException as e:  # noqa: BLE001
            self.error = e


def test_gate_is_fifo():
    gate = WorkGate(slots=1)
    log: list[str] = []
    first = Holder(gate, "first", log)
    first.thread.start()
    assert first.inside.wait(JOIN_S)
    waiters = []
    for i in range(6):  # queue them one after the other, in a known order
        h = Holder(gate, f"w{i}", log)
        h.thread.start()
        _wait_until(lambda n=i + 1: gate.waiting() == n, what=f"{i + 1} waiting")
        waiters.append(h)
    first.release.set()
    for h in waiters:
        assert h.inside.wait(JOIN_S), f"{h.thread.name} never got in"
        h.release.set()
    _join_all([first.thread] + [h.thread for h in waiters])
    assert log == ["first"] + [f"w{i}" for i in range(6)]
    assert gate.waiting() == 0


def test_gate_at_most_slots_inside():
    gate = WorkGate(slots=2)
    lock = threading.Lock()
    inside, peak, done = [0], [0], []

    def job(i):
        with gate.slot(poll_s=0.01):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1
        done.append(i)

    threads = [threading.Thread(target=job, args=(i,), name=f"job{i}") for i in range(10)]
    for t in threads:
        t.start()
    _join_all(threads)
    assert sorted(done) == list(range(10))
    assert peak[0] == 2  # both slots were used, never more
    assert gate.waiting() == 0


def test_gate_waiting_counts_and_on_wait_reports_place():
    gate = WorkGate(slots=1)
    log: list[str] = []
    first = Holder(gate, "first", log)
    first.thread.start()
    assert first.inside.wait(JOIN_S)
    assert gate.waiting() == 0
    seen: dict[str, list[int]] = {"a": [], "b": []}
    a = Holder(gate, "a", log, on_wait=seen["a"].append)
    a.thread.start()
    _wait_until(lambda: gate.waiting() == 1 and seen["a"], what="a waiting")
    b = Holder(gate, "b", log, on_wait=seen["b"].append)
    b.thread.start()
    _wait_until(lambda: gate.waiting() == 2 and seen["b"], what="b waiting")
    assert seen["a"][-1] == 1  # one job (the holder) ahead of a
    assert seen["b"][-1] == 2  # the holder and a
    first.release.set()
    assert a.inside.wait(JOIN_S)
    _wait_until(lambda: gate.waiting() == 1, what="a left the queue")
    # b is told its new place at its next poll (a report computed before the wake-up may come first)
    _wait_until(lambda: seen["b"][-1] == 1, what="b told its new place (1 ahead)")
    a.release.set()
    assert b.inside.wait(JOIN_S)
    b.release.set()
    _join_all([first.thread, a.thread, b.thread])
    assert log == ["first", "a", "b"] and gate.waiting() == 0


class Cancelled(Exception):
    pass


def test_gate_cancelled_waiter_gives_up_its_place():
    gate = WorkGate(slots=1)
    log: list[str] = []
    first = Holder(gate, "first", log)
    first.thread.start()
    assert first.inside.wait(JOIN_S)
    cancel = threading.Event()

    def on_wait_a(ahead: int) -> None:
        if cancel.is_set():
            raise Cancelled("the user pressed Stop")

    a = Holder(gate, "a", log, on_wait=on_wait_a)
    a.thread.start()
    _wait_until(lambda: gate.waiting() == 1, what="a waiting")
    b = Holder(gate, "b", log)
    b.thread.start()
    _wait_until(lambda: gate.waiting() == 2, what="b waiting")
    cancel.set()
    a.thread.join(JOIN_S)
    assert not a.thread.is_alive()
    assert isinstance(a.error, Cancelled) and not a.inside.is_set()
    assert gate.waiting() == 1  # only b is left in line
    first.release.set()
    assert b.inside.wait(JOIN_S), "the next waiter never got in after a cancelled"
    b.release.set()
    _join_all([first.thread, b.thread])
    assert log == ["first", "b"] and gate.waiting() == 0
    # the gate is still usable: nothing leaked
    with gate.slot():
        assert gate.waiting() == 0


def test_gate_error_inside_releases_the_slot():
    gate = WorkGate(slots=1)
    with pytest.raises(RuntimeError):
        with gate.slot():
            raise RuntimeError("the job failed (out of memory, say)")
    got_in = threading.Event()

    def job():
        with gate.slot(poll_s=0.01):
            got_in.set()

    t = threading.Thread(target=job)
    t.start()
    _join_all([t])
    assert got_in.is_set() and gate.waiting() == 0


def test_gate_work_runs_on_its_compute_thread():
    """A slot hands out its long-lived compute thread: the work of every caller runs there, not in the caller's
    (a page's script thread is new on every rerun; torch's thread pool should be made once, not per rerun)."""
    gate = WorkGate(slots=1)

    def work():
        with gate.slot(poll_s=0.01) as compute:
            return compute.call(threading.get_ident), threading.get_ident()

    results = [_in_thread_value(work) for _ in range(3)]
    ran_on = {r[0] for r in results}
    assert len(ran_on) == 1 and not ran_on & {r[1] for r in results}
    assert gate.run_now(threading.get_ident) in ran_on  # a model load computes there too


def _in_thread_value(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    _join_all([t])
    return out[0]


def test_pool_freezes_the_heap_after_a_load_and_frees_an_evicted_model():
    """After a load every object that exists is frozen (Streamlit's collection after each rerun skips them), and a
    model evicted later is still freed: the pool unfreezes and collects before freezing again."""
    import gc
    import weakref
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    e6 = ModelEntry("demo: v6", str(repo / "models" / "demo-v6.pth"), "bytes")
    e7 = ModelEntry("demo: v7", str(repo / "models" / "demo-v7.pth"), "bytes")
    gc.unfreeze()
    try:
        pool = ModelPool(budget_bytes=1)  # room for one model: each load evicts the other
        first = pool.get(e6)
        tracked = {id(o) for o in gc.get_objects()}
        assert id(first) not in tracked and id(first.model) not in tracked  # frozen: collections skip them
        assert gc.get_freeze_count() > 100_000  # torch, plotly, streamlit and the model, not a handful
        gone = weakref.ref(first.model)
        first = None
        second = pool.get(e7)
        assert [k[0] for k in pool.loaded_names()] == [e7.name]
        assert gone() is None, "the evicted model is still in memory"
        assert id(second.model) not in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()
