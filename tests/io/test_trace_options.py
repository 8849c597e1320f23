"""The options of trace format 3 (`rwkv_core.io.trace_file.build_trace`): the logits as the top-k per position, float16
storage, no residual stream, a subset of layers; the size estimate shown before a file is built; progress; and the
files of formats 1 and 2 (full float32 logits, w, kk, ktilde stored) still read the same way."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from rwkv_core.analysis import decay as D
from rwkv_core.analysis.scores import inputs_from_trace, topk_predictions
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from rwkv_core.io.trace_file import (COMPACT, FLOAT16_MAX, TraceFileError, _stored, build_trace,
                                     estimate_trace_bytes, load_trace, save_trace, trace_contents)
from rwkv_core.model.config import ModelConfig

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7]


@pytest.fixture(scope="module", params=["5.2", "6", "7"])
def model(request, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("opts") / "m.pth"
    write_random_checkpoint(ckpt, request.param, n_layer=3, n_embd=64, head_size=16, vocab_size=300, seed=7)
    return load_model(ckpt)


def _reopened(arrays: dict) -> "Trace":  # noqa: F821
    buf = io.BytesIO()
    save_trace(arrays, buf)
    return load_trace(io.BytesIO(buf.getvalue()))


def test_top_k_logits_equal_torch_topk_of_the_full_logits(model):
    logits, _ = model(TOKENS)
    logp = torch.log_softmax(logits[0].float(), -1)  # [T, V]
    want = torch.topk(logp, 16, dim=-1)
    tr = _reopened(build_trace(model, TOKENS, logits_topk=16))
    assert "logits" not in tr.arrays and tr.arrays["logits_topk_ids"].shape == (len(TOKENS), 16)
    assert np.array_equal(tr.arrays["logits_topk_ids"], want.indices.numpy())
    np.testing.assert_allclose(tr.arrays["logits_topk_logp"], want.values.numpy(), rtol=1e-5, atol=1e-6)
    # what the pages read: the same predictions as from the full logits, at any k up to what was stored
    ids, probs = tr.predictions(16)
    pid, pp = topk_predictions(logits[0], 16)
    assert np.array_equal(ids, pid.numpy())
    np.testing.assert_allclose(probs, pp.numpy(), rtol=1e-5, atol=1e-7)
    assert tr.predictions(4)[0].shape == (len(TOKENS), 4) and tr.predictions(50)[0].shape == (len(TOKENS), 16)
    full = _reopened(build_trace(model, TOKENS))
    np.testing.assert_allclose(full.arrays["logits"], logits[0].numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(full.predictions(16)[0], pid.numpy())
    assert not _reopened(build_trace(model, TOKENS, logits_topk=0)).has_logits


def test_float16_arrays_are_float32_rounded_to_float16(model):
    """Each float16 array is the float32 one rounded to float16; what a float16 file leaves out (w, v7 kk and
    ktilde) comes back within float16 rounding; every array reads as float32."""
    full = _reopened(build_trace(model, TOKENS))
    half = _reopened(build_trace(model, TOKENS, float16=True))
    stored16 = [k for k, a in half.arrays.items() if a.dtype == np.float16]
    assert {f"{n}_l{l}" for n in ("r", "k", "v", "resid") for l in range(3)} <= set(stored16)
    assert "logits" in stored16
    for key in stored16:
        if key in full.arrays:
            assert np.array_equal(half.arrays[key], full.arrays[key].astype(np.float16)), key
    for l in range(3):
        assert f"w_l{l}" not in half.arrays and half.arrays[f"logw_l{l}"].dtype == np.float16
        for n in ("r", "k", "v", "logw", "resid") + (("a",) if model.cfg.version == "7" else ()):
            a16, a32 = half.layer(n, l), full.layer(n, l)
            assert a16.dtype == np.float32, n
            np.testing.assert_allclose(a16, a32, rtol=2 ** -11, atol=2 ** -25, err_msg=f"{n}_l{l}")
        for n in ("kk", "ktilde") if model.cfg.version == "7" else ():  # from float16 k and a (k (1 + (a - 1) k_a)
            a16, a32 = half.layer(n, l), full.layer(n, l)  # cancels: an absolute bound)
            np.testing.assert_allclose(a16, a32, rtol=0, atol=2 ** -9 * float(np.abs(a32).max()), err_msg=f"{n}_l{l}")
        w32, logw32 = full.layer("w", l), full.layer("logw", l)  # w = exp(logw): its error is logw's times |ln w|
        np.testing.assert_allclose(half.layer("w", l), w32, rtol=0, atol=float((w32 * -logw32).max()) * 2 ** -10)
    if model.cfg.version == "7":
        assert not any(k.startswith(("kk_", "ktilde_")) for k in half.arrays)


def test_float16_keeps_the_decay_as_its_log(model):
    """float16 would round every w above 1 - 2^-12 to 1 (every half-life beyond ~2,800 tokens); ln w keeps the rate
    -ln w to float16's precision: 2^-11 (0.05 %) relative above 2^-14 (half-lives up to ~11,000 tokens), 2^-25
    absolute below (as float32 w does: its spacing below 1 is 2^-24). The decay page's half-lives follow."""
    full = _reopened(build_trace(model, TOKENS))
    half = _reopened(build_trace(model, TOKENS, float16=True))
    for l in range(3):
        rate32, rate16 = -full.layer("logw", l).astype(np.float64), -half.layer("logw", l).astype(np.float64)
        assert np.all(np.abs(rate16 - rate32) <= 2 ** -11 * rate32 + 2 ** -25)
        a = D.trace_token_decays(None, model.cfg, TOKENS, l, logw=full.layer("logw", l))
        b = D.trace_token_decays(None, model.cfg, TOKENS, l, logw=half.layer("logw", l))
        normal = rate32 >= 2 ** -14
        np.testing.assert_allclose(b.log10_half_life[0][normal], a.log10_half_life[0][normal], atol=np.log10(1 + 2 ** -10))
    logw = torch.tensor([-1e-6, -3e-5, -0.3, -50.0])
    assert np.all(np.exp(logw.half().float().numpy()) < 1)  # the rates kept...
    assert np.exp(logw.numpy()).astype(np.float16)[0] == 1  # ...where w in float16 is 1


