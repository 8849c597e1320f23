"""Tests of rwkv_core.analysis.scores (attention scores A and influence spans S) and rwkv_core.figures.scores.

Three independent lines of evidence:
1. the identity sum_i A[h, j, i] v_i = WKV output (hook_wkv) on random checkpoints and on the tiny trained models in
   ../shared/rwkv-weights, for v4, v5.1, v5.2, v6 and v7;
2. float64 oracles written as plainly as possible (explicit products of decays, explicit N x N transition matrices
   G_t, explicit normalisation for v4) on small cases, for scores and spans;
3. internal consistency: the selected-token row/column equals the row/column of the full matrix, the chunked and
   token-by-token v7 pushes agree.
Wrong indexings (w_j included in A, G_j dropped, G_i included, G transposed) are shown to FAIL the identity, so the
identity test can tell.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwkv_core.analysis import scores as S
from rwkv_core.io.checkpoint import detect_config, load_model
from rwkv_core.errors import InputError
from rwkv_core.model.rwkv import RWKV
from rwkv_core.analysis.scores import ScoreInputs
from tests.conftest import shared_file

VERSIONS = ("4", "5.1", "5.2", "6", "7")
IDENTITY_TOL = 1e-4  # relative error allowed by the identity tests (fp32 gives ~1e-6)
WRONG_MIN = 10 * IDENTITY_TOL  # a wrong indexing must miss the identity by at least ten times that


@pytest.fixture(autouse=True)
def _one_thread_no_grad():
    """Single-threaded and without autograd for these tests (restored afterwards): the ops here are many and
    mid-sized, and on a busy 2-core machine two spinning OpenMP threads cost several times the CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ helpers


