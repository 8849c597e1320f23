"""The logit lens against a float64 loop over the captured residual stream, the last stage against the model's own
logits, and "where the answer forms" on a demo model's fact prompt whose answer is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_core.analysis import lens as LE
from rwkv_core.errors import InputError
from rwkv_core.io.checkpoint import detect_config, load_model
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.model.rwkv import RWKV

REPO = Path(__file__).resolve().parents[2]


def _model(version: str, V: int = 256, seed: int = 3) -> RWKV:
    sd = random_state_dict(version, n_layer=3, n_embd=64, head_size=16, vocab_size=V, seed=seed)
    return RWKV.from_state_dict(detect_config(sd), sd)


def _oracle(model: RWKV, resid: np.ndarray) -> np.ndarray:
    """log-softmax of head(ln_out(x)) for every stage and token, a float64 loop in NumPy: [S, T, V]."""
    w = model.ln_out.weight.detach().double().numpy()
    b = model.ln_out.bias.detach().double().numpy()
    eps = model.ln_out.eps
    head = model.head.weight.detach().double().numpy()
    hb = None if model.head.bias is None else model.head.bias.detach().double().numpy()
    S, T, _ = resid.shape
    out = np.empty((S, T, head.shape[0]))
    for s in range(S):
        for t in range(T):
            x = resid[s, t].astype(np.float64)
            y = (x - x.mean()) / np.sqrt(x.var() + eps) * w + b
            logits = head @ y + (0 if hb is None else hb)
            m = logits.max()
            out[s, t] = logits - m - np.log(np.exp(logits - m).sum())
    return out


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_every_stage_equals_a_float64_loop_and_the_last_equals_the_logits(version):
    model = _model(version)
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 256, 40)]
    resid = LE.capture_residuals(model, tokens)
    lens = LE.logit_lens(model, tokens, resid=resid)
    ref = _oracle(model, resid.numpy())  # [S, T, V]
    S, T = ref.shape[:2]
    assert lens.stages == ["embed", "0", "1", "2"] and lens.logp.shape == (T, S)
    nxt = np.array(tokens[1:])
    want = ref[:, np.arange(T - 1), nxt].T  # [T - 1, S]
    np.testing.assert_allclose(lens.logp[:-1], want, rtol=1e-5, atol=1e-6)
    assert np.isnan(lens.logp[-1]).all() and (lens.rank[-1] == -1).all()
    ranks = (ref[:, np.arange(T - 1)] > want.T[:, :, None]).sum(-1).T  # [T - 1, S]
    np.testing.assert_array_equal(lens.rank[:-1], ranks)
    order = np.argsort(-ref, axis=-1)[..., :LE.LENS_TOPK].transpose(1, 0, 2)  # [T, S, K]
    np.testing.assert_array_equal(lens.top_ids, order)
    np.testing.assert_allclose(lens.top_logp, np.take_along_axis(ref.transpose(1, 0, 2), order, -1), rtol=1e-5,
                               atol=1e-6)
    with torch.no_grad():
        logits, _ = model(tokens)
    logp = torch.log_softmax(logits[0].double(), -1).numpy()
    np.testing.assert_allclose(lens.logp[:-1, -1], logp[np.arange(T - 1), nxt], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lens.top_ids[:, -1, 0], logp.argmax(-1))


def test_a_named_target_is_scored_at_every_position_and_chunks_do_not_matter():
    model = _model("7", V=512)
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, 512, 30)]
    resid = LE.capture_residuals(model, tokens)
    lens = LE.logit_lens(model, tokens, target=17, resid=resid)
    ref = _oracle(model, resid.numpy())
    np.testing.assert_allclose(lens.logp, ref[:, :, 17].T, rtol=1e-5, atol=1e-6)
    assert (lens.wanted == 17).all() and not np.isnan(lens.logp).any()
    w = torch.full((len(tokens),), 17)
    small = LE.read_stage(model.unembed, resid[2], w, chunk=7)  # chunks cut mid-prompt give the same numbers
    np.testing.assert_allclose(small[0].numpy(), lens.logp[:, 2], rtol=1e-6)
    np.testing.assert_array_equal(small[2].numpy(), lens.top_ids[:, 2])
    with pytest.raises(InputError, match="outside the vocabulary"):
        LE.logit_lens(model, tokens, target=512)


def test_answer_stage_is_the_first_stage_of_the_final_top1_run():
    top1 = np.array([[5, 5, 5, 5],   # formed at the embedding
                     [1, 5, 2, 5],   # only at the last stage
                     [1, 2, 5, 5],   # from stage 2
                     [5, 1, 5, 5]])  # lost at stage 1, back from stage 2
    np.testing.assert_array_equal(LE.answer_stage(top1), [0, 3, 2, 2])


def test_where_the_answer_forms_on_the_demo_fact_prompt():
    """The v7 demo model completes "... the city of" with " Paris" (models/README.md). At the space before "Paris"
    the final prediction is "P"; its rank falls to 0 by the last stage, and stays 0 from the stage where the answer
    forms; the embedding alone does not predict it."""
    model = load_model(REPO / "models" / "demo-v7.pth")
    text = "The Eiffel Tower is located in the city of Paris"
    tokens = list(text.encode())
    lens = LE.logit_lens(model, tokens)
    t = text.index("Paris") - 1  # the space: the next token is "P"
    assert lens.wanted[t] == ord("P")
    assert lens.rank[t, -1] == 0 and lens.top_ids[t, -1, 0] == ord("P")
    formed = int(lens.answer_forms()[t])
    assert 0 < formed <= model.cfg.n_layer
    assert (lens.rank[t, formed:] == 0).all() and lens.rank[t, formed - 1] > 0
    assert lens.rank[t, 0] > 0
    assert np.exp(lens.logp[t, -1]) > 0.5


def test_trace_keys_round_trip():
    model = _model("6")
    tokens = list(range(20))
    lens = LE.logit_lens(model, tokens)
    keys = LE.trace_lens_keys(lens, [0, 2])
    assert set(keys) == {f"lens_{w}_{s}" for w in ("logp", "rank", "top") for s in ("embed", "l0", "l2")}
    assert keys["lens_top_l2"].shape == (20, 10) and keys["lens_top_l2"].dtype == np.int64
    assert np.isnan(keys["lens_logp_l0"][-1])
    back = LE.lens_from_trace(keys, [0, 1, 2])
    assert back.stages == ["embed", "0", "2"]
    np.testing.assert_array_equal(back.top_ids[:, 2], lens.top_ids[:, 3])
    np.testing.assert_array_equal(back.logp[:, 1], lens.logp[:, 1])
    assert LE.lens_from_trace({"tokens": np.zeros(3)}, [0]) is None


def test_a_window_of_positions_equals_the_full_lens_rows_and_merges_back():
    """positions=range(a, b) reads out only those rows (the others empty, `computed` False), equal to the full lens
    there; windows merged cover the prompt as the full lens."""
    torch.manual_seed(0)
    model = _model("7")
    tokens = list(range(3, 40))
    full = LE.logit_lens(model, tokens)
    resid = LE.capture_residuals(model, tokens)
    part = LE.logit_lens(model, tokens, resid=resid, positions=range(10, 25))
    assert part.computed.tolist() == [10 <= t < 25 for t in range(len(tokens))]
    np.testing.assert_allclose(part.logp[10:25], full.logp[10:25], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(part.top_ids[10:25], full.top_ids[10:25])
    assert np.isnan(part.logp[:10]).all() and (part.rank[25:] == -1).all()
    merged = LE.empty_lens(full.stages, full.wanted)
    for a in range(0, len(tokens), 16):
        merged.merge(LE.logit_lens(model, tokens, resid=resid, positions=range(a, a + 16)))
    assert merged.computed.all()
    np.testing.assert_allclose(merged.logp, full.logp, rtol=1e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(merged.rank, full.rank)
    np.testing.assert_array_equal(merged.answer_forms(), full.answer_forms())
    # the same windows kept compact (their rows alone) and merged at their offsets
    compact = LE.empty_lens(full.stages, full.wanted)
    for a in range(0, len(tokens), 16):
        b = min(len(tokens), a + 16)
        rows = LE.logit_lens(model, tokens, resid=resid, positions=range(a, b)).rows(a, b)
        assert rows.T == b - a and rows.computed.all()
        compact.merge(rows, at=a)
    assert compact.computed.all()
    np.testing.assert_array_equal(compact.logp, merged.logp)
    np.testing.assert_array_equal(compact.top_ids, merged.top_ids)
    np.testing.assert_array_equal(compact.rank, full.rank)