def test_a_float16_array_out_of_its_range_stays_float32():
    x = torch.tensor([[1.0, -2.0], [3.0, FLOAT16_MAX * 2]])
    assert _stored(x, True).dtype == np.float32 and _stored(x[:1], True).dtype == np.float16
    assert _stored(torch.tensor([[float("inf")]]), True).dtype == np.float32


def test_scores_from_a_float16_trace_are_within_float16_rounding(model):
    from rwkv_core.analysis.scores import full_scores_all

    full = _reopened(build_trace(model, TOKENS))
    half = _reopened(build_trace(model, TOKENS, **COMPACT))
    for a, b in zip(inputs_from_trace(full.float_arrays(), model.cfg), inputs_from_trace(half.float_arrays(), model.cfg)):
        sa, sb = full_scores_all(a).numpy(), full_scores_all(b).numpy()
        np.testing.assert_allclose(sb, sa, atol=5e-3 * np.abs(sa).max())


def test_layers_and_the_residual_stream_are_options(model):
    tr = _reopened(build_trace(model, TOKENS, layers=[2, 0], residual=False, **{"logits_topk": 3}))
    assert tr.layers == [0, 2] and trace_contents(tr).layers == [0, 2]
    assert not any(k.startswith(("resid_", "r_l1")) for k in tr.arrays)
    assert tr.meta["stored"] == {"logits": "topk", "logits_topk": 3, "float16": False, "residual": False}
    with pytest.raises(KeyError):
        tr.layer("resid", 0)


@pytest.mark.parametrize("options", [{}, COMPACT, {"layers": [1], "logits_topk": 0}, {"float16": True},
                                     {"logits_topk": 7, "residual": False}, {"scores": True, "float16": True}])