def rand_inputs(version: str, T: int = 12, H: int = 2, N: int = 6, seed: int = 0, layer: int = 0) -> ScoreInputs:
    """Random inputs of realistic magnitude: decays from ~0.05 to ~0.9999, signed r and k of O(1)."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g)
    r, k, v = rn(T, H, N), rn(T, H, N), rn(T, H, N)
    if version == "7":
        logw = -math.exp(-0.5) * torch.sigmoid(2.0 * rn(T, H, N))
        kk = torch.nn.functional.normalize(rn(T, H, N), dim=-1)
        a = torch.rand(T, H, N, generator=g)
        return ScoreInputs("7", r, k, v, logw, kk=kk, a=a, r_k=0.1 * rn(H, N), layer=layer)
    rate = torch.exp(1.5 * rn(1 if version in ("4", "5.1", "5.2") else T, H, N) - 1.0)  # -log w
    if version == "5.1":
        rate = rate[..., :1].expand(-1, H, N)  # one decay per head
    logw = (-rate).expand(T, H, N)
    u = rn(H, N) if version != "5.1" else torch.rand(H, 1, generator=g).expand(H, N) + 0.1
    return ScoreInputs(version, r, k, v, logw, u=u, layer=layer)


def model_for(version: str, seed: int = 0, n_layer: int = 2) -> RWKV:
    from rwkv_core.io.synthetic import random_state_dict

    C = 128 if version == "4" else 64  # v4: two channel groups of 64
    sd = random_state_dict(version, n_layer=n_layer, n_embd=C, head_size=16, seed=seed)
    return RWKV.from_state_dict(detect_config(sd), sd)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def identity_error(si: ScoreInputs) -> float:
    """max over heads of ||sum_i A v_i - wkv|| / ||wkv|| (v4: per channel weights)."""
    worst = 0.0
    for h in range(si.H):
        A = S.full_scores(si, h, per_channel=si.version == "4")
        worst = max(worst, rel_err(S.wkv_from_scores(A, si.v[:, h]), si.wkv[:, h]))
    return worst


# ------------------------------------------------------------------------------------------------ float64 oracles


def f64(x):
    return x.double()


def oracle_v56(si: ScoreInputs, h: int, prod: str = "i+1..j-1") -> torch.Tensor:
    """A[j, i] = sum_c r_j (prod_t w_t) k_i with the product range `prod`; diagonal sum_c r_j u k_j."""
    r, k, w, u = f64(si.r[:, h]), f64(si.k[:, h]), torch.exp(f64(si.logw[:, h])), f64(si.u[h])
    T = r.shape[0]
    A = torch.zeros(T, T, dtype=torch.float64)
    for j in range(T):
        A[j, j] = (r[j] * u * k[j]).sum()
        for i in range(j):
            lo, hi = {"i+1..j-1": (i + 1, j), "i+1..j": (i + 1, j + 1), "i..j-1": (i, j)}[prod]
            A[j, i] = (r[j] * torch.prod(w[lo:hi], 0) * k[i]).sum()
    return A


def oracle_span_v56(si: ScoreInputs, h: int, upto_j: bool = True) -> torch.Tensor:
    k, w = f64(si.k[:, h]), torch.exp(f64(si.logw[:, h]))
    T = k.shape[0]
    Sp = torch.zeros(T, T, dtype=torch.float64)
    for j in range(T):
        for i in range(j + 1):
            hi = j + 1 if upto_j else j
            Sp[j, i] = torch.linalg.vector_norm(k[i] * torch.prod(w[i + 1:max(hi, i + 1)], 0))
    return Sp


def g_matrices(si: ScoreInputs, h: int) -> list[torch.Tensor]:
    """G_t = diag(w_t) - kk_t^T (kk_t * a_t), explicit N x N float64 matrices."""
    w, kk, a = torch.exp(f64(si.logw[:, h])), f64(si.kk[:, h]), f64(si.a[:, h])
    return [torch.diag(w[t]) - torch.outer(kk[t], kk[t] * a[t]) for t in range(w.shape[0])]


def oracle_v7(si: ScoreInputs, h: int, variant: str = "ok") -> torch.Tensor:
    """A[j, i] = k~_i G_{i+1} ... G_j r_j^T (variant "ok"); wrong variants for the teeth test:
    "drop_Gj" (G_{i+1} ... G_{j-1}), "incl_Gi" (G_i ... G_j), "transpose" (G^T)."""
    G = g_matrices(si, h)
    if variant == "transpose":
        G = [g.T for g in G]
    r, k = f64(si.r[:, h]), f64(si.k[:, h])
    T, N = r.shape
    A = torch.zeros(T, T, dtype=torch.float64)
    for j in range(T):
        for i in range(j + 1):
            lo, hi = i + 1, j + 1
            if i < j and variant == "drop_Gj":
                hi = j
            if i < j and variant == "incl_Gi":
                lo = i
            M = torch.eye(N, dtype=torch.float64)
            for t in range(lo, hi):
                M = M @ G[t]
            A[j, i] = k[i] @ M @ r[j]
    return A


def oracle_span_v7(si: ScoreInputs, h: int) -> torch.Tensor:
    G = g_matrices(si, h)
    k = f64(si.k[:, h])
    T, N = k.shape
    Sp = torch.zeros(T, T, dtype=torch.float64)
    for j in range(T):
        for i in range(j + 1):
            p = k[i]
            for t in range(i + 1, j + 1):
                p = p @ G[t]
            Sp[j, i] = torch.linalg.vector_norm(p)
    return Sp


def oracle_v4(si: ScoreInputs, h: int) -> torch.Tensor:
    """Per channel c: weight of i in wkv_j = e^{k_i + sum_{t=i+1}^{j-1} log w_t} (i < j), e^{u + k_j} (i = j),
    divided by their sum over i <= j. Returns [N, T, T]."""
    k, lw, u = f64(si.k[:, h]), f64(si.logw[:, h]), f64(si.u[h])
    T, N = k.shape
    num = torch.zeros(N, T, T, dtype=torch.float64)
    for j in range(T):
        num[:, j, j] = torch.exp(u + k[j])
        for i in range(j):
            num[:, j, i] = torch.exp(k[i] + lw[i + 1:j].sum(0))
    return num / num.sum(-1, keepdim=True)


def oracle_span_v4(si: ScoreInputs, h: int) -> torch.Tensor:
    """L2 norm over the group's channels of token i's share of the state after token j."""
    k, lw = f64(si.k[:, h]), f64(si.logw[:, h])
    T, N = k.shape
    Sp = torch.zeros(T, T, dtype=torch.float64)
    for j in range(T):
        wts = torch.stack([torch.exp(k[i] + lw[i + 1:j + 1].sum(0)) for i in range(j + 1)])  # [j+1, N]
        Sp[j, :j + 1] = torch.linalg.vector_norm(wts / wts.sum(0), dim=-1)
    return Sp


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> bool:
    """Equal up to tol relative to the largest entry (scores span orders of magnitude)."""
    scale = float(b.abs().max()) or 1.0
    return float((a.double() - b.double()).abs().max()) <= tol * scale


# ------------------------------------------------------------------------------------------------ oracle comparisons


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("diagonal", [True, False])
def test_scores_match_float64_oracle(version, diagonal):
    for seed in range(3):
        si = rand_inputs(version, T=12, H=2, N=4 + 2 * seed, seed=seed)
        for h in range(si.H):
            if version == "4":
                ref = oracle_v4(si, h).mean(0)
            elif version == "7":
                ref = oracle_v7(si, h)
            else:
                ref = oracle_v56(si, h)
            if not diagonal:
                ref = ref - torch.diag(torch.diagonal(ref))
            A = S.full_scores(si, h, diagonal=diagonal)
            assert A.dtype == torch.float32 and A.shape == (12, 12)
            assert close(A, ref), (version, seed, h, float((A.double() - ref).abs().max()))
            assert torch.all(A.triu(1) == 0)


def test_v4_per_channel_weights_match_oracle_and_rows_sum_to_one():
    si = rand_inputs("4", T=12, H=2, N=8, seed=3)
    for h in range(2):
        ref = oracle_v4(si, h)
        A = S.full_scores(si, h, per_channel=True)
        assert A.shape == (8, 12, 12)
        assert close(A, ref, 1e-5)
        assert torch.allclose(A.sum(-1), torch.ones(8, 12), atol=1e-5)
        assert torch.allclose(S.full_scores(si, h).sum(-1), torch.ones(12), atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_spans_match_float64_oracle(version):
    for seed in range(3):
        si = rand_inputs(version, T=12, H=2, N=4 + 2 * seed, seed=10 + seed)
        for h in range(si.H):
            Sp = S.full_spans(si, h)
            if version == "4":
                ref = oracle_span_v4(si, h)
            elif version == "7":
                ref = oracle_span_v7(si, h)
            else:
                ref = oracle_span_v56(si, h, upto_j=True)
                # the "read" variant stops at w_{j-1}
                assert close(S.full_spans(si, h, variant="read"), oracle_span_v56(si, h, upto_j=False))
                assert not close(S.full_spans(si, h, variant="read"), ref, 1e-3)
            assert close(Sp, ref), (version, seed, h)
            assert torch.all(Sp >= 0) and torch.all(Sp.triu(1) == 0)
            assert torch.allclose(torch.diagonal(Sp), torch.linalg.vector_norm(si.k[:, h], dim=-1)) or version == "4"


def test_span_includes_w_j_for_v6():
    """S[j, j-1] = ||k_{j-1} * w_j|| (the issue's definition), not ||k_{j-1}||."""
    si = rand_inputs("6", T=5, H=1, N=4, seed=1)
    Sp = S.full_spans(si, 0)
    w = torch.exp(si.logw[:, 0])
    for j in range(1, 5):
        assert torch.isclose(Sp[j, j - 1], torch.linalg.vector_norm(si.k[j - 1, 0] * w[j]), rtol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_row_and_column_equal_full_matrix(version):
    T, H = 37, 3
    layers = [rand_inputs(version, T=T, H=H, N=8, seed=s, layer=5 + s) for s in range(2)]
    for diagonal in (True, False):
        for variant in ("state", "read") if version != "7" else ("state",):
            A = [[S.full_scores(si, h, diagonal=diagonal) for h in range(H)] for si in layers]
            Sp = [[S.full_spans(si, h, variant=variant) for h in range(H)] for si in layers]
            for sel in (0, 1, 16, 17, 36):
                rc = S.row_and_column(layers, sel, diagonal=diagonal, span_variant=variant)
                assert rc["row"].shape == (2, H, T) and rc["layers"] == [5, 6] and rc["sel"] == sel
                for l in range(2):
                    for h in range(H):
                        assert close(rc["row"][l, h], A[l][h][sel]) and close(rc["col"][l, h], A[l][h][:, sel])
                        assert close(rc["span_row"][l, h], Sp[l][h][sel])
                        assert close(rc["span_col"][l, h], Sp[l][h][:, sel])
    rc = S.row_and_column(layers, 10, spans="col")
    assert "span_col" in rc and "span_row" not in rc
    rc = S.row_and_column(layers[0], 10, spans=False)
    assert set(rc) == {"row", "col", "layers", "sel"} and rc["row"].shape == (1, H, T)


def test_v7_chunked_and_token_loop_pushes_agree():
    si = [rand_inputs("7", T=70, H=2, N=8, seed=s) for s in range(2)]
    flat = [torch.stack([getattr(x, n) for x in si]).permute(0, 2, 1, 3).reshape(-1, 70, 8)
            for n in ("r", "k", "logw", "kk", "a")]
    for sel in (0, 15, 16, 69):
        for chunk in (1, 5, 16):
            a = S._v7_row_chunked(*flat, sel, True, chunk=chunk)
            b = S._v7_row_col_loop(*(x.transpose(0, 1) for x in flat), sel, True)  # token-major
            for name in ("row", "span_row"):
                assert close(a[name], b[name], 1e-5), (sel, chunk, name)


def test_v7_capture_is_token_major_and_row_column_reads_it_without_copies():
    model = model_for("7", n_layer=3)
    tokens = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    inputs = S.capture_score_inputs(model, tokens)
    for n in ("r", "k", "logw", "kk", "a"):
        stacked = S.stack_layers([getattr(si, n) for si in inputs])  # [T, L, H, N]
        assert stacked.data_ptr() == getattr(inputs[0], n).data_ptr()  # a view of the capture's buffer
        assert torch.equal(stacked, torch.stack([getattr(si, n) for si in inputs], 1))
    separate = [ScoreInputs("7", *(x.clone() for x in (si.r, si.k, si.v, si.logw)), r_k=si.r_k, kk=si.kk.clone(),
                            a=si.a.clone(), layer=si.layer) for si in inputs]
    sub = [separate[0], separate[2]]  # evenly spaced layers of the buffer: a view too
    assert S.stack_layers([inputs[0].r, inputs[2].r]).data_ptr() == inputs[0].r.data_ptr()
    for sel in (0, 17, 39):
        a, b = S.row_and_column(inputs, sel, spans="col"), S.row_and_column(separate, sel, spans="col")
        for name in ("row", "col", "span_col"):
            assert torch.equal(a[name], b[name]), (sel, name)
        c = S.row_and_column([inputs[0], inputs[2]], sel, spans=True)
        d = S.row_and_column(sub, sel, spans=True)
        for name in ("row", "col", "span_row", "span_col"):
            assert torch.equal(c[name], d[name]), (sel, name)
    logits, with_head = S.capture_with_logits(model, tokens)  # the head changes none of the inputs
    assert logits.shape == (40, 256) and S.capture_with_logits(model, tokens, logits=False)[0] is None
    for si, sj in zip(with_head, inputs):
        assert all(torch.equal(getattr(si, n), getattr(sj, n)) for n in ("r", "k", "v", "logw", "kk", "a", "wkv"))
    copied = S.stack_layers([inputs[1].r, inputs[0].r])  # not in order: a copy with the same numbers
    assert copied.data_ptr() != inputs[1].r.data_ptr() and torch.equal(copied[:, 0], inputs[1].r)


# ------------------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize("version", VERSIONS)
def test_identity_on_random_checkpoints(version):
    model = model_for(version)
    tokens = torch.randint(0, 256, (77,), generator=torch.Generator().manual_seed(1))  # not a multiple of chunks
    logits, sis = S.capture_with_logits(model, tokens)
    assert torch.equal(logits, model(tokens)[0][0])  # capturing changes nothing
    assert [si.layer for si in sis] == [0, 1]
    for si in sis:
        assert si.version == version and si.T == 77
        assert identity_error(si) < IDENTITY_TOL


def test_v4_identity_is_per_channel_and_head_mean_rows_sum_to_one():
    model = model_for("4")
    (si,) = S.capture_score_inputs(model, list(range(40, 90)), layers=[1])
    assert si.H == 2 and si.N == 64  # C = 128 -> two display heads of 64 channels
    assert identity_error(si) < 1e-5
    for h in range(2):
        assert torch.allclose(S.full_scores(si, h).sum(-1), torch.ones(si.T), atol=1e-5)


TEXT = "The quick brown fox jumps over the lazy dog. In a hole in the ground there lived a hobbit, not a nasty one."


@pytest.mark.parametrize("fname,encoding", [
    ("tiny-rwkv-4v0-660K-FP32.bin", "utf-8"),
    ("tiny-rwkv-5v1-730K-FP32.bin", "utf-8"),
    ("tiny-rwkv-5v2-730K-FP32.bin", "utf-8"),
    ("tiny-rwkv-6v0-1m-FP32.bin", "utf-16-le"),
    ("tiny-rwkv-7v0-834K-FP32.bin", "utf-8"),
])
def test_identity_on_tiny_trained_models(fname, encoding):
    model = load_model(shared_file(fname))
    tokens = list(TEXT.encode(encoding))[:100]
    sis = S.capture_score_inputs(model, tokens)
    assert len(sis) == model.cfg.n_layer
    errs = [identity_error(si) for si in sis]
    assert max(errs) < IDENTITY_TOL, errs


def test_identity_on_reverse_digits_v7():
    model = load_model(shared_file("260123_reverse_L2_only_rwkv7.pth"))
    ids = {**{str(d): d for d in range(10)}, ",": 10, "#": 11}
    tokens = [ids[c] for c in "3141592653589793,3979853562951413#"]
    logits, sis = S.capture_with_logits(model, tokens)
    assert sis[0].version == "7" and len(sis) == 2
    assert max(identity_error(si) for si in sis) < IDENTITY_TOL
    # the trained model reverses the digits: its top prediction after ',' is the last digit
    ids_top, probs = S.topk_predictions(logits, k=3)
    assert int(ids_top[16, 0]) == 3 and float(probs[16, 0]) > 0.5


# ------------------------------------------------------------------------------------------------ teeth


def test_identity_rejects_wrong_indexing_v6():
    (si,) = S.capture_score_inputs(model_for("6"), list(range(65, 85)), layers=[1])
    for h in range(si.H):
        v, y = f64(si.v[:, h]), si.wkv[:, h]
        assert rel_err(oracle_v56(si, h) @ v, y) < 1e-5
        for wrong in ("i+1..j", "i..j-1"):  # w_j included / w_i included
            assert rel_err(oracle_v56(si, h, prod=wrong) @ v, y) > WRONG_MIN, wrong
        A_no_bonus = oracle_v56(si, h) - torch.diag(torch.diagonal(oracle_v56(si, h)))
        assert rel_err(A_no_bonus @ v, y) > WRONG_MIN  # the diagonal (bonus) term is part of the identity


def test_identity_rejects_wrong_indexing_v7():
    (si,) = S.capture_score_inputs(model_for("7"), list(range(65, 81)), layers=[1])
    for h in range(si.H):
        v, y = f64(si.v[:, h]), si.wkv[:, h]
        assert rel_err(oracle_v7(si, h) @ v, y) < 1e-5
        for wrong in ("drop_Gj", "incl_Gi", "transpose"):
            assert rel_err(oracle_v7(si, h, wrong) @ v, y) > WRONG_MIN, wrong


# ------------------------------------------------------------------------------------------------ stability


def _pairs(T: int, n: int, seed: int) -> list[tuple[int, int]]:
    g = np.random.default_rng(seed)
    out = [(T - 1, 0), (T - 1, T - 2), (T // 2, 0)]
    for _ in range(n):
        j = int(g.integers(1, T))
        out.append((j, int(g.integers(0, j))))
    return out


def test_stability_v6_T4096_strong_and_weak_decays():
    T, N = 4096, 64
    g = torch.Generator().manual_seed(7)
    # per channel rates from 1e-7 (lambda within 1e-7 of 1) to e^3 = 20 (lambda ~ 2e-9), varying per token
    base = torch.exp(torch.linspace(math.log(1e-7), 3.0, N))
    rate = base * torch.exp(0.3 * torch.randn(T, N, generator=g))
    si = ScoreInputs("6", torch.randn(T, 1, N, generator=g), torch.randn(T, 1, N, generator=g),
                     torch.randn(T, 1, N, generator=g), (-rate)[:, None], u=torch.randn(1, N, generator=g))
    A = S.full_scores(si, 0)
    Sp = S.full_spans(si, 0)
    assert torch.isfinite(A).all() and torch.isfinite(Sp).all()
    r, k, lw = f64(si.r[:, 0]), f64(si.k[:, 0]), f64(si.logw[:, 0])
    for j, i in _pairs(T, 60, 1):
        ref = float((r[j] * k[i] * torch.exp(lw[i + 1:j].sum(0))).sum())
        assert abs(float(A[j, i]) - ref) <= 1e-5 * (abs(ref) + float((r[j].abs() * k[i].abs()).sum()) * 1e-2)
        ref_s = float(torch.linalg.vector_norm(k[i] * torch.exp(lw[i + 1:j + 1].sum(0))))
        assert abs(float(Sp[j, i]) - ref_s) <= 1e-5 * ref_s + 1e-30
    # the nearly-permanent channel still carries token 0 to the end: A[T-1, 0] is not flushed to zero
    assert abs(float(A[T - 1, 0])) > 0
    rc = S.row_and_column(si, T - 1)
    assert all(torch.isfinite(rc[n]).all() for n in ("row", "col", "span_row", "span_col"))
    assert close(rc["row"][0, 0], A[T - 1])


def test_stability_v7_T4096():
    T, N = 4096, 64
    si = rand_inputs("7", T=T, H=1, N=N, seed=5)
    A = S.full_scores(si, 0)
    assert torch.isfinite(A).all()
    # independent float64 forward pushes (NumPy) of three sources over the whole prompt
    w, kk, a = (np.exp(si.logw[:, 0].double().numpy()), si.kk[:, 0].double().numpy(), si.a[:, 0].double().numpy())
    r, k = si.r[:, 0].double().numpy(), si.k[:, 0].double().numpy()
    ka = kk * a
    rc = S.row_and_column(si, 4000, spans="col")
    assert torch.isfinite(rc["row"]).all() and torch.isfinite(rc["span_col"]).all()
    for i in (0, 1000, 4000):
        p = k[i].copy()
        col, span = np.zeros(T), np.zeros(T)
        col[i], span[i] = p @ r[i], np.linalg.norm(p)
        for j in range(i + 1, T):
            p = w[j] * p - (p @ kk[j]) * ka[j]
            col[j], span[j] = p @ r[j], np.sqrt(p @ p)
        assert close(A[:, i], torch.from_numpy(col), 1e-4)
        if i == 4000:
            assert close(rc["col"][0, 0], torch.from_numpy(col), 1e-4)
            assert close(rc["span_col"][0, 0], torch.from_numpy(span), 1e-4)


# ------------------------------------------------------------------------------------------------ inputs, extras


def test_from_arrays_equals_capture():
    model = model_for("6")
    (si,) = S.capture_score_inputs(model, list(range(30, 70)), layers=[0])
    T, H, N = si.T, si.H, si.N
    flat = lambda x: x.reshape(T, H * N).numpy()
    si2 = ScoreInputs.from_arrays("6", r=flat(si.r), k=flat(si.k), v=flat(si.v), w=flat(torch.exp(si.logw)),
                                  u=si.u.numpy(), n_head=H, wkv=flat(si.wkv))
    assert si2.r.shape == (T, H, N)
    for h in range(H):
        assert close(S.full_scores(si2, h), S.full_scores(si, h), 1e-5)
    assert identity_error(si2) < IDENTITY_TOL
    # static decays given once per channel
    s52 = ScoreInputs.from_arrays("5.2", r=flat(si.r), k=flat(si.k), v=flat(si.v), logw=si.logw[0].reshape(-1),
                                  u=si.u, n_head=H)
    assert s52.logw.shape == (T, H, N) and torch.equal(s52.logw[5], si.logw[0])
    with pytest.raises(InputError):
        ScoreInputs.from_arrays("6", r=flat(si.r), k=flat(si.k), v=flat(si.v), n_head=H)  # no decay
    with pytest.raises(InputError):
        ScoreInputs.from_arrays("6", r=flat(si.r), k=flat(si.k), v=flat(si.v), w=flat(si.r), u=si.u, n_head=5)


def test_input_errors():
    si = rand_inputs("6")
    with pytest.raises(InputError):
        S.full_scores(si, 2)
    with pytest.raises(InputError):
        S.full_scores(si, 0, per_channel=True)
    with pytest.raises(InputError):
        S.full_spans(si, 0, variant="sideways")
    with pytest.raises(InputError):
        S.row_and_column(si, 12)
    with pytest.raises(InputError):
        S.row_and_column([si, rand_inputs("6", T=11)], 3)
    with pytest.raises(InputError):
        ScoreInputs("7", si.r, si.k, si.v, si.logw)  # v7 needs kk and a
    with pytest.raises(InputError):
        ScoreInputs("6", si.r, si.k[:5], si.v, si.logw, u=si.u)


def test_wkv_from_scores_shapes():
    A = torch.randn(3, 5, 5).tril()
    v = torch.randn(5, 3, 4)
    y = S.wkv_from_scores(A, v)
    assert y.shape == (5, 3, 4)
    assert torch.allclose(y[:, 1], A[1] @ v[:, 1], atol=1e-6)
    assert torch.allclose(S.wkv_from_scores(A[1], v[:, 1]), y[:, 1], atol=1e-6)
    Ac = torch.randn(3, 4, 5, 5)
    yc = S.wkv_from_scores(Ac, v)
    assert torch.allclose(yc[2, 1, 3], (Ac[1, 3, 2] * v[:, 1, 3]).sum(), atol=1e-6)


def test_topk_predictions():
    logits = torch.randn(7, 50, generator=torch.Generator().manual_seed(0))
    ids, probs = S.topk_predictions(logits, k=16)
    assert ids.shape == (7, 16) and probs.shape == (7, 16)
    p = torch.softmax(logits, -1)
    order = torch.argsort(p, -1, descending=True)[:, :16]
    assert torch.equal(ids, order)
    assert torch.allclose(probs, torch.gather(p, 1, order))
    assert torch.all(probs[:, :-1] >= probs[:, 1:])
    ids2, _ = S.topk_predictions(logits[None, :, :5], k=16)
    assert ids2.shape == (7, 5)


def test_auto_scale():
    assert S.auto_scale(torch.tensor([0.02, -0.5])) == pytest.approx(2.0)
    assert S.auto_scale(np.array([0.02, -0.5]), mode="pow10") == pytest.approx(1.0)
    assert S.auto_scale([0.03, -0.001], mode="pow10") == pytest.approx(10.0)
    assert S.auto_scale([300.0], mode="pow10") == pytest.approx(1e-3)
    assert S.auto_scale([1.0], mode="pow10") == pytest.approx(1.0)
    assert S.auto_scale([0.0, float("nan")]) == 1.0
    with pytest.raises(InputError):
        S.auto_scale([1.0], mode="loud")


def test_span_reach_and_overview_values():
    curves = torch.tensor([[1.0, 0.5, 0.2, 0.09, 0.01], [2.0, 1.9, 1.8, 1.7, 1.6], [0.0, 0.0, 0.0, 0.0, 0.0]])
    reach, censored = S.span_reach(curves, 0.1)
    assert reach.tolist() == [3.0, 5.0, 0.0] and censored.tolist() == [False, True, False]
    si = [rand_inputs("6", T=20, H=2, N=4, seed=s) for s in range(3)]
    rc = S.row_and_column(si, 8)
    ov = S.overview_values(rc, "row_max_abs")
    assert ov.shape == (3, 2)
    assert torch.allclose(ov[1, 0], S.full_scores(si[1], 0)[8, :8].abs().max())
    assert torch.allclose(S.overview_values(rc, "at_token", token=12)[2, 1], S.full_scores(si[2], 1)[12, 8])
    assert S.overview_values(rc, "span_reach").shape == (3, 2)


def test_capture_follows_a_patched_decay():
    """When a caller's hook patches hook_w, the scores use the patched decay (the identity still holds)."""
    model = model_for("6")
    tokens = list(range(100, 130))
    with model.hooks([("blocks.1.att.hook_w", lambda w, hook: w * 0.5)]):
        (si,) = S.capture_score_inputs(model, tokens, layers=[1])
    (plain,) = S.capture_score_inputs(model, tokens, layers=[1])
    assert identity_error(si) < IDENTITY_TOL
    assert torch.allclose(si.logw, plain.logw + math.log(0.5), atol=1e-5)


def test_trace_scores_from_trace_arrays():
    """`export --scores` path: scores from a trace's arrays (no model) equal those of the live capture."""
    from rwkv_core.io.trace_file import build_trace

    for version in ("4", "6", "7"):
        model = model_for(version)
        tokens = list(range(50, 80))
        arrays = build_trace(model, tokens, layers=[1])
        sc = S.trace_scores(arrays, model.cfg)
        (si,) = S.capture_score_inputs(model, tokens, layers=[1])
        assert set(sc) == {"attn_l1", "span_l1"} and sc["attn_l1"].shape == (si.H, 30, 30)
        for h in range(si.H):
            assert close(torch.from_numpy(sc["attn_l1"][h]), S.full_scores(si, h), 1e-4)
            assert close(torch.from_numpy(sc["span_l1"][h]), S.full_spans(si, h), 1e-4)
        assert np.all(np.triu(sc["attn_l1"], 1) == 0)


def test_zero_decay_and_positive_log_decay():
    si = rand_inputs("6", T=10, H=1, N=4)
    logw = si.logw.clone()
    logw[4] = float("-inf")  # a decay that underflowed to 0: token 4 wipes the state
    si0 = ScoreInputs("6", si.r, si.k, si.v, logw, u=si.u)
    A = S.full_scores(si0, 0)
    assert torch.isfinite(A).all()
    assert torch.all(A[5:, :4] == 0) and torch.all(A[4, :4] != 0)  # w_4 acts from token 5 on
    with pytest.raises(InputError):
        ScoreInputs("6", si.r, si.k, si.v, -logw.clamp_max(-1.0), u=si.u)


# ------------------------------------------------------------------------------------------------ figures


def _all_strings(fig) -> list[str]:
    """Every string Plotly would render as text: titles, tick texts, hover customdata, trace names."""
    out = [fig.layout.title.text or ""]
    for ax in (fig.layout.xaxis, fig.layout.yaxis):
        out += [ax.title.text or ""] + list(ax.ticktext or [])
    for tr in fig.data:
        out.append(tr.name or "")
        for axis in (tr.x, tr.y):  # category axes: their names are shown on hover
            out += [x for x in (axis if axis is not None else []) if isinstance(x, str)]
        if tr.customdata is not None:
            out += [x for x in np.asarray(tr.customdata, dtype=object).reshape(-1) if isinstance(x, str)]
    return out


def test_heatmap_figure():
    from rwkv_core.figures import scores as F

    si = rand_inputs("6", T=9, H=1, N=4)
    A = S.full_scores(si, 0)
    texts = ["<script>alert(1)</script>", "<b>", "a&b", "\n", "", " x", "é", "<b>", "z"]
    fig = F.heatmap_figure(A, texts, "layer 0 <head> 0", sel=4)
    hm = fig.data[0]
    assert hm.type == "heatmap" and np.asarray(hm.z).shape == (9, 9)
    assert np.isnan(np.asarray(hm.z, dtype=float)[0, 5]) and np.asarray(hm.z)[5, 0] == pytest.approx(float(A[5, 0]))
    assert fig.layout.xaxis.title.text == "key (source) token i" and fig.layout.yaxis.title.text == "query token j"
    assert all(tr.hovertemplate for tr in fig.data)
    assert "%{x}" in hm.hovertemplate and "%{y}" in hm.hovertemplate and "%{z" in hm.hovertemplate
    assert hm.zmin == -hm.zmax and hm.zmax == pytest.approx(float(A.abs().max()))
    strings = _all_strings(fig)
    assert not any("<" in s or ">" in s for s in strings)  # no markup survives anywhere it is rendered
    assert hm.customdata is None  # the token texts travel once per axis, not once per cell
    cats = list(hm.x)
    assert cats == list(hm.y) and fig.layout.xaxis.type == "category"
    assert cats[0] == "0: &lt;script&gt;alert(1)&lt;/script&gt;" and cats[1] == "1: &lt;b&gt;" and cats[7] == "7: &lt;b&gt;"
    assert cats[2] == "2: a&amp;b" and cats[3] == "3: ↩" and cats[4] == "4: ∅" and len(set(cats)) == 9
    assert fig.layout.title.text == "layer 0 &lt;head&gt; 0"
    assert len(fig.layout.shapes) == 2  # the selected token's row and column
    # spans: sequential scale from 0, colour-blind palette
    Sp = S.full_spans(si, 0)
    f2 = F.heatmap_figure(Sp, ["t"] * 9, "spans", diverging=False, colorblind=True, value_name="span")
    assert f2.data[0].zmin == 0.0 and f2.data[0].colorscale[-1][1] == "rgb(230,97,1)"
    with pytest.raises(ValueError):
        F.heatmap_figure(A, texts[:3], "bad")
    big = F.heatmap_figure(np.zeros((500, 500)), ["x"] * 500, "big", offset=100, sel=120)
    assert big.data[0].x[0] == "100: x" and len(set(big.data[0].x)) == 500  # a window keeps the prompt's indices
    assert big.layout.shapes[0].y0 == 19.5  # the selection framed at its place in the window
    assert len(big.to_json()) < 2_000_000  # 250,000 float32 cells in base64 (1.33 MB; float64 was 2.7 MB)


def test_overview_and_span_figures():
    from rwkv_core.figures import scores as F

    layers = [rand_inputs("6", T=30, H=3, N=4, seed=s, layer=s) for s in range(4)]
    rc = S.row_and_column(layers, 10)
    V = S.overview_values(rc, "row_max_abs")
    g = F.overview_grid_figure(V, "max |A| <over> sources", layers=rc["layers"], selected=(2, 1),
                               value_name="max |A|")
    assert np.asarray(g.data[0].z).shape == (4, 3)
    assert g.layout.xaxis.title.text == "head" and g.layout.yaxis.title.text == "layer"
    assert all(tr.hovertemplate for tr in g.data) and len(g.layout.shapes) == 1
    assert np.asarray(g.data[1].customdata).shape == (12, 3)
    assert not any("<" in s or ">" in s for s in _all_strings(g))

    curves = S.span_curves(rc["span_col"][1], 10)  # [H, T - sel]
    c = F.span_curves_figure(curves, "layer 1", sel=10, open_head=2, relative=True, log_y=True)
    assert len(c.data) == 3 and all(tr.hovertemplate for tr in c.data)
    assert np.asarray(c.data[0].x).shape == (20,) and np.nanmax(np.asarray(c.data[0].y, dtype=float)) <= 1.0 + 1e-6
    assert c.layout.yaxis.type == "log" and "distance" in c.layout.xaxis.title.text

    reach, cens = S.span_reach(S.span_curves(rc["span_col"], 10), 0.1)  # [L, H]
    assert reach.shape == (4, 3)
    r = F.span_reach_figure(reach, "reach", censored=cens, layers=rc["layers"])
    assert all(tr.hovertemplate for tr in r.data)
    assert r.layout.xaxis.title.text == "layer" and "reach" in r.layout.yaxis.title.text
    n_points = sum(len(tr.y) for tr in r.data if tr.mode == "markers")
    assert n_points == 12


def test_token_colors():
    from rwkv_core.figures import scores as F

    cols = F.token_colors(torch.tensor([0.5, -2.0, 0.0, float("nan"), 0.05]), 1.0)
    assert cols[0] == "rgba(214,39,40,0.500)" and cols[1] == "rgba(44,160,44,1.000)"  # clipped to 1
    assert cols[2] == cols[3] == "rgba(0,0,0,0)" and cols[4].endswith("0.050)")
    cb = F.token_colors(np.array([1.0, -1.0]), 0.1, colorblind=True)
    assert cb == ["rgba(230,97,1,0.100)", "rgba(94,60,153,0.100)"]


@pytest.mark.parametrize("version", ["5.1", "5.2", "6", "7"])
def test_a_window_of_the_inputs_scores_the_window_exactly(version):
    """The page's heat map of a long prompt is computed on the window's inputs alone: equal to the window of the
    whole prompt's A and S (v5-v7: a score depends only on the tokens from source to query)."""
    si = rand_inputs(version, T=40, H=2, N=4)
    a, b = 13, 31
    wi = S.window_inputs(si, a, b)
    assert S.window_local(si) and wi.T == b - a
    for h in range(2):
        for diagonal in (True, False):
            torch.testing.assert_close(S.full_scores(wi, h, diagonal=diagonal),
                                       S.full_scores(si, h, diagonal=diagonal)[a:b, a:b], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(S.full_spans(wi, h), S.full_spans(si, h)[a:b, a:b], rtol=1e-4, atol=1e-6)


def test_v4_scores_are_not_window_local():
    si = rand_inputs("4", T=30, H=2, N=4)
    assert not S.window_local(si)
    wi = S.window_inputs(si, 10, 30)
    assert not torch.allclose(S.full_scores(wi, 0), S.full_scores(si, 0)[10:30, 10:30], rtol=1e-3, atol=1e-6)
