"""Tests of rwkv_core.io.rwkvcpp: the rwkv.cpp .bin reader and its conversion to official BlinkDL tensors.

Uses the six tiny models in ../shared/rwkv-weights (skipped with a reason where absent). Files derived from them
(truncated or patched copies, FP16 re-encodings) are written to tmp_path only, never into the repository.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from rwkv_core.errors import CheckpointError
from rwkv_core.io.rwkvcpp import (
    MAGIC,
    dequantize_q5_1,
    read_rwkvcpp,
    read_rwkvcpp_raw,
    scan_rwkvcpp,
)
from tests.conftest import shared_file

F4V0 = "tiny-rwkv-4v0-660K-FP32.bin"
F5V1 = "tiny-rwkv-5v1-730K-FP32.bin"
F5V2 = "tiny-rwkv-5v2-730K-FP32.bin"
F6V0_1M = "tiny-rwkv-6v0-1m-FP32.bin"
F6V0_3M = "tiny-rwkv-6v0-3m-Q5_1.bin"
F7V0 = "tiny-rwkv-7v0-834K-FP32.bin"

# file: (version, n_layer, C, H, FFN width, params, header data type, file version) from rwkv-weights/README.md §2.
MODELS = {
    F4V0: ("4", 4, 128, None, 256, 661_504, "FP32", 100),
    F5V1: ("5.1", 12, 64, 8, 256, 680_640, "FP32", 101),
    F5V2: ("5.2", 12, 64, 8, 256, 731_904, "FP32", 101),
    F6V0_1M: ("6", 12, 64, 8, 224, 1_028_352, "FP32", 101),
    F6V0_3M: ("6", 12, 128, 16, 448, 3_334_656, "Q5_1", 101),
    F7V0: ("7", 12, 64, 1, 256, 829_888, "FP32", 101),
}
V = 256
DM, DD = 32, 64  # v6 LoRA ranks (README §2)
D7 = 32  # v7 LoRA ranks (README §2)


def expected_shapes(version: str, L: int, C: int, H: int | None, F: int) -> dict[str, tuple[int, ...]]:
    """The official BlinkDL state_dict key set and shapes, written out from rwkv-math §3."""
    vec = (1, 1, C)
    s: dict[str, tuple[int, ...]] = {
        "emb.weight": (V, C),
        "blocks.0.ln0.weight": (C,),
        "blocks.0.ln0.bias": (C,),
        "ln_out.weight": (C,),
        "ln_out.bias": (C,),
        "head.weight": (V, C),
    }
    for i in range(L):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            s[p + ln + ".weight"] = (C,)
            s[p + ln + ".bias"] = (C,)
        a, f = p + "att.", p + "ffn."
        for m in ("key", "value", "receptance", "output"):
            s[a + m + ".weight"] = (C, C)
        if version != "4":
            s[a + "ln_x.weight"] = (C,)
            s[a + "ln_x.bias"] = (C,)
        N = C // H if H else None
        if version == "4":
            s.update({a + "time_decay": (C,), a + "time_first": (C,)})
        elif version == "5.1":
            s.update({a + "time_decay": (H,), a + "time_first": (H,)})
        elif version == "5.2":
            s.update({a + "time_decay": (H, N), a + "time_faaaa": (H, N), a + "gate.weight": (C, C)})
            s[a + "time_mix_g"] = vec
        elif version == "6":
            for x in "xwkvrg":
                s[a + "time_maa_" + x] = vec
            s.update(
                {
                    a + "time_maa_w1": (C, 5 * DM),
                    a + "time_maa_w2": (5, DM, C),
                    a + "time_decay": vec,
                    a + "time_decay_w1": (C, DD),
                    a + "time_decay_w2": (DD, C),
                    a + "time_faaaa": (H, N),
                    a + "gate.weight": (C, C),
                }
            )
        elif version == "7":
            for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
                s[a + x] = vec
            for x in "wag" if i == 0 else "wavg":  # layer 0 has no v0/v1/v2
                s[a + x + "1"] = (C, D7)
                s[a + x + "2"] = (D7, C)
            if i:
                s[a + "v0"] = vec
            s[a + "r_k"] = (H, N)
        if version in ("4", "5.1", "5.2"):
            for x in "kvr":
                s[a + "time_mix_" + x] = vec
            s[f + "time_mix_k"] = vec
            s[f + "time_mix_r"] = vec
        if version == "6":
            s[f + "time_maa_k"] = vec
            s[f + "time_maa_r"] = vec
        if version == "7":
            s[f + "x_k"] = vec
        else:
            s[f + "receptance.weight"] = (C, C)
        s[f + "key.weight"] = (F, C)
        s[f + "value.weight"] = (C, F)
    return s


# ---------------------------------------------------------------------------------------------- real tiny models


@pytest.mark.parametrize("fname", list(MODELS))
def test_tiny_model_version_keys_shapes_and_counts(fname):
    version, L, C, H, F, params, dtype, file_version = MODELS[fname]
    sd, meta = read_rwkvcpp(shared_file(fname))

    assert meta["format"] == "rwkv.cpp"
    assert meta["version_hint"] == version
    assert meta["file_version"] == file_version
    assert meta["data_type"] == dtype
    assert (meta["n_vocab"], meta["n_embed"], meta["n_layer"]) == (V, C, L)
    assert meta["ln_x_eps"] == {"4": None, "5.1": 1e-5, "5.2": 1e-5, "6": 64e-5, "7": 64e-5}[version]

    got = {k: tuple(v.shape) for k, v in sd.items()}
    want = expected_shapes(version, L, C, H, F)
    assert set(got) == set(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    assert got == want
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    assert all(bool(torch.isfinite(v).all()) for v in sd.values())

    # The README parameter counts equal the plain sum of numel over the official tensors: they include ln0 (block 0
    # only), and splitting v7's x_rwkvag (6,1,C) into six (1,1,C) vectors keeps the count. No convention gap.
    assert sum(v.numel() for v in sd.values()) == params
    # ... and the conversion neither drops nor invents values relative to the file.
    assert sum(a.size for a in read_rwkvcpp_raw(shared_file(fname)).values()) == params


def test_v7_file_has_no_layer0_value_residual():
    sd, _ = read_rwkvcpp(shared_file(F7V0))
    raw = read_rwkvcpp_raw(shared_file(F7V0))
    for x in ("v0", "v1", "v2"):
        assert f"blocks.0.att.{x}" not in raw  # the rwkv.cpp file itself omits them ...
        assert f"blocks.0.att.{x}" not in sd  # ... and the reader invents nothing
        assert f"blocks.1.att.{x}" in sd


def test_tensor_storage_types_of_the_q5_1_file():
    header, tensors = scan_rwkvcpp(shared_file(F6V0_3M))
    assert header.data_type_name == "Q5_1"
    by_type = {}
    for t in tensors:
        by_type.setdefault(t.data_type_name, []).append(t)
    assert set(by_type) == {"FP32", "Q5_1"}
    # rwkv-math §10: emb, head, all 1-D and all 3-D tensors stay FP32, the other 2-D matrices are Q5_1.
    for t in by_type["Q5_1"]:
        assert len(t.shape) == 2 and t.name not in ("emb.weight", "head.weight")
    for t in by_type["FP32"]:
        assert len(t.shape) != 2 or t.name in ("emb.weight", "head.weight")
    assert {t.name.split(".", 2)[-1] for t in by_type["Q5_1"]} >= {"att.time_maa_w1", "att.time_decay_w1"}
    _, meta = read_rwkvcpp(shared_file(F6V0_3M))
    assert meta["tensor_data_types"] == {"FP32": len(by_type["FP32"]), "Q5_1": len(by_type["Q5_1"])}


def test_decay_profiles_match_readme():
    """Static per-step decays read from the converted tensors fall in the ranges README §2 reports."""

    def lam_range(sd, key_end, fn):
        v = torch.cat([t.flatten() for k, t in sd.items() if k.endswith(key_end)]).double()
        lam = fn(v)
        return lam.min().item(), lam.max().item()

    ee = lambda w: torch.exp(-torch.exp(w))  # noqa: E731
    for fname, lo, hi in ((F4V0, 0.26, 0.44), (F5V1, 0.26, 0.45), (F5V2, 0.26, 0.44), (F6V0_1M, 0.65, 0.999)):
        mn, mx = lam_range(read_rwkvcpp(shared_file(fname))[0], "att.time_decay", ee)
        assert lo <= mn < mx <= hi, (fname, mn, mx)
    mn, mx = lam_range(
        read_rwkvcpp(shared_file(F7V0))[0], "att.w0", lambda w: torch.exp(-math.exp(-0.5) * torch.sigmoid(w))
    )
    assert 0.89 <= mn < mx <= 0.9995


# ------------------------------------------------------------------------------------- conversion round trips


def test_v4_roundtrip():
    sd, meta = read_rwkvcpp(shared_file(F4V0))
    raw = read_rwkvcpp_raw(shared_file(F4V0))
    for i in range(meta["n_layer"]):
        s = raw[f"blocks.{i}.att.time_decay"]
        w = sd[f"blocks.{i}.att.time_decay"].double().numpy()
        np.testing.assert_allclose(-np.exp(w), s, rtol=1e-6)
        assert np.array_equal(sd[f"blocks.{i}.att.time_first"].numpy(), raw[f"blocks.{i}.att.time_first"])
        assert np.array_equal(sd[f"blocks.{i}.att.time_mix_k"].numpy().ravel(), raw[f"blocks.{i}.att.time_mix_k"])
        assert np.array_equal(sd[f"blocks.{i}.ffn.key.weight"].numpy(), raw[f"blocks.{i}.ffn.key.weight"])


def test_v5_1_roundtrip():
    sd, meta = read_rwkvcpp(shared_file(F5V1))
    raw = read_rwkvcpp_raw(shared_file(F5V1))
    for i in range(meta["n_layer"]):
        s = raw[f"blocks.{i}.att.time_decay"]
        assert s.shape == (8, 1, 1)
        w = sd[f"blocks.{i}.att.time_decay"].double().numpy()
        np.testing.assert_allclose(np.exp(-np.exp(w)), s.ravel(), rtol=1e-6)
        u = sd[f"blocks.{i}.att.time_first"].double().numpy()
        np.testing.assert_allclose(np.exp(u), raw[f"blocks.{i}.att.time_first"].ravel(), rtol=1e-6)


def test_v5_2_roundtrip():
    sd, meta = read_rwkvcpp(shared_file(F5V2))
    raw = read_rwkvcpp_raw(shared_file(F5V2))
    for i in range(meta["n_layer"]):
        s = raw[f"blocks.{i}.att.time_decay"]
        assert s.shape == (8, 8, 1)
        w = sd[f"blocks.{i}.att.time_decay"].double().numpy()
        assert w.shape == (8, 8)
        # recompute what rwkv.cpp stored; float32 rounding of w is the only error left
        np.testing.assert_allclose(np.exp(-np.exp(w)), s[:, :, 0], rtol=1e-6)
        assert np.array_equal(sd[f"blocks.{i}.att.time_faaaa"].numpy(), raw[f"blocks.{i}.att.time_faaaa"][:, :, 0])


def test_v6_roundtrip():
    for fname in (F6V0_1M, F6V0_3M):
        sd, meta = read_rwkvcpp(shared_file(fname))
        raw = read_rwkvcpp_raw(shared_file(fname))
        C = meta["n_embed"]
        for i in range(meta["n_layer"]):
            a = f"blocks.{i}.att."
            assert np.array_equal(sd[a + "time_decay"].numpy().ravel(), raw[a + "time_decay"].ravel())
            assert np.array_equal(sd[a + "time_maa_w1"].numpy(), raw[a + "time_maa_w1"].T)
            # official (5, Dm, C) == file (5, C, Dm) transposed back
            assert np.array_equal(sd[a + "time_maa_w2"].numpy(), raw[a + "time_maa_w2"].transpose(0, 2, 1))
            assert np.array_equal(sd[a + "time_decay_w1"].numpy(), raw[a + "time_decay_w1"].T)
            assert np.array_equal(sd[a + "time_decay_w2"].numpy(), raw[a + "time_decay_w2"].T)
            assert np.array_equal(sd[a + "time_faaaa"].numpy(), raw[a + "time_faaaa"][..., 0])
            assert np.array_equal(sd[a + "time_maa_x"].numpy(), raw[a + "time_maa_x"].reshape(1, 1, C))


def test_v7_roundtrip():
    sd, meta = read_rwkvcpp(shared_file(F7V0))
    raw = read_rwkvcpp_raw(shared_file(F7V0))
    C = meta["n_embed"]
    for i in range(meta["n_layer"]):
        a = f"blocks.{i}.att."
        cat = np.concatenate([sd[a + x].numpy() for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")], axis=0)
        assert np.array_equal(cat, raw[a + "x_rwkvag"])  # (6, 1, C), in the order r w k v a g
        for x in "wavg" if i else "wag":
            assert np.array_equal(sd[a + x + "1"].numpy(), raw[a + x + "1"].T)
            assert np.array_equal(sd[a + x + "2"].numpy(), raw[a + x + "2"].T)
        for x in ("w0", "a0", "k_k", "k_a") + (("v0",) if i else ()):
            assert np.array_equal(sd[a + x].numpy(), raw[a + x].reshape(1, 1, C))
        assert np.array_equal(sd[a + "r_k"].numpy(), raw[a + "r_k"])
        assert np.array_equal(sd[f"blocks.{i}.ffn.x_k"].numpy(), raw[f"blocks.{i}.ffn.x_k"].reshape(1, 1, C))


# ----------------------------------------------------------------------------- end-to-end: expected logits


def _ln(x, w, b, eps=1e-5):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def _gn(y, w, b, H, eps):
    y = y.view(H, -1)
    y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + eps)
    return y.reshape(-1) * w + b


def _forward_rnn(sd, meta, tokens):
    """Minimal, independent RNN forward on the official tensors (formulas of rwkv-math §4-§5), for checking the
    conversion against rwkv.cpp's expected logits. Not the project's model."""
    ver, L, C = meta["version_hint"], meta["n_layer"], meta["n_embed"]
    H = meta["n_head"]
    N = C // H
    eps = meta["ln_x_eps"]
    g = lambda k: sd[k].reshape(-1) if sd[k].dim() == 3 and sd[k].shape[:2] == (1, 1) else sd[k]  # noqa: E731
    st = [dict(ap=torch.zeros(C), fp=torch.zeros(C), aa=torch.zeros(C), bb=torch.zeros(C),
               pp=torch.full((C,), -1e30), S=torch.zeros(H, N, N)) for _ in range(L)]  # fmt: skip
    for tok in tokens:
        x = _ln(sd["emb.weight"][tok], sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"])
        v_first = None
        for i in range(L):
            p, s = f"blocks.{i}.", st[i]
            a = p + "att."
            xx = _ln(x, g(p + "ln1.weight"), g(p + "ln1.bias"))
            prev, s["ap"] = s["ap"], xx
            if ver in ("4", "5.1", "5.2"):
                mix = lambda m: xx * g(a + m) + prev * (1 - g(a + m))  # noqa: E731
                xk, xv, xr = mix("time_mix_k"), mix("time_mix_v"), mix("time_mix_r")
            if ver == "4":
                r = torch.sigmoid(sd[a + "receptance.weight"] @ xr)
                k, v = sd[a + "key.weight"] @ xk, sd[a + "value.weight"] @ xv
                rho, u = torch.exp(sd[a + "time_decay"]), sd[a + "time_first"]
                q = torch.maximum(s["pp"], u + k)
                e1, e2 = torch.exp(s["pp"] - q), torch.exp(u + k - q)
                wkv = (e1 * s["aa"] + e2 * v) / (e1 * s["bb"] + e2)
                q2 = torch.maximum(s["pp"] - rho, k)
                e1, e2 = torch.exp(s["pp"] - rho - q2), torch.exp(k - q2)
                s["aa"], s["bb"], s["pp"] = e1 * s["aa"] + e2 * v, e1 * s["bb"] + e2, q2
                out = sd[a + "output.weight"] @ (r * wkv)
            elif ver in ("5.1", "5.2", "6"):
                if ver == "6":
                    d = prev - xx
                    z = torch.tanh((xx + d * g(a + "time_maa_x")) @ sd[a + "time_maa_w1"]).view(5, -1)
                    mw, mk, mv, mr, mg = torch.einsum("nd,ndc->nc", z, sd[a + "time_maa_w2"])
                    xw = xx + d * (g(a + "time_maa_w") + mw)
                    xk = xx + d * (g(a + "time_maa_k") + mk)
                    xv = xx + d * (g(a + "time_maa_v") + mv)
                    xr = xx + d * (g(a + "time_maa_r") + mr)
                    xg = xx + d * (g(a + "time_maa_g") + mg)
                    dd = g(a + "time_decay") + torch.tanh(xw @ sd[a + "time_decay_w1"]) @ sd[a + "time_decay_w2"]
                    lam = torch.exp(-torch.exp(dd)).view(H, N, 1)
                    u = sd[a + "time_faaaa"].view(H, N, 1)
                elif ver == "5.2":
                    xg = xx * g(a + "time_mix_g") + prev * (1 - g(a + "time_mix_g"))
                    lam = torch.exp(-torch.exp(sd[a + "time_decay"])).view(H, N, 1)
                    u = sd[a + "time_faaaa"].view(H, N, 1)
                else:
                    lam = torch.exp(-torch.exp(sd[a + "time_decay"])).view(H, 1, 1)
                    u = torch.exp(sd[a + "time_first"]).view(H, 1, 1)
                r = (sd[a + "receptance.weight"] @ xr).view(H, 1, N)
                k = (sd[a + "key.weight"] @ xk).view(H, N, 1)
                v = (sd[a + "value.weight"] @ xv).view(H, 1, N)
                kv = k @ v
                y = (r @ (u * kv + s["S"])).reshape(C)
                s["S"] = lam * s["S"] + kv
                o = _gn(y, sd[a + "ln_x.weight"], sd[a + "ln_x.bias"], H, eps)
                if ver != "5.1":
                    o = o * torch.nn.functional.silu(sd[a + "gate.weight"] @ xg)
                out = sd[a + "output.weight"] @ o
            else:  # v7
                d = prev - xx
                xr, xw, xk, xv, xa, xg = (xx + d * g(a + n) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
                r = sd[a + "receptance.weight"] @ xr
                w = g(a + "w0") + torch.tanh(xw @ sd[a + "w1"]) @ sd[a + "w2"]
                k = sd[a + "key.weight"] @ xk
                v = sd[a + "value.weight"] @ xv
                lam = torch.exp(-math.exp(-0.5) * torch.sigmoid(w))
                aa = torch.sigmoid(g(a + "a0") + (xa @ sd[a + "a1"]) @ sd[a + "a2"])
                gg = torch.sigmoid(xg @ sd[a + "g1"]) @ sd[a + "g2"]
                if i == 0:
                    v_first = v
                else:
                    v = v + (v_first - v) * torch.sigmoid(g(a + "v0") + (xv @ sd[a + "v1"]) @ sd[a + "v2"])
                kk = torch.nn.functional.normalize((k * g(a + "k_k")).view(H, N), dim=-1, eps=1e-12)
                k = k * (1 + (aa - 1) * g(a + "k_a"))
                S = s["S"]  # [H, value, key]
                lam_, a_, r_, k_, v_ = (t.view(H, N) for t in (lam, aa, r, k, v))
                S = S * lam_[:, None, :] - (S @ kk[:, :, None]) @ (a_ * kk)[:, None, :] + v_[:, :, None] * k_[:, None, :]
                s["S"] = S
                y = (S @ r_[:, :, None]).reshape(C)
                o = _gn(y, sd[a + "ln_x.weight"], sd[a + "ln_x.bias"], H, eps)
                o = o + ((r_ * k_ * sd[a + "r_k"]).sum(-1, keepdim=True) * v_).reshape(C)
                out = sd[a + "output.weight"] @ (o * gg)
            x = x + out
            f = p + "ffn."
            xx = _ln(x, g(p + "ln2.weight"), g(p + "ln2.bias"))
            prev, s["fp"] = s["fp"], xx
            if ver == "7":
                kf = torch.relu(sd[f + "key.weight"] @ (xx + (prev - xx) * g(f + "x_k"))) ** 2
                x = x + sd[f + "value.weight"] @ kf
            else:
                if ver == "6":
                    xk, xr = xx + (prev - xx) * g(f + "time_maa_k"), xx + (prev - xx) * g(f + "time_maa_r")
                else:
                    mk, mr = g(f + "time_mix_k"), g(f + "time_mix_r")
                    xk, xr = xx * mk + prev * (1 - mk), xx * mr + prev * (1 - mr)
                kf = torch.relu(sd[f + "key.weight"] @ xk) ** 2
                x = x + torch.sigmoid(sd[f + "receptance.weight"] @ xr) * (sd[f + "value.weight"] @ kf)
    return sd["head.weight"] @ _ln(x, sd["ln_out.weight"], sd["ln_out.bias"])


@pytest.mark.parametrize(
    "fname,logits,tol",
    [
        (F4V0, "expected-logits-4v0-660K.bin", 1e-4),
        (F5V1, "expected-logits-5v1-730K.bin", 1e-4),
        (F5V2, "expected-logits-5v2-730K.bin", 1e-4),
        (F6V0_1M, "expected-logits-6v0-1m.bin", 1e-4),
        (F6V0_3M, "expected-logits-6v0-3m.bin", 0.1),  # vector of the unquantised model (README §3)
        (F7V0, "expected-logits-7v0-834K.bin", 1e-4),
    ],
)
def test_converted_tensors_reproduce_rwkvcpp_logits(fname, logits, tol):
    """The strongest check of the conversion: the official tensors, run through the official formulas, give
    rwkv.cpp's reference logits for the prompt bytes 34, 105, 110 (README §3)."""
    sd, meta = read_rwkvcpp(shared_file(fname))
    expected = torch.from_numpy(np.fromfile(shared_file(logits), dtype="<f4"))
    with torch.no_grad():
        got = _forward_rnn(sd, meta, [34, 105, 110])
    err = (got - expected).abs().max().item()
    assert err <= tol, err


