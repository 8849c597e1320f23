"""Activation patching between two prompts (rwkv_core.analysis.patching): the fast exact path against the slow
reference (one full forward of the corrupted prompt per cell, with a hook), the exactness identities of patching,
the alignments and the bad-input messages. Attribution patching: tests/analysis/test_attribution.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_core.analysis import patching as P
from rwkv_core.analysis.patching.pair import answer_tokens
from rwkv_core.errors import InputError
from rwkv_core.io.tokenizer import ByteTokenizer, tokenizer_for
from tests.analysis.test_tracing import _one_thread, small_model  # noqa: F401 (the autouse fixture: one thread)

BYTES = ByteTokenizer()
TOL = 1e-5
# different lengths (10 / 11 bytes), a shared answer start (the space) teacher-forced after both
CLEAN, CORRUPT, ANSWER, COUNTER = "ab cdef gh", "ab xyzef gh", " Zq", " Qz"


def close(a: np.ndarray, b: np.ndarray, tol: float = TOL) -> bool:
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    return bool(np.all(np.abs(a[ok] - b[ok]) <= tol * np.maximum(1.0, np.abs(b[ok]))))


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_fast_grid_equals_reference_loop_every_site(version):
    model = small_model(version)
    pair = P.prepare_pair(model, BYTES, CLEAN, CORRUPT, ANSWER, COUNTER)
    assert pair.shared == [ord(" ")] and pair.Tc == 11 and pair.Tr == 12
    fast = P.patch_grids(pair, memory_budget=1 << 14)  # small batches too
    ref = P.patch_grids(pair, method="reference")
    for s in P.SITES:
        assert close(fast.raw[s], ref.raw[s]), (s, float(np.nanmax(np.abs(fast.raw[s] - ref.raw[s]))))
        assert np.ptp(fast.raw[s]) > 1e-3  # the patches do something
    assert not np.isnan(fast.raw["resid"]).any()


def test_span_alignment_fast_equals_reference_and_unpartnered_tokens_are_nan():
    model = small_model("7")
    # the spans differ in length (3 / 2 tokens) and so do the texts before them
    pair = P.prepare_pair(model, BYTES, "x ab cde fg", "ab XY fg", " Z", " Q", align_by="spans",
                          clean_span="cde", corrupt_span="XY")
    c2r = pair.alignment.clean_to_corrupt
    # 'x', ' ' and 'c' have no partner, 'e' meets 'Y', the ends meet
    assert c2r == (-1, -1, 0, 1, 2, -1, 3, 4, 5, 6, 7, 8)
    fast = P.patch_grids(pair, ("resid", "state"))
    ref = P.patch_grids(pair, ("resid", "state"), method="reference")
    for s in ("resid", "state"):
        assert close(fast.raw[s], ref.raw[s])
        assert np.isnan(fast.raw[s][[0, 1, 5]]).all() and not np.isnan(np.delete(fast.raw[s], [0, 1, 5], 0)).any()


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_exactness_identities(version):
    model = small_model(version)
    clean, corrupt = "ab cdef gh", "ab xyef gh"  # the same length, the same last token
    pair = P.prepare_pair(model, BYTES, clean, corrupt, " Zq", " Qz")
    L, T = model.cfg.n_layer, pair.Tc
    ids = torch.tensor([pair.corrupt_ids])

    def ld(hooks, positions=()):  # LD of a hooked corrupted run, read as the pair reads its baselines
        final = {}
        keep = (f"blocks.{L - 1}.hook_resid_post", lambda x, h: final.__setitem__("x", x[0, -1]))
        with torch.no_grad(), model.hooks(hooks + [keep]):
            model(ids, state_positions=positions, logits="none")
        return float(pair.metric(final["x"]))

    # patching nothing: the corrupted value
    assert ld([]) == pair.corrupt_value
    # every layer's residual at every position: the clean value exactly
    put = lambda l: (lambda x, h: pair.clean_cache["resid"][l + 1][None])  # noqa: E731
    assert ld([(f"blocks.{l}.hook_resid_post", put(l)) for l in range(L)]) == pair.clean_value
    # the whole state of every layer after the second-to-last token (both prompts end with the same token)
    names = [f"blocks.{l}.{h}" for l in range(L) for h in ("att.hook_shift", "att.hook_state", "ffn.hook_shift")]
    _, _, cache = model.run_with_cache(pair.clean_ids, names, state_positions=[T - 2], device=None)
    put_state = lambda x, h: cache[h.name][:, 0]  # noqa: E731
    assert ld([(n, put_state) for n in names], (T - 2,)) == pytest.approx(pair.clean_value, abs=1e-5, rel=1e-5)
    # the grid: the last layer's residual at the last token is the clean value, scale 0 the corrupted value
    g = P.patch_grids(pair)
    assert g.raw["resid"][T - 1, L - 1] == pair.clean_value and g.grid("resid")[T - 1, L - 1] == 1.0
    assert np.allclose(g.raw["state"][T - 1], pair.corrupt_value)  # a state after the last token reaches nothing
    # tokens before the first difference: the two runs are the same there, every patch changes nothing (filled
    # without a run; the reference loop computes them)
    ref = P.patch_grids(pair, ("resid", "state"), method="reference", tokens=[0, 1, 2, 3])
    for s in ("resid", "state"):
        assert (g.raw[s][:3] == pair.corrupt_value).all()
        assert np.allclose(ref.raw[s][:3], pair.corrupt_value, atol=1e-5)
        assert close(g.raw[s][3], ref.raw[s][3])
    zero = P.patch_grids(pair, scale=0.0)
    for s in P.SITES:
        assert np.allclose(zero.raw[s], pair.corrupt_value, atol=1e-5), s


def test_token_subset_and_stop():
    model = small_model("6")
    pair = P.prepare_pair(model, BYTES, CLEAN, CORRUPT, ANSWER, COUNTER)
    full = P.patch_grids(pair, ("att",))
    sub = P.patch_grids(pair, ("att",), tokens=[4, 10])
    assert np.array_equal(sub.raw["att"][[4, 10]], full.raw["att"][[4, 10]])
    assert np.isnan(np.delete(sub.raw["att"], [4, 10], 0)).all()
    calls = []
    stopped = P.patch_grids(pair, ("att",), should_stop=lambda: len(calls) >= 2,
                            progress=lambda d, t: calls.append((d, t)))
    assert not stopped.complete and np.isnan(stopped.raw["att"]).any() and calls[-1][0] < calls[-1][1]


def test_result_npz_round_trip(tmp_path):
    model = small_model("7")
    pair = P.prepare_pair(model, BYTES, CLEAN, CORRUPT, ANSWER, COUNTER)
    res = P.patch_grids(pair, ("resid", "ffn"))
    res.to_npz(tmp_path / "g.npz")
    back = P.PatchResult.from_npz(tmp_path / "g.npz")
    assert np.array_equal(back.raw["ffn"], res.raw["ffn"], equal_nan=True)
    assert back.clean_value == res.clean_value and back.clean_labels == res.clean_labels
    assert back.settings["alignment"]["clean_to_corrupt"] == list(pair.alignment.clean_to_corrupt)
    assert "site,token_index" in res.to_csv().splitlines()[0].replace("_", "_")


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_one_line_errors():
    model = small_model("7")
    with pytest.raises(InputError, match="no different token"):
        P.prepare_pair(model, BYTES, CLEAN, CORRUPT, " Zq", " Z")
    with pytest.raises(InputError, match="does not occur in the corrupted prompt"):
        P.prepare_pair(model, BYTES, CLEAN, CORRUPT, ANSWER, COUNTER, align_by="spans", clean_span="cd",
                       corrupt_span="nothere")
    with pytest.raises(InputError, match="cannot be aligned"):
        P.prepare_pair(model, BYTES, CLEAN, CORRUPT, ANSWER, COUNTER, align_by="spans", clean_span="gh",
                       corrupt_span="xyz")
    with pytest.raises(InputError, match="unknown patching site 'mlp'"):
        P.check_sites("resid,mlp")
    with pytest.raises(InputError, match="same logit difference"):
        P.prepare_pair(model, BYTES, CLEAN, CLEAN, ANSWER, COUNTER)


def test_answer_that_is_not_a_token_start_is_refused():
    world = tokenizer_for(65536, kind="world")
    # "The city o" + "f Paris": the tokenizer merges "of" across the boundary
    with pytest.raises(InputError, match="does not start a token"):
        answer_tokens(world, "The city o", "f Paris", "answer")
    assert answer_tokens(world, "The city of", " Paris", "answer") == list(world.encode(" Paris").ids)
