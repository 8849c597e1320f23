"""Thread counts of torch on the CPU: a block's count is the calling thread's own, and the WKV recurrences run on one
thread where the threads sleep between parallel regions (the app's setting) or the batch is small, with the same
numbers either way."""
from __future__ import annotations

import threading

import pytest
import torch

from rwkv_core.model import threads as TH
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.model import rwkv as R
from rwkv_core.model.rwkv import RWKV


def test_one_thread_is_the_calling_threads_own():
    """A block on one thread (a page's click) leaves another thread's torch thread count alone (another session's
    forward goes on in parallel) and restores its own."""
    before = torch.get_num_threads()
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def other() -> None:
        with TH.one_thread():
            seen["inside"] = torch.get_num_threads()
            inside.set()
            release.wait(10)
        seen["after"] = torch.get_num_threads()

    th = threading.Thread(target=other)
    th.start()
    inside.wait(10)
    assert torch.get_num_threads() == before  # this thread is untouched by the other's block
    release.set()
    th.join(10)
    assert seen["inside"] == 1 and seen["after"] == torch.get_num_threads() == before


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("policy, expected", [("PASSIVE", 1), ("passive", 1), ("", 2), ("ACTIVE", 2)])
def test_recurrence_threads_rule(monkeypatch, two_threads, policy, expected):
    """One thread where OpenMP's threads sleep between regions; spinning threads keep their count."""
    monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    with TH.recurrence_threads(torch.zeros(4, 3, 12, 4)):
        assert torch.get_num_threads() == expected
    assert torch.get_num_threads() == 2


def _tiny(version: str) -> RWKV:
    sd = random_state_dict(version, n_layer=2, n_embd=64, head_size=16, vocab_size=97, seed=3)
    return RWKV.from_state_dict(detect_config(sd), sd)


@pytest.mark.parametrize("version", ["4", "6", "7"])
def test_forward_runs_its_recurrences_on_one_thread_where_threads_sleep(monkeypatch, two_threads, version):
    """Under OMP_WAIT_POLICY=PASSIVE the forward's WKV kernels see one thread, the rest of the forward two, and the
    logits equal those of a forward with the kernels on two threads."""
    model = _tiny(version)
    tokens = list(range(40))
    seen = []
    monkeypatch.setenv("OMP_WAIT_POLICY", "")  # spinning threads: the kernels on two threads
    with torch.no_grad():
        ref, _ = model(tokens)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    real = R._run_wkv_cuts

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(R, "_run_wkv_cuts", spy)
    with torch.no_grad():
        out, _ = model(tokens)
    assert seen and set(seen) == {1}, seen
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
