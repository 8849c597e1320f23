"""`export --lens` and `export --state [--state-positions]`: the keys the trace file gains equal the lens engine's
numbers and the model's own states (RNN mode over the prefix); bad positions and forged keys are one line."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from rwkv_core.analysis import lens as LE
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from rwkv_core.io.trace_file import TraceFileError, build_trace, estimate_trace_bytes, load_trace, save_trace, \
    trace_contents
from tests.test_cli import cli


@pytest.mark.parametrize("version", [pytest.param("4", marks=pytest.mark.slow), "7"])
def test_export_lens_and_states(tmp_path, version):
    ckpt = tmp_path / "m.pth"
    write_random_checkpoint(ckpt, version, n_layer=3, n_embd=64, head_size=16, seed=2)
    text = "Hello, lens and state!"
    out = cli("export", ckpt, "--text", text, "--layers", "0,2", "--lens", "--state", "--state-positions", "3,17",
              "--logits-topk", "16", "--out", tmp_path / "t.npz")
    assert out.returncode == 0, out.stderr
    tr = load_trace(tmp_path / "t.npz")
    tokens = list(text.encode())
    T = len(tokens)
    model = load_model(ckpt)
    lens = LE.logit_lens(model, tokens)
    for key, s in (("embed", 0), ("l0", 1), ("l2", 3)):
        np.testing.assert_allclose(tr.arrays[f"lens_logp_{key}"], lens.logp[:, s], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(tr.arrays[f"lens_top_{key}"], lens.top_ids[:, s])
        np.testing.assert_array_equal(tr.arrays[f"lens_rank_{key}"], lens.rank[:, s])
        assert tr.arrays[f"lens_top_{key}"].shape == (T, 10) and tr.arrays[f"lens_top_{key}"].dtype == np.int64
        assert np.isnan(tr.arrays[f"lens_logp_{key}"][-1])
    assert "lens_logp_l1" not in tr.arrays and "state_l1" not in tr.arrays
    assert tr.meta["stored"]["state_positions"] == [3, 17] and tr.meta["stored"]["lens"]
    for p_i, p in enumerate((3, 17)):
        with torch.no_grad():
            _, st = model.forward_rnn(tokens[:p + 1])
        for l in (0, 2):
            got, want = tr.arrays[f"state_l{l}"][p_i], st.wkv[l, 0].numpy()
            if version == "4":
                got = got[:2] * np.exp(got[2] - got[2].max())
                want = want[:2] * np.exp(want[2] - want[2].max())
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert tr.arrays["state_l0"].shape == ((2, 3, 64) if version == "4" else (2, 4, 16, 16))
    layer = tr.layer_arrays(0)  # lens and state keys are not activations
    assert not any(k.startswith(("lens_", "state_")) for k in layer)


def test_state_alone_is_after_the_last_token_and_the_size_estimate_is_exact(tmp_path):
    ckpt = tmp_path / "m.pth"
    write_random_checkpoint(ckpt, "6", n_layer=2, n_embd=64, head_size=16, seed=3)
    model = load_model(ckpt)
    tokens = list(range(30))
    arrays = build_trace(model, tokens, state=True, lens=True, logits_topk=16)
    with torch.no_grad():
        _, st = model(tokens)
    np.testing.assert_allclose(arrays["state_l1"], st.wkv[1, 0].numpy(), rtol=1e-5, atol=1e-6)
    buf = io.BytesIO()
    save_trace(arrays, buf)
    est = estimate_trace_bytes(model.cfg, len(tokens), logits_topk=16, lens=True, state_positions=1)
    assert abs(est - len(buf.getvalue())) / len(buf.getvalue()) < 0.02


def test_bad_positions_and_forged_lens_keys_are_one_line(tmp_path):
    ckpt = tmp_path / "m.pth"
    write_random_checkpoint(ckpt, "7", n_layer=2, n_embd=64, head_size=16, seed=3)
    out = cli("export", ckpt, "--text", "abc", "--state", "--state-positions", "1,3", "--out", tmp_path / "t.npz")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "state position 3 is outside the prompt of 3 tokens" in out.stderr
    model = load_model(ckpt)
    arrays = build_trace(model, [1, 2, 3], lens=True)
    arrays["lens_top_l0"] = arrays["lens_top_l0"].astype(np.float32)
    buf = io.BytesIO()
    save_trace(arrays, buf)
    with pytest.raises(TraceFileError, match="'lens_top_l0' must be \\[T, K\\] token ids"):
        load_trace(io.BytesIO(buf.getvalue()))
    arrays = build_trace(model, [1, 2, 3], lens=True)
    arrays["lens_top_l1"][0, 0] = 10_000
    buf = io.BytesIO()
    save_trace(arrays, buf)
    with pytest.raises(TraceFileError, match="lens_top_l1 names token 10000, outside the vocabulary"):
        trace_contents(load_trace(io.BytesIO(buf.getvalue())))
