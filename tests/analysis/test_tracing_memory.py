"""What causal tracing caches (rwkv_core.analysis.tracing): `setup_bytes` predicts a TraceSetup's caches to the
byte for every generation and both corruptions, the caches hold no per-token states, and the states the fast path
advances token by token agree with a forward pass stopped at that token.
"""
from __future__ import annotations

import pytest
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.io.tokenizer import ByteTokenizer
from rwkv_core.model.rwkv import RWKV

BYTES = ByteTokenizer()
PROMPT, SUBJECT = "ab cdef gh", "cd"


def small_model(version: str) -> RWKV:
    sd = random_state_dict(version, n_layer=3, n_embd=32, head_size=16, vocab_size=256, seed=7)
    return RWKV.from_state_dict(detect_config(sd), sd)


def tensor_bytes(setup: TR.TraceSetup) -> int:
    tensors = list(setup.clean_cache.values()) + list(setup.corrupt_cache.values())
    tensors += [setup.noise_tensor] if setup.noise_tensor is not None else []
    return sum(t.nelement() * t.element_size() for t in tensors)


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_setup_bytes_is_what_the_caches_hold(version):
    model = small_model(version)
    cfg = model.cfg
    noisy = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", samples=3)
    replaced = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", corruption="replace", alt_subject="xy")
    for setup, sub in ((noisy, SUBJECT), (replaced, "")):
        want = TR.setup_bytes(cfg, setup.T, setup.K, setup.n, subject_tokens=len(sub))
        assert tensor_bytes(setup) == setup.cache_bytes() == want
        # nothing per token of the state: every cached tensor is [..., S, C] or the logits [n, K, V]
        for key, t in list(setup.clean_cache.items()) + list(setup.corrupt_cache.items()):
            assert t.shape[-1] in (cfg.n_embd, cfg.vocab_size), key
    wkv = 3 * cfg.n_embd if version == "4" else cfg.n_head * cfg.head_size ** 2
    assert TR.state_bytes(cfg) == 4 * (2 * cfg.n_embd + wkv)
    zero = model.zero_state(1)
    assert TR.state_bytes(cfg) * cfg.n_layer == sum(t.nelement() * 4 for t in (zero.att_shift, zero.wkv, zero.ffn_shift))


@pytest.mark.parametrize("version", ["4", "7"])
def test_walked_states_equal_a_forward_stopped_at_the_token(version):
    """RunWalk's clean state of every layer after token t (advanced one token at a time from the cached inputs, in
    any order of t) equals the state the forward pass hands to its state hooks at t, to float32 rounding."""
    model = small_model(version)
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=2)
    names = ("att.hook_shift", "att.hook_state", "ffn.hook_shift")
    L, T = model.cfg.n_layer, setup.T
    _, _, cache = model.run_with_cache(setup.seq, [f"blocks.{l}.{n}" for l in range(L) for n in names],
                                       state_positions=range(T), logits="none")
    walk = setup.walk("clean")
    for t in (2, 3, 3, 7, 1, T - 1):  # forwards, repeated, then back (recomputed from the start)
        for l, state in enumerate(walk.states_after(t)):
            for n, got in zip(names, state):
                torch.testing.assert_close(got, cache[f"blocks.{l}.{n}"][:, t], rtol=1e-5, atol=1e-6)


def test_corrupted_rows_in_groups_give_the_same_run():
    """A memory budget smaller than one row's activations runs the corrupted rows one at a time, each with its own
    noise draw: the same caches and grid as one batch, to float32 rounding."""
    model = small_model("7")
    whole = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", samples=3, seed=3)
    rows = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", samples=3, seed=3, memory_budget=1)
    for key in ("resid", "v_first", "logits"):
        torch.testing.assert_close(rows.corrupt_cache[key], whole.corrupt_cache[key], rtol=1e-5, atol=1e-5)
    assert rows.corrupt["prob"] == pytest.approx(whole.corrupt["prob"], rel=1e-5)
    spec = [TR.TraceSpec("block", "both")]
    torch.testing.assert_close(torch.as_tensor(TR.trace_grids(rows, spec)[0].grids["prob"]),
                               torch.as_tensor(TR.trace_grids(whole, spec)[0].grids["prob"]), rtol=1e-5, atol=1e-7)
