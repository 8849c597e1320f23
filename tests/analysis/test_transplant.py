"""State transplant and steering (rwkv_core.analysis.patching.transplant): B continued from A's state equals A
then B run as one prompt; steering with alpha = 1 towards A from a B that is C's own prefix is the same
transplant; chosen layers / heads move only their part of the state; bad choices are one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_core.analysis.patching.transplant import final_state, mix_states, steer, transplant
from rwkv_core.errors import InputError
from rwkv_core.io.tokenizer import ByteTokenizer
from tests.analysis.test_tracing import _one_thread, small_model  # noqa: F401 (the autouse fixture: one thread)

BYTES = ByteTokenizer()
A, B, C = list(b"the cat sat"), list(b" on a mat"), list(b"dogs run far")


def logp(x: torch.Tensor) -> np.ndarray:
    return torch.log_softmax(x.double(), -1).numpy()


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_b_from_a_state_equals_a_then_b_as_one_prompt(version):
    model = small_model(version)
    res = transplant(model, BYTES, A, B)
    with torch.no_grad():
        whole, _ = model(torch.tensor([A + B]))
    expect = logp(whole[0, len(A):])
    got_top = res.top_edit_p[:, 0]
    assert np.allclose(np.log(got_top), expect[np.arange(len(B)), res.top_edit_ids[:, 0]], atol=1e-5)
    np.testing.assert_allclose(res.logp_edit_last, expect[-1], atol=1e-5)
    assert res.kl.min() > 0  # B alone predicts differently at every position


def test_chosen_layers_and_heads_move_only_their_part():
    model = small_model("7")
    sa = final_state(model, A)
    zero = model.zero_state(1)
    one = mix_states(zero, sa, [1], [])
    assert torch.equal(one.wkv[1], sa.wkv[1]) and torch.equal(one.att_shift[1], sa.att_shift[1])
    assert not one.wkv[0].any() and not one.wkv[2].any()
    h = mix_states(zero, sa, [2], [1])
    assert torch.equal(h.wkv[2, :, 1], sa.wkv[2, :, 1]) and not h.wkv[2, :, 0].any() and not h.att_shift.any()
    # layer 1 alone: B from (zero everywhere, A's state in layer 1) = B with that state set by a hook
    res = transplant(model, BYTES, A, B, layers=[1])
    with torch.no_grad():
        direct, _ = model(torch.tensor([B]), one)
    np.testing.assert_allclose(res.logp_edit_last, logp(direct[0, -1]), atol=1e-6)
    assert transplant(model, BYTES, A, B, layers=[1], heads=[0]).kl[-1] != res.kl[-1]


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_steering_identities(version):
    model = small_model(version)
    t = 4
    # alpha = 1, B = C's own prefix: C's state after t becomes A's, so C continues as A followed by C[t+1:]
    res = steer(model, BYTES, C, t, 1.0, A, C[:t + 1])
    with torch.no_grad():
        whole, _ = model(torch.tensor([A + C[t + 1:]]))
    np.testing.assert_allclose(res.logp_edit_last, logp(whole[0, -1]), atol=1e-5)
    assert res.start == t + 1 and np.allclose(res.kl[:t + 1], 0.0, atol=1e-9) and res.kl[t + 1:].min() > 0
    zero = steer(model, BYTES, C, t, 0.0, A, B)  # alpha = 0: nothing changes
    assert np.allclose(zero.kl, 0.0, atol=1e-9)
    half = steer(model, BYTES, C, t, 0.5, A, B)
    assert half.kl[-1] > 0 and "base_top" in half.changes_csv(BYTES).splitlines()[0]


def test_bad_choices_are_one_line():
    model = small_model("4")
    with pytest.raises(InputError, match="RWKV-4 has no heads"):
        transplant(model, BYTES, A, B, heads=[0])
    with pytest.raises(InputError, match="layers must be between 0 and 2"):
        transplant(model, BYTES, A, B, layers=[3])
    with pytest.raises(InputError, match="steering position"):
        steer(model, BYTES, C, 99, 1.0, A, B)
    with pytest.raises(InputError, match="empty"):
        transplant(model, BYTES, [], B)
