"""Layer states rebuilt from captured inputs against the official `rwkv` package (final state, and RNN-mode states
after chosen positions), RWKV-7's online-regression errors against a float64 loop, norms and effective rank
against NumPy on the exported states."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_core.analysis import scores as S
from rwkv_core.analysis import state as ST
from rwkv_core.errors import InputError
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from tests.oracle_rwkv_pip import official_forward_modes, state_by_layer

VERSIONS = ["4", "5.2", "6", "7"]


def _checkpoint(tmp_path, version: str):
    path = tmp_path / f"v{version}.pth"
    write_random_checkpoint(path, version, n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=11)
    return path


def _v4_meaning(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """aa e^pp and bb e^pp (one scale for the layer): the state's meaning; (aa, bb, pp) is one of many equal forms."""
    aa, bb, pp = s
    return aa * np.exp(pp - pp.max()), bb * np.exp(pp - pp.max())


def _official_state(d: dict, version: str) -> np.ndarray:
    return np.stack([d["aa"], d["bb"], d["pp"]]) if version == "4" else d["wkv"]


def _assert_state(ours: np.ndarray, ref: np.ndarray, version: str, what: str) -> None:
    if version == "4":
        for x, y in zip(_v4_meaning(ours), _v4_meaning(ref)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(y).max(), err_msg=what)
    else:
        assert np.abs(ours - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0), what


@pytest.mark.parametrize("version", VERSIONS)
def test_final_states_equal_the_official_package(version, tmp_path):
    path = _checkpoint(tmp_path, version)
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, 256, 45)]
    inputs = S.capture_score_inputs(load_model(path), tokens)
    final = official_forward_modes(str(path), tokens, version=version, modes=("seq",))["seq"]
    keys = ST.trace_state_keys(inputs)
    for l, ref in enumerate(state_by_layer(final["state"], version)):
        _assert_state(ST.layer_states(inputs[l]).at(len(tokens) - 1).numpy(), _official_state(ref, version), version,
                      f"final, layer {l}")
        _assert_state(keys[f"state_l{l}"], _official_state(ref, version), version, f"state_l{l}")


@pytest.mark.parametrize("version", [pytest.param(v, marks=pytest.mark.slow) if v != "7" else v for v in VERSIONS])
def test_states_equal_the_official_package_at_the_end_and_at_positions(version, tmp_path):
    path = _checkpoint(tmp_path, version)
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, 256, 45)]
    positions = [6, 33]
    model = load_model(path)
    inputs = S.capture_score_inputs(model, tokens)
    final = official_forward_modes(str(path), tokens, version=version, modes=("seq",))["seq"]
    keys = ST.trace_state_keys(inputs)
    keyed = ST.trace_state_keys(inputs, positions)
    for l, ref in enumerate(state_by_layer(final["state"], version)):
        ls = ST.layer_states(inputs[l])
        _assert_state(ls.at(len(tokens) - 1).numpy(), _official_state(ref, version), version, f"final, layer {l}")
        _assert_state(keys[f"state_l{l}"], _official_state(ref, version), version, f"state_l{l}")
        assert keyed[f"state_l{l}"].shape[0] == len(positions)
    for i, p in enumerate(positions):  # the package's RNN mode over the prefix: the state after token p
        rnn = official_forward_modes(str(path), tokens[:p + 1], version=version, modes=("rnn",))["rnn"]
        for l, ref in enumerate(state_by_layer(rnn["state"], version)):
            want = _official_state(ref, version)
            _assert_state(ST.layer_states(inputs[l]).at(p).numpy(), want, version, f"position {p}, layer {l}")
            _assert_state(keyed[f"state_l{l}"][i], want, version, f"state_l{l}[{i}] (position {p})")


@pytest.mark.parametrize("version", VERSIONS)
def test_the_state_after_any_token_equals_our_rnn_mode(version, tmp_path):
    """Checkpoints plus replay give the state after every token; against our own RNN mode over each prefix."""
    model = load_model(_checkpoint(tmp_path, version))
    T = ST.CHECKPOINT_EVERY * 2 + 5
    tokens = [int(t) for t in np.random.default_rng(4).integers(0, 256, T)]
    si = S.capture_score_inputs(model, tokens, [1])[0]
    ls = ST.layer_states(si)
    state = None
    with torch.no_grad():
        for t in range(T):
            _, state = model.forward_rnn(tokens[t:t + 1], state)
            if t in (0, ST.CHECKPOINT_EVERY - 2, ST.CHECKPOINT_EVERY - 1, ST.CHECKPOINT_EVERY, T - 1):
                _assert_state(ls.at(t).numpy(), state.wkv[1, 0].numpy(), version, f"token {t}")
    with pytest.raises(InputError, match="outside the prompt"):
        ls.at(T)