# ------------------------------------------------------------------------------------------------ Q5_1


def _q5_1_slow(block: bytes) -> list[float]:
    """One 24-byte Q5_1 block, element by element, straight from the formula (rwkv-math §10)."""
    d = struct.unpack("<e", block[0:2])[0]
    m = struct.unpack("<e", block[2:4])[0]
    qh = struct.unpack("<I", block[4:8])[0]
    qs = block[8:24]
    y = [0.0] * 32
    for j in range(16):
        lo = (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)
        hi = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)
        y[j] = lo * d + m
        y[j + 16] = hi * d + m
    return y


def test_q5_1_dequant_matches_slow_formula_on_real_blocks():
    path = shared_file(F6V0_3M)
    _, tensors = scan_rwkvcpp(path)
    raw = read_rwkvcpp_raw(path)
    sd, _ = read_rwkvcpp(path)
    data = path.read_bytes()
    q_tensors = [t for t in tensors if t.data_type_name == "Q5_1"]
    picks = [q_tensors[0], q_tensors[len(q_tensors) // 2], q_tensors[-1]]
    checked = 0
    for t in picks:
        assert t.nbytes == t.numel // 32 * 24
        nb = t.numel // 32
        flat = raw[t.name].reshape(-1)
        for b in sorted({0, 1, nb // 3, nb - 1}):
            block = data[t.offset + 24 * b : t.offset + 24 * (b + 1)]
            slow = np.array(_q5_1_slow(block), dtype=np.float64).astype(np.float32)
            # exact: q*d is exact in float32, so both round q*d + m once
            assert np.array_equal(flat[32 * b : 32 * (b + 1)], slow), (t.name, b)
            checked += 1
    assert checked >= 9
    # a Q5_1 matrix that is transposed by the conversion (time_maa_w1: file (5*Dm, C) -> official (C, 5*Dm))
    name = "blocks.0.att.time_maa_w1"
    t = next(t for t in tensors if t.name == name)
    block = data[t.offset : t.offset + 24]
    slow = np.array(_q5_1_slow(block), dtype=np.float32)
    assert np.array_equal(sd[name].numpy()[:32, 0], slow)  # first 32 values of file row 0 = official column 0
    # the dequantised values are a 5-bit grid: at most 32 distinct values per block
    assert all(len(np.unique(raw[name].reshape(-1, 32)[i])) <= 32 for i in range(4))


def test_q5_1_hand_built_block():
    rng = np.random.default_rng(0)
    q = rng.permutation(32).astype(np.int64)  # each 5-bit value 0..31 once
    d, m = np.float16(0.1), np.float16(-1.5)  # 0.1 is not exact in fp16: the rounded value must be used
    qs = bytes(int((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)) for j in range(16))
    qh = 0
    for j in range(16):
        qh |= int(q[j] >> 4) << j  # 5th bit of the low half: bit j
        qh |= int(q[j + 16] >> 4) << (j + 16)  # 5th bit of the high half: bit j + 16
    block = struct.pack("<eeI", float(d), float(m), qh) + qs
    assert len(block) == 24
    expected = (q * float(d) + float(m)).astype(np.float32)  # exact in float64, one rounding to float32
    got = dequantize_q5_1(block, 32)
    assert got.dtype == np.float32 and got.shape == (32,)
    assert np.array_equal(got, expected)
    assert np.array_equal(got, np.array(_q5_1_slow(block), dtype=np.float32))
    # spot values by hand: the value with q = 31 is 31*d + m, q = 0 gives m
    assert got[int(np.argmax(q))] == np.float32(31 * float(d) + float(m))
    assert got[int(np.argmin(q))] == np.float32(float(m))
    # two blocks in a row, also from a uint8 array
    two = np.frombuffer(block + block, dtype=np.uint8)
    assert np.array_equal(dequantize_q5_1(two, 64), np.concatenate([expected, expected]))
    with pytest.raises(ValueError):
        dequantize_q5_1(block, 31)


# ------------------------------------------------------------------- synthetic files derived in tmp_path


def _write_bin(path, header: tuple[int, ...], tensors: list[tuple[str, np.ndarray, int]]) -> None:
    """Write an rwkv.cpp file: tensors as (name, array in PyTorch shape, data type 0 FP32 / 1 FP16)."""
    out = [struct.pack("<6I", MAGIC, *header)]
    for name, a, dt in tensors:
        nb = name.encode()
        out.append(struct.pack("<3i", a.ndim, len(nb), dt))
        out.append(struct.pack(f"<{a.ndim}i", *reversed(a.shape)))
        out.append(nb)
        out.append(np.ascontiguousarray(a, dtype="<f4" if dt == 0 else "<f2").tobytes())
    path.write_bytes(b"".join(out))


def _header_of(path):
    h, _ = scan_rwkvcpp(path)
    return (h.file_version, h.n_vocab, h.n_embed, h.n_layer, h.data_type)


def test_fp16_file(tmp_path):
    """A FP16 re-encoding of the v5.2 model (matrices in FP16, as rwkv.cpp's FP16 files store them)."""
    src = shared_file(F5V2)
    raw = read_rwkvcpp_raw(src)
    h = list(_header_of(src))
    h[4] = 1
    tensors = [(k, a, 1 if a.ndim == 2 else 0) for k, a in raw.items()]
    dst = tmp_path / "tiny-5v2-FP16.bin"
    _write_bin(dst, tuple(h), tensors)
    sd16, meta = read_rwkvcpp(dst)
    sd32, _ = read_rwkvcpp(src)
    assert meta["data_type"] == "FP16" and meta["version_hint"] == "5.2"
    assert meta["tensor_data_types"]["FP16"] == sum(1 for a in raw.values() if a.ndim == 2)
    k = "blocks.3.att.key.weight"
    assert np.array_equal(sd16[k].numpy(), raw[k].astype(np.float16).astype(np.float32))
    assert torch.equal(sd16["blocks.3.att.time_decay"], sd32["blocks.3.att.time_decay"])


def test_decay_clamped_at_exact_0_and_1(tmp_path):
    src = shared_file(F5V2)
    raw = read_rwkvcpp_raw(src)
    td = raw["blocks.0.att.time_decay"].copy()
    td[0, 0, 0], td[0, 1, 0] = 0.0, 1.0
    raw["blocks.0.att.time_decay"] = td
    dst = tmp_path / "clamp.bin"
    _write_bin(dst, _header_of(src), [(k, a, 0) for k, a in raw.items()])
    sd, _ = read_rwkvcpp(dst)
    w = sd["blocks.0.att.time_decay"]
    assert bool(torch.isfinite(w).all())
    for dtype in (torch.float32, torch.float64):  # the stored decays are reproduced exactly
        lam = torch.exp(-torch.exp(w.to(dtype)))
        assert lam[0, 0].item() == 0.0 and lam[0, 1].item() == 1.0
    # v4: stored -exp(w) == 0 exactly
    src4 = shared_file(F4V0)
    raw4 = read_rwkvcpp_raw(src4)
    raw4["blocks.0.att.time_decay"] = raw4["blocks.0.att.time_decay"].copy()
    raw4["blocks.0.att.time_decay"][5] = 0.0
    dst4 = tmp_path / "clamp4.bin"
    _write_bin(dst4, _header_of(src4), [(k, a, 0) for k, a in raw4.items()])
    w4 = read_rwkvcpp(dst4)[0]["blocks.0.att.time_decay"]
    assert math.isfinite(w4[5].item()) and torch.exp(w4[5]).item() == 0.0


def test_gated_rwkv5_preview_is_refused(tmp_path):
    src = shared_file(F5V1)
    raw = read_rwkvcpp_raw(src)
    tensors = [(k, a, 0) for k, a in raw.items()]
    C = raw["emb.weight"].shape[1]
    tensors.append(("blocks.0.att.gate.weight", np.zeros((C, C), np.float32), 0))
    dst = tmp_path / "gated-preview.bin"
    _write_bin(dst, _header_of(src), tensors)
    with pytest.raises(CheckpointError, match="gated"):
        read_rwkvcpp(dst)


# ------------------------------------------------------------------------------------------------ bad input


def _expect_error(path, *words):
    with pytest.raises(CheckpointError) as ei:
        read_rwkvcpp(path)
    msg = str(ei.value)
    assert path.name in msg, msg
    assert "\n" not in msg
    assert any(w in msg.lower() for w in words), msg
    return msg


def test_random_bytes(tmp_path):
    p = tmp_path / "random.bin"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _expect_error(p, "not an rwkv.cpp file")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    _expect_error(empty, "not an rwkv.cpp file", "too short")
    _expect_error(tmp_path / "missing.bin", "cannot read")


def test_pth_is_named(tmp_path):
    pth = shared_file("260123_reverse_L2_only_rwkv7.pth")
    with pytest.raises(CheckpointError, match=r"not an rwkv.cpp file.*\.pth"):
        read_rwkvcpp(pth)


def test_truncated_header(tmp_path):
    data = shared_file(F5V2).read_bytes()
    for n in (4, 10, 23):
        p = tmp_path / f"head{n}.bin"
        p.write_bytes(data[:n])
        _expect_error(p, "truncated header")
    p = tmp_path / "header-only.bin"
    p.write_bytes(data[:24])
    _expect_error(p, "no tensors")


def test_truncated_mid_tensor(tmp_path):
    src = shared_file(F5V2)
    data = src.read_bytes()
    _, tensors = scan_rwkvcpp(src)
    t = tensors[7]
    cuts = {
        "mid-data": t.offset + t.nbytes // 2,
        "in-tensor-header": t.offset + t.nbytes + 5,
        "last-byte": len(data) - 1,
    }
    for what, n in cuts.items():
        p = tmp_path / f"cut-{what}.bin"
        p.write_bytes(data[:n])
        _expect_error(p, "truncated")
        with pytest.raises(CheckpointError):
            read_rwkvcpp_raw(p)


def test_unknown_and_unsupported_data_types(tmp_path):
    src = shared_file(F5V2)
    data = bytearray(src.read_bytes())
    first_dtype_at = 24 + 8  # first tensor header: n_dims, name_len, data_type
    for code, word in ((2, "q4_0"), (7, "q5_0"), (99, "unknown data type 99"), (-1, "unknown data type -1")):
        d = bytearray(data)
        d[first_dtype_at : first_dtype_at + 4] = struct.pack("<i", code)
        p = tmp_path / f"dtype{code}.bin"
        p.write_bytes(bytes(d))
        msg = _expect_error(p, word)
        assert "emb.weight" in msg
    d = bytearray(data)
    d[20:24] = struct.pack("<I", 1234)  # whole-file data type in the header
    p = tmp_path / "header-dtype.bin"
    p.write_bytes(bytes(d))
    _expect_error(p, "unknown data type 1234")
    d = bytearray(data)
    d[4:8] = struct.pack("<I", 7)  # file version
    p = tmp_path / "version.bin"
    p.write_bytes(bytes(d))
    _expect_error(p, "file version 7")
    # Q5_1 tensors in a version-100 file use the old, incompatible quantisation layout
    q = bytearray(shared_file(F6V0_3M).read_bytes())
    q[4:8] = struct.pack("<I", 100)
    p = tmp_path / "q5_1-v100.bin"
    p.write_bytes(bytes(q))
    _expect_error(p, "old quantisation layout")


def test_hostile_sizes(tmp_path):
    src = shared_file(F5V2)
    data = src.read_bytes()
    base = 24  # first tensor: emb.weight, 2 dims
    cases = {
        "name_len": (base + 4, struct.pack("<i", 2**31 - 1), "name length"),
        "name_len_neg": (base + 4, struct.pack("<i", -5), "name length"),
        "n_dims": (base, struct.pack("<i", 1000), "dimensions"),
        "n_dims_0": (base, struct.pack("<i", 0), "dimensions"),
        "dims_huge": (base + 12, struct.pack("<2i", 2**31 - 1, 2**31 - 1), "more than the whole file"),
        "dims_zero": (base + 12, struct.pack("<i", 0), "dimensions"),
        "dims_neg": (base + 12, struct.pack("<i", -64), "dimensions"),
    }
    name_at = base + 12 + 8  # the name "emb.weight" follows the two dims
    cases["name_not_utf8"] = (name_at, b"\xff\xfe", "not utf-8")
    for label, (off, patch, word) in cases.items():
        d = bytearray(data)
        d[off : off + len(patch)] = patch
        p = tmp_path / f"hostile-{label}.bin"
        p.write_bytes(bytes(d))
        _expect_error(p, word.lower())


def test_inconsistent_header(tmp_path):
    data = bytearray(shared_file(F5V2).read_bytes())
    d = bytearray(data)
    d[16:20] = struct.pack("<I", 13)  # n_layer
    p = tmp_path / "nlayer.bin"
    p.write_bytes(bytes(d))
    _expect_error(p, "n_layer")
    d = bytearray(data)
    d[12:16] = struct.pack("<I", 65)  # n_embed
    p = tmp_path / "nembed.bin"
    p.write_bytes(bytes(d))
    _expect_error(p, "n_embed")
