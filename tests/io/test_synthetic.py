"""Random official-layout checkpoints (rwkv_core.io.synthetic) and the official `rwkv` package oracle.

The oracle runs validate both pieces at once: the package loads each synthetic checkpoint, detects the intended
version, gives finite logits with a healthy spread, and its sequence and RNN modes agree (logits and final state).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwkv_core.io.synthetic import (
    default_dim_ffn,
    default_lora,
    random_state_dict,
    save_checkpoint,
    write_random_checkpoint,
)
from tests.oracle_rwkv_pip import OracleError, official_forward, official_forward_modes, state_by_layer

T_TOKENS = 24


# ---------------------------------------------------------------------------------------------------------------------
# Expected official names and shapes (rwkv-math §3), written out independently of the generator.


def expected_shapes(version, L, C, N, V, F, lora, layer0_v=False):
    H = C // N
    exp = {"emb.weight": (V, C), "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C),
           "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    mix = (1, 1, C)
    for i in range(L):
        b, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for n in ("ln1", "ln2"):
            exp[b + n + ".weight"] = (C,)
            exp[b + n + ".bias"] = (C,)
        lin = {a + m + ".weight": (C, C) for m in ("key", "value", "receptance", "output")}
        exp.update(lin)
        if version != "4":
            exp[a + "ln_x.weight"] = (C,)
            exp[a + "ln_x.bias"] = (C,)
        if version == "4":
            exp.update({a + "time_decay": (C,), a + "time_first": (C,)})
            exp.update({a + f"time_mix_{m}": mix for m in "kvr"})
        elif version == "5.1":
            exp.update({a + "time_decay": (H,), a + "time_first": (H,)})
            exp.update({a + f"time_mix_{m}": mix for m in "kvr"})
        elif version == "5.2":
            exp.update({a + "time_decay": (H, N), a + "time_faaaa": (H, N), a + "gate.weight": (C, C)})
            exp.update({a + f"time_mix_{m}": mix for m in "kvrg"})
        elif version == "6":
            dm, dd = lora["maa"], lora["decay"]
            exp.update({a + f"time_maa_{m}": mix for m in "xwkvrg"})
            exp.update({a + "time_maa_w1": (C, 5 * dm), a + "time_maa_w2": (5, dm, C), a + "time_decay": mix,
                        a + "time_decay_w1": (C, dd), a + "time_decay_w2": (dd, C), a + "time_faaaa": (H, N),
                        a + "gate.weight": (C, C)})
        else:
            exp.update({a + f"x_{m}": mix for m in "rwkvag"})
            exp.update({a + "w0": mix, a + "a0": mix, a + "k_k": mix, a + "k_a": mix, a + "r_k": (H, N)})
            for n in ("w", "a", "v", "g"):
                if n == "v" and i == 0 and not layer0_v:
                    continue
                exp[a + n + "1"] = (C, lora[n])
                exp[a + n + "2"] = (lora[n], C)
            if i > 0 or layer0_v:
                exp[a + "v0"] = mix
        if version == "7":
            exp.update({f + "x_k": mix, f + "key.weight": (F, C), f + "value.weight": (C, F)})
        else:
            pre = "time_maa_" if version == "6" else "time_mix_"
            exp.update({f + pre + "k": mix, f + pre + "r": mix, f + "key.weight": (F, C),
                        f + "receptance.weight": (C, C), f + "value.weight": (C, F)})
    return exp


@pytest.mark.parametrize("version", ["4", "5.1", "5.2", "6", "7"])
@pytest.mark.parametrize("C,N,L", [(64, 16, 2), (128, 64, 3)])
def test_official_names_and_shapes(version, C, N, L):
    sd = random_state_dict(version, n_layer=L, n_embd=C, head_size=N, vocab_size=256)
    F = 4 * C if version in ("4", "7") else int(3.5 * C) // 32 * 32
    assert default_dim_ffn(version, C) == F
    exp = expected_shapes(version, L, C, N, 256, F, default_lora(version, C))
    assert {k: tuple(v.shape) for k, v in sd.items()} == exp
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    keys = list(sd)
    assert keys[0] == "emb.weight" and keys[-1] == "head.weight"
    if version in ("5.1", "5.2"):  # official order inside block 0: time_decay before ln_x (the package quirk)
        assert keys.index("blocks.0.att.time_decay") < keys.index("blocks.0.att.ln_x.weight")


def test_options_lora_ffn_layer0_v_dtype():
    sd = random_state_dict("6", n_embd=64, dim_ffn=96, lora={"decay": 24})
    assert sd["blocks.1.att.time_maa_w1"].shape == (64, 5 * 8)
    assert sd["blocks.1.att.time_maa_w2"].shape == (5, 8, 64)
    assert sd["blocks.1.att.time_decay_w1"].shape == (64, 24)
    assert sd["blocks.0.ffn.key.weight"].shape == (96, 64)
    assert default_lora("6", 256) == {"maa": 32, "decay": 64}
    assert default_lora("7", 768) == {"w": 64, "a": 64, "v": 32, "g": 128}

    base = random_state_dict("7", n_embd=64)
    sd = random_state_dict("7", n_embd=64, lora=12, include_v7_layer0_v=True)
    for n in "wavg":
        assert sd[f"blocks.1.att.{n}1"].shape == (64, 12)
    assert sd["blocks.0.att.v0"].shape == (1, 1, 64) and sd["blocks.0.att.v2"].shape == (12, 64)
    assert "blocks.0.att.v0" not in base
    # per-tensor generators: options leave unrelated tensors unchanged
    assert torch.equal(sd["blocks.1.att.w0"], base["blocks.1.att.w0"])
    assert torch.equal(sd["head.weight"], base["head.weight"])

    for dt in (torch.bfloat16, torch.float16):
        h = random_state_dict("7", n_embd=64, dtype=dt)
        assert all(v.dtype == dt for v in h.values())
        assert torch.equal(h["blocks.1.att.w0"], base["blocks.1.att.w0"].to(dt))

    with pytest.raises(ValueError):
        random_state_dict("6", lora={"w": 8})
    with pytest.raises(ValueError):
        random_state_dict("4", lora=8)
    with pytest.raises(ValueError):
        random_state_dict("7", n_embd=64, head_size=24)
    with pytest.raises(ValueError):
        random_state_dict("3")


def test_deterministic_given_seed(tmp_path):
    a = random_state_dict("6", seed=3)
    b = random_state_dict("6", seed=3)
    c = random_state_dict("6", seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a)
    save_checkpoint(a, tmp_path / "m.pth")
    back = torch.load(tmp_path / "m.pth", map_location="cpu", weights_only=True)
    assert list(back) == list(a) and all(torch.equal(a[k], back[k]) for k in a)


def test_large_vocab():
    sd = random_state_dict("7", vocab_size=65536)
    assert sd["emb.weight"].shape == (65536, 64) and sd["head.weight"].shape == (65536, 64)
    assert 0.08 < sd["emb.weight"].std().item() < 0.12


def _static_decay(sd, version):
    """Per-layer static per-step decay lambda from the raw checkpoint (rwkv-math §9), float64."""
    out = []
    for i in range(1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))):
        a = f"blocks.{i}.att."
        if version == "7":
            out.append(torch.exp(-math.exp(-0.5) * torch.sigmoid(sd[a + "w0"].double().flatten())))
        else:
            out.append(torch.exp(-torch.exp(sd[a + "time_decay"].double().flatten())))
    return torch.stack(out)


@pytest.mark.parametrize("version,lo,hi", [("4", 0.05, 0.95), ("5.1", 0.5, 0.95), ("5.2", 0.5, 0.95),
                                           ("6", 0.5, 0.95), ("7", 0.6, 0.95)])
def test_decays_spread(version, lo, hi):
    """Static decays span (near) 0 .. near 1; v7's lambda cannot go below exp(-e^-0.5) ~ 0.545, hence 0.6."""
    for C, N, L in [(64, 16, 2), (128, 64, 3)]:
        sd = random_state_dict(version, n_layer=L, n_embd=C, head_size=N)
        lam = _static_decay(sd, version)
        assert lam.min() < lo and lam.max() > hi, (C, lam.min().item(), lam.max().item())
        assert (lam > 0).all() and (lam < 1).all()
        if version in ("5.2", "6", "7"):  # channels of one head differ
            rate = -torch.log(lam).reshape(L, C // N, N)
            assert (torch.log(rate).std(dim=-1) > 0.2).all()


def test_values_are_realistic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 128, generator=g)  # stand-in for LayerNorm outputs
    sd6 = random_state_dict("6", n_layer=3, n_embd=128, head_size=32)
    sd7 = random_state_dict("7", n_layer=3, n_embd=128, head_size=32)
    for sd in (sd6, sd7):
        for k, v in sd.items():
            assert torch.isfinite(v).all(), k
            if k.endswith(("ln1.weight", "ln2.weight", "ln_x.weight", "ln_out.weight")):
                assert abs(v.mean().item() - 1) < 0.1 and 0.08 < v.std().item() < 0.25, k
            if k.endswith(".bias"):
                assert v.abs().mean().item() < 0.1, k
            if k.split(".")[-1].startswith(("time_maa_", "x_")) and v.shape == (1, 1, 128):
                assert 0 < v.min() and v.max() < 1 and v.std() > 0.2, k
    a = "blocks.1.att."
    # v6: the data-dependent decay and mixes move by O(0.3-1)
    dmod = torch.tanh(x @ sd6[a + "time_decay_w1"]) @ sd6[a + "time_decay_w2"]
    assert 0.3 < dmod.std().item() < 1.5
    m = torch.bmm(torch.tanh(x @ sd6[a + "time_maa_w1"]).view(-1, 5, 8).transpose(0, 1), sd6[a + "time_maa_w2"])
    assert 0.15 < m.std().item() < 0.6
    # v7: decay LoRA matters; a = sigmoid(.) spans (0, 1); gate ~1 rms; value-residual mix spans (0, 1)
    assert 0.3 < (torch.tanh(x @ sd7[a + "w1"]) @ sd7[a + "w2"]).std().item() < 1.5
    av = torch.sigmoid(sd7[a + "a0"].view(-1) + (x @ sd7[a + "a1"]) @ sd7[a + "a2"])
    assert av.min() < 0.05 and av.max() > 0.95 and 0.3 < av.mean() < 0.7
    assert 0.5 < (torch.sigmoid(x @ sd7[a + "g1"]) @ sd7[a + "g2"]).pow(2).mean().sqrt().item() < 2
    vv = torch.sigmoid(sd7[a + "v0"].view(-1) + (x @ sd7[a + "v1"]) @ sd7[a + "v2"])
    assert vv.min() < 0.1 and vv.max() > 0.9
    assert abs(sd7[a + "k_k"].mean().item() - 0.85) < 0.05 and abs(sd7[a + "k_a"].mean().item() - 1) < 0.05
    assert 0.05 < sd7[a + "r_k"].std().item() < 0.2
    # Linear weights N(0, 1/sqrt(fan_in)): pre-activations O(1)
    assert 0.8 < (x @ sd7[a + "key.weight"].T).std().item() < 1.2