def _v7_regression_loop(si: S.ScoreInputs) -> tuple[np.ndarray, np.ndarray]:
    """The module docstring's measure, token by token in float64 from the raw inputs (its own recurrence)."""
    f = lambda x: x.double().numpy()  # noqa: E731
    w, k, v, kk, a = np.exp(f(si.logw)), f(si.k), f(si.v), f(si.kk), f(si.a)
    T, H, N = k.shape
    Sm = np.zeros((H, N, N))  # [value, key]
    eb, ea = np.zeros((T, H)), np.zeros((T, H))
    for t in range(T):
        for h in range(H):
            G = np.diag(w[t, h]) - np.outer(kk[t, h], a[t, h] * kk[t, h])
            new = Sm[h] @ G + np.outer(v[t, h], k[t, h])
            nv = np.linalg.norm(v[t, h])
            eb[t, h] = np.linalg.norm(Sm[h] @ kk[t, h] - v[t, h]) / nv
            ea[t, h] = np.linalg.norm(new @ kk[t, h] - v[t, h]) / nv
            Sm[h] = new
    return eb, ea


def test_v7_regression_errors_equal_a_float64_loop(tmp_path):
    model = load_model(_checkpoint(tmp_path, "7"))
    tokens = [int(t) for t in np.random.default_rng(5).integers(0, 256, 300)]  # over one MEASURE_BLOCK
    for si in S.capture_score_inputs(model, tokens):
        ls = ST.layer_states(si)
        eb, ea = _v7_regression_loop(si)
        np.testing.assert_allclose(ls.err_before, eb, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ls.err_after, ea, rtol=1e-4, atol=1e-6)


def test_a_pure_delta_rule_step_learns_its_pair_exactly():
    """w = 1, a = 1, k~ = kappa: S_t kappa_t = v_t, so e_after = 0 whatever the state held."""
    g = torch.Generator().manual_seed(0)
    T, H, N = 20, 2, 8
    kk = torch.nn.functional.normalize(torch.randn(T, H, N, generator=g), dim=-1)
    si = S.ScoreInputs("7", r=torch.randn(T, H, N, generator=g), k=kk, v=torch.randn(T, H, N, generator=g),
                       logw=torch.zeros(T, H, N), kk=kk, a=torch.ones(T, H, N), r_k=torch.zeros(H, N))
    ls = ST.layer_states(si)
    assert np.abs(ls.err_after).max() < 1e-5
    assert ls.err_before[1:].min() > 0.1  # a new random pair is not known before it is written
    np.testing.assert_allclose(ls.err_before[0], 1.0)  # the empty state returns 0


@pytest.mark.parametrize("version", ["5.2", "6", "7"])
def test_norms_and_effective_rank_equal_numpy_on_the_exported_states(version, tmp_path):
    model = load_model(_checkpoint(tmp_path, version))
    tokens = [int(t) for t in np.random.default_rng(6).integers(0, 256, 50)]
    inputs = S.capture_score_inputs(model, tokens)
    positions = [0, 9, 31, 49]
    exported = ST.trace_state_keys(inputs, positions)
    for si in inputs:
        ls = ST.layer_states(si)
        states = exported[f"state_l{si.layer}"].astype(np.float64)  # [P, H, N, N]
        sv = np.linalg.svd(states, compute_uv=False)  # [P, H, N]
        pr = (sv ** 2).sum(-1) ** 2 / (sv ** 4).sum(-1)
        np.testing.assert_allclose(ls.eff_rank[positions], pr, rtol=1e-4)
        np.testing.assert_allclose(ls.frobenius[positions], np.linalg.norm(states, axis=(-2, -1)), rtol=1e-5)
        assert (ls.eff_rank[positions] >= 1 - 1e-5).all() and (ls.eff_rank[positions] <= si.N * (1 + 1e-5)).all()


def test_read_out_and_nearest_values(tmp_path):
    """v5/v6 read q S, v7 S q; a state holding exactly one write returns that value for its key (up to scale)."""
    model = load_model(_checkpoint(tmp_path, "6"))
    tokens = [int(t) for t in np.random.default_rng(7).integers(0, 256, 30)]
    si = S.capture_score_inputs(model, tokens, [0])[0]
    ls = ST.layer_states(si)
    state = ls.at(0)  # only token 0's write k_0^T v_0
    q = ST.query_vector(si, 0, "key")
    out = ST.read_out(state, q, "6")
    want = (si.k[0].double() * si.k[0].double()).sum(-1, keepdim=True) * si.v[0].double()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    toks, cos = ST.nearest_values(out, si.v, 0)
    assert (toks[:, 0] == 0).all() and np.allclose(np.abs(cos[:, 0]), 1.0)
    s7 = torch.randn(2, 4, 4, dtype=torch.float64)
    q7 = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(ST.read_out(s7, q7, "7"), torch.stack([s7[h] @ q7[h] for h in range(2)]))
    with pytest.raises(InputError, match="no state matrix"):
        ST.read_out(torch.zeros(3, 8), q7, "4")


def test_positions_are_checked():
    assert ST.parse_positions("3, 17", 20) == [3, 17]
    with pytest.raises(InputError, match="outside the prompt of 20 tokens"):
        ST.parse_positions("3,20", 20)
    with pytest.raises(InputError, match="separated by commas"):
        ST.parse_positions("3;4", 20)