def test_the_size_estimate_is_the_file_size(model, options):
    buf = io.BytesIO()
    save_trace(build_trace(model, TOKENS, token_texts=[str(t) for t in TOKENS], **options), buf)
    est = estimate_trace_bytes(model.cfg, len(TOKENS), **options)
    assert abs(est - len(buf.getvalue())) <= 0.05 * len(buf.getvalue()) + 4096, (est, len(buf.getvalue()))


def test_the_default_download_of_the_0_1b_shape_and_1031_tokens_is_under_100_mb():
    cfg = ModelConfig(version="7", n_layer=12, n_embd=768, vocab_size=65536, n_head=12, head_size=64, dim_ffn=3072)
    assert estimate_trace_bytes(cfg, 1031, **COMPACT) < 100e6
    assert estimate_trace_bytes(cfg, 1031) > 500e6  # everything in float32: what the download wrote before


def test_progress_is_told_after_every_block_and_can_stop_the_build(model):
    told = []
    build_trace(model, TOKENS, layers=[1], progress=lambda done, total: told.append((done, total)))
    assert told == [(1, 4), (2, 4), (3, 4), (4, 4)]

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 2:
            raise Stop()

    with pytest.raises(Stop):
        build_trace(model, TOKENS, progress=stop)
    assert not any(hp.active for hp in model.hook_points.values())  # the capture hooks are gone again


def _old_format(arrays: dict, version: int) -> bytes:
    """A file as formats 1 and 2 wrote it: full float32 logits, w (not ln w), kk and ktilde stored, no k_k/k_a, no
    'stored' in meta."""
    meta = json.loads(str(arrays["meta"]))
    meta.pop("stored")
    meta["format_version"] = version
    old = {k: a for k, a in arrays.items() if not k.startswith(("k_k_", "k_a_", "logw_"))}
    old.update({f"w_l{l}": np.exp(arrays[f"logw_l{l}"]) for l in meta["layers"]})
    old["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    (np.savez_compressed if version == 1 else np.savez)(buf, **old)
    return buf.getvalue()


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_formats_1_and_2_still_open_and_read_the_same(model, version):
    arrays = build_trace(model, TOKENS)
    old = load_trace(io.BytesIO(_old_format(arrays, version)))
    new = _reopened(arrays)
    assert old.meta["format_version"] == version
    assert np.array_equal(old.predictions()[0], new.predictions()[0])
    for l in range(3):
        olds = old.layer_arrays(l)
        assert "logw_l{l}" not in olds
        for name, a in new.layer_arrays(l).items():
            if not name.startswith(("k_k_", "k_a_", "logw_")):
                assert np.array_equal(olds[name], a), name
        # ln of the stored w: float32 w near 1 keeps ln w only to ~6e-8 absolute (why format 3 stores ln w)
        np.testing.assert_allclose(old.layer("logw", l), new.layer("logw", l), rtol=1e-6, atol=2e-7)
    for a, b in zip(inputs_from_trace(old.float_arrays(), model.cfg), inputs_from_trace(new.float_arrays(), model.cfg)):
        assert torch.equal(a.r, b.r) and torch.equal(a.k, b.k) and torch.allclose(a.logw, b.logw, rtol=1e-6, atol=2e-7)


def test_malformed_top_k_logits_are_refused_with_one_line(model):
    arrays = build_trace(model, TOKENS, logits_topk=4)
    for bad, match in [({"logits_topk_ids": arrays["logits_topk_ids"].astype(np.float32)}, "token ids"),
                       ({"logits_topk_ids": -arrays["logits_topk_ids"] - 1}, "token ids"),
                       ({"logits_topk_logp": arrays["logits_topk_logp"][:, :2]}, "logits_topk_logp")]:
        with pytest.raises(TraceFileError, match=match):
            _reopened({**arrays, **bad})
    tr = _reopened({**arrays, "logits_topk_ids": arrays["logits_topk_ids"] + 300})
    with pytest.raises(TraceFileError, match="outside the vocabulary of 300"):
        trace_contents(tr)