# ---------------------------------------------------------------------------------------------------------------------
# The official package on synthetic checkpoints


def _tokens(vocab, seed=0, n=T_TOKENS):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _check_run(res, version, L, C, N, V, T):
    seq, rnn = res["seq"], res["rnn"]
    for r in (seq, rnn):
        lg = r["logits"]
        assert lg.shape == (T, V) and lg.dtype == np.float32
        assert np.isfinite(lg).all()
        s = lg.std(axis=1)
        assert (s > 0.1).all() and (s < 100).all(), s
        assert lg.std(axis=0).mean() > 0.1  # logits depend on the position / context
    assert _rel(seq["logits"], rnn["logits"]) < 1e-4

    per = 5 if version == "4" else 3
    H = C // N
    for r in (seq, rnn):
        st = r["state"]
        assert len(st) == per * L and r["n_layer"] == L
        layers = state_by_layer(st, version)
        for lay in layers:
            assert all(np.isfinite(v).all() for v in lay.values())
            assert lay["att_x_prev"].shape == (C,) and lay["ffn_x_prev"].shape == (C,)
            if version == "4":
                assert all(lay[k].shape == (C,) for k in ("aa", "bb", "pp"))
                assert (lay["bb"] > 0).all() and (lay["pp"] > -1e20).all()
            else:
                assert lay["wkv"].shape == (H, N, N) and np.abs(lay["wkv"]).max() > 1e-2
    for a, b in zip(seq["state"], rnn["state"]):
        assert _rel(a, b) < 1e-4


