"""The engine against the official `rwkv` package (cpu fp32) on random checkpoints in the official layout:
the same logits at every position and the same final state, in sequence mode and in RNN mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from tests.oracle_rwkv_pip import official_forward_modes, state_by_layer

CASES = [  # (version, n_embd, head_size, vocab, storage dtype)
    ("4", 64, 16, 256, torch.float32),
    ("4", 128, 64, 256, torch.float32),
    ("5.2", 64, 16, 256, torch.float32),
    ("5.2", 128, 64, 256, torch.float32),
    ("6", 64, 16, 256, torch.float32),
    ("6", 128, 64, 256, torch.float32),
    ("6", 64, 16, 65536, torch.float32),
    ("6", 128, 64, 256, torch.bfloat16),
    ("7", 64, 16, 256, torch.float32),
    ("7", 128, 64, 256, torch.float32),
    ("7", 64, 16, 65536, torch.float32),
    ("7", 128, 64, 256, torch.bfloat16),
]


def _ids(case):
    v, C, N, V, dt = case
    return f"v{v}-C{C}-N{N}-V{V}-{str(dt).split('.')[-1]}"


def _ours_state(state, version):
    """Our RWKVState in the package's per-layer naming, batch 0."""
    out = []
    for l in range(state.att_shift.shape[0]):
        d = {"att_x_prev": state.att_shift[l, 0].numpy(), "ffn_x_prev": state.ffn_shift[l, 0].numpy()}
        if version == "4":
            aa, bb, pp = state.wkv[l, 0]
            d.update(aa=aa.numpy(), bb=bb.numpy(), pp=pp.numpy())
        else:
            d["wkv"] = state.wkv[l, 0].numpy()
        out.append(d)
    return out


def _v4_invariant(d):
    """aa*e^pp and bb*e^pp are the state's meaning; (aa, bb, pp) is one of many equal representations."""
    return d["aa"] * np.exp(d["pp"] - d["pp"].max()), d["bb"] * np.exp(d["pp"] - d["pp"].max())


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_logits_and_state_equal_official_package(case, tmp_path):
    version, C, N, V, dtype = case
    path = tmp_path / "model.pth"
    write_random_checkpoint(path, version, n_layer=3, n_embd=C, head_size=N, vocab_size=V, dtype=dtype, seed=7)
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, V, 40)]
    ref = official_forward_modes(str(path), tokens, version=version, upcast=dtype != torch.float32)
    model = load_model(path)  # bf16 storage is upcast to fp32 here, as with upcast=True
    with torch.no_grad():
        ours = {"seq": model(tokens), "rnn": model.forward_rnn(tokens)}
    for mode in ("seq", "rnn"):
        logits, state = ours[mode]
        want = ref[mode]["logits"]
        rel = np.abs(logits[0].numpy() - want).max() / np.abs(want).max()
        assert rel < 1e-5, f"{mode}: max relative logit error {rel:.2e}"
        for l, (a, b) in enumerate(zip(_ours_state(state, version), state_by_layer(ref[mode]["state"], version))):
            for key in ("att_x_prev", "ffn_x_prev"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=f"{mode} layer {l} {key}")
            if version == "4":
                for x, y in zip(_v4_invariant(a), _v4_invariant(b)):
                    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=f"{mode} layer {l} aa/bb")
            else:
                scale = np.abs(b["wkv"]).max()
                assert np.abs(a["wkv"] - b["wkv"]).max() <= 1e-5 * max(scale, 1.0), f"{mode} layer {l} wkv state"