ORACLE_CASES = [  # version, C, head_size, n_layer (v4 has no heads: the C=128 case stands in for "head size 64")
    ("4", 64, 16, 2), ("4", 128, 64, 3),
    ("5.2", 64, 16, 2), ("5.2", 128, 64, 3),
    ("6", 64, 16, 2), ("6", 128, 64, 3),
    ("7", 64, 16, 2), ("7", 128, 64, 3),
    ("5.1", 64, 16, 2),
]


@pytest.mark.parametrize("version,C,N,L", ORACLE_CASES, ids=[f"v{v}-C{c}-N{n}-L{l}" for v, c, n, l in ORACLE_CASES])
def test_package_loads_and_modes_agree(tmp_path, version, C, N, L):
    path = tmp_path / "m.pth"
    write_random_checkpoint(path, version, n_layer=L, n_embd=C, head_size=N, vocab_size=256, seed=L)
    res = official_forward_modes(path, _tokens(256, seed=C), version=version)
    assert res["seq"]["package_version"] == {"4": 4.0, "5.1": 5.0, "5.2": 5.2, "6": 6.0, "7": 7.0}[version]
    _check_run(res, version, L, C, N, 256, T_TOKENS)


def test_large_vocab_v7(tmp_path):
    path = tmp_path / "big.pth"
    write_random_checkpoint(path, "7", n_layer=2, n_embd=64, head_size=16, vocab_size=65536)
    res = official_forward_modes(path, _tokens(65536, n=16), version="7")
    _check_run(res, "7", 2, 64, 16, 65536, 16)


def test_one_layer_v52_and_single_mode_api(tmp_path):
    """n_layer=1 v5.2 needs the wrapper's key reordering; official_forward (one mode) matches the two-mode run."""
    path = tmp_path / "one"  # no .pth suffix: the wrapper links it as model.pth
    write_random_checkpoint(path, "5.2", n_layer=1, n_embd=64, head_size=16)
    toks = _tokens(256, n=8)
    r = official_forward(path, toks, mode="rnn", version="5.2")
    assert r["package_version"] == 5.2 and r["logits"].shape == (8, 256) and len(r["state"]) == 3
    assert np.isfinite(r["logits"]).all() and r["logits"].std() > 0.1


def test_version_mismatch_is_reported(tmp_path):
    path = tmp_path / "v4.pth"
    write_random_checkpoint(path, "4", n_layer=2)
    with pytest.raises(OracleError, match="detected version 4.0"):
        official_forward(path, [1, 2, 3], mode="seq", version="5.2")


@pytest.mark.parametrize("version", ["6", "7"])
def test_bf16_checkpoint(tmp_path, version):
    """bf16-stored checkpoints load and the modes agree. Package quirk: v4-v6 compute LN(emb; ln0) in bf16 before
    casting (logits ~1e-3 relative off the fp32-upcast run); the v7 class casts first (identical)."""
    path = tmp_path / "bf16.pth"
    write_random_checkpoint(path, version, n_layer=2, n_embd=64, head_size=16, dtype=torch.bfloat16)
    toks = _tokens(256, n=16)
    res = official_forward_modes(path, toks, version=version)
    _check_run(res, version, 2, 64, 16, 256, 16)
    up = official_forward(path, toks, mode="seq", version=version, upcast=True)
    d = _rel(res["seq"]["logits"], up["logits"])
    if version == "7":
        assert d < 1e-6
    else:
        assert 1e-5 < d < 3e-2
