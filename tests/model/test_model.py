"""The engine against rwkv.cpp's test vectors, itself (sequence = RNN = split runs), and its hook contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_core.model import wkv
from rwkv_core.io.checkpoint import detect_config, load_model
from rwkv_core.model.rwkv import RWKV
from rwkv_core.io.synthetic import random_state_dict
from tests.conftest import shared_file

TINY = [  # (model file, expected-logits tag, tolerance)
    ("tiny-rwkv-4v0-660K-FP32.bin", "4v0-660K", 1e-4),
    ("tiny-rwkv-5v1-730K-FP32.bin", "5v1-730K", 1e-4),
    ("tiny-rwkv-5v2-730K-FP32.bin", "5v2-730K", 1e-4),
    ("tiny-rwkv-6v0-1m-FP32.bin", "6v0-1m", 1e-4),
    ("tiny-rwkv-6v0-3m-Q5_1.bin", "6v0-3m", 0.1),  # the vector belongs to the unquantised model
    ("tiny-rwkv-7v0-834K-FP32.bin", "7v0-834K", 1e-4),
]
PROMPT = [34, 105, 110]  # '"in', the prompt of rwkv.cpp's tests/test_tiny_rwkv.c


@pytest.fixture(scope="module")
def tiny_models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_model(shared_file(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name,tag,tol", TINY, ids=[t[1] for t in TINY])
def test_expected_logits_sequence_and_rnn(tiny_models, name, tag, tol):
    model = tiny_models(name)
    expected = np.fromfile(shared_file(f"expected-logits-{tag}.bin"), dtype="<f4")
    with torch.no_grad():
        seq, _ = model(PROMPT)
        rnn, _ = model.forward_rnn(PROMPT)
    assert np.abs(seq[0, -1].numpy() - expected).max() < tol
    assert np.abs(rnn[0, -1].numpy() - expected).max() < tol
    assert int(seq[0, -1].argmax()) == int(expected.argmax())


TEXT = ("The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers; "
        "the third introduced special relativity.").encode()


@pytest.mark.parametrize("name", [t[0] for t in TINY], ids=[t[1] for t in TINY])
def test_sequence_equals_rnn_and_split_runs(tiny_models, name):
    """Chunked sequence mode, token-by-token RNN mode and a run split in two agree, logits and state."""
    model = tiny_models(name)
    toks = list(TEXT)  # 113 tokens: several chunks plus a partial one
    with torch.no_grad():
        seq, s_seq = model(toks)
        rnn, s_rnn = model.forward_rnn(toks)
        a, s_a = model(toks[:50])
        b, s_b = model(toks[50:], s_a)
    scale = seq.abs().max()
    assert (seq - rnn).abs().max() / scale < 1e-5
    assert (torch.cat([a, b], 1) - seq).abs().max() / scale < 1e-5
    for x, y in ((s_seq, s_rnn), (s_seq, s_b)):
        assert torch.allclose(x.att_shift, y.att_shift, atol=1e-5)
        assert torch.allclose(x.ffn_shift, y.ffn_shift, atol=1e-5)
        assert (x.wkv - y.wkv).abs().max() <= 1e-5 * max(1.0, float(x.wkv.abs().max()))


def test_reverse_digits_model_reverses():
    """The trained v7 task model (non-standard layout, head bias, residual bias) does its task."""
    model = load_model(shared_file("260123_reverse_L2_only_rwkv7.pth"))
    assert model.cfg.version == "7" and not model.cfg.has_ln0 and model.cfg.head_bias and model.cfg.resid_bias
    rng = np.random.default_rng(0)
    for n in (3, 8, 17):
        digits = [int(d) for d in rng.integers(0, 10, n)]
        toks = digits + [10]
        with torch.no_grad():
            for _ in range(n + 1):  # greedy
                logits, _ = model(toks, logits="last")
                toks.append(int(logits[0, -1].argmax()))
        assert toks[n + 1:] == digits[::-1] + [11]


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_chunked_kernels_equal_serial_in_float64(version):
    torch.manual_seed(0)
    B, T, H, N = 2, 45, 3, 8
    r, k, v = (torch.randn(B, T, H, N, dtype=torch.float64) for _ in range(3))
    s0 = torch.randn(B, H, N, N, dtype=torch.float64)
    if version == "4":
        C = H * N
        kk_, vv = k.reshape(B, T, C) * 3, v.reshape(B, T, C)
        rho, u = torch.exp(torch.randn(C, dtype=torch.float64) * 2), torch.randn(C, dtype=torch.float64)
        st = wkv.v4_zero_state(B, C, dtype=torch.float64)
        y1, s1 = wkv.wkv4_serial(kk_, vv, rho, u, st)
        y2, s2 = wkv.wkv4_chunked(kk_, vv, rho, u, st, chunk=16)
    elif version == "7":
        logw = -0.6065 * torch.sigmoid(torch.randn(B, T, H, N, dtype=torch.float64))
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, dtype=torch.float64), dim=-1)
        a = torch.sigmoid(torch.randn(B, T, H, N, dtype=torch.float64))
        y1, s1 = wkv.wkv7_serial(r, logw, k, v, -kk, kk * a, s0)
        y2, s2 = wkv.wkv7_chunked(r, logw, k, v, -kk, kk * a, s0)
    else:  # "5.2": decays from ~1 down to e^-e^4 (strong: pairwise factors); "6": mild (split factors)
        scale = 2.0 if version == "5.2" else 0.5
        logw = -torch.exp(torch.randn(B, T, H, N, dtype=torch.float64) * scale - (0 if version == "5.2" else 1.5))
        u = torch.randn(H, N, dtype=torch.float64)
        y1, s1 = wkv.wkv5_serial(r, k, v, logw, u, s0)
        y2, s2 = wkv.wkv5_chunked(r, k, v, logw, u, s0)
    assert torch.isfinite(y2).all()
    assert (y1 - y2).abs().max() < 1e-10 * max(1.0, float(y1.abs().max()))
    assert (s1 - s2).abs().max() < 1e-10 * max(1.0, float(s1.abs().max()))


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
@pytest.mark.parametrize("T", [1, 5, 16, 21])
def test_kernels_with_shared_states_and_no_state_equal_serial(version, T):
    """G groups of rows starting from Bs shared states (row b from state b % Bs), with and without the final state
    (need_state=False: a short segment is one unpadded chunk), equal the serial kernel on materialised states."""
    torch.manual_seed(1)
    G, Bs, H, N = 3, 2, 2, 8
    B = G * Bs
    f64 = dict(dtype=torch.float64)
    r, k, v = (torch.randn(B, T, H, N, **f64) for _ in range(3))
    if version == "4":
        C = H * N
        kk_, vv = k.reshape(B, T, C) * 3, v.reshape(B, T, C)
        rho, u = torch.exp(torch.randn(C, **f64)), torch.randn(C, **f64)
        s0 = torch.stack([torch.randn(Bs, C, **f64), torch.rand(Bs, C, **f64) + 0.5, torch.randn(Bs, C, **f64)], 1)
        args, serial, chunked = (kk_, vv, rho, u), wkv.wkv4_serial, wkv.wkv4_chunked
    elif version == "7":
        logw = -0.6065 * torch.sigmoid(torch.randn(B, T, H, N, **f64))
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, **f64), dim=-1)
        a = torch.sigmoid(torch.randn(B, T, H, N, **f64))
        s0 = torch.randn(Bs, H, N, N, **f64)
        args, serial, chunked = (r, logw, k, v, -kk, kk * a), wkv.wkv7_serial, wkv.wkv7_chunked
    else:
        scale = 2.0 if version == "5.2" else 0.5
        logw = -torch.exp(torch.randn(B, T, H, N, **f64) * scale - (0 if version == "5.2" else 1.5))
        u = torch.randn(H, N, **f64)
        s0 = torch.randn(Bs, H, N, N, **f64)
        args, serial, chunked = (r, k, v, logw, u), wkv.wkv5_serial, wkv.wkv5_chunked
    full = s0.repeat(G, *([1] * (s0.dim() - 1)))  # [B, ...]: row b = s0[b % Bs]
    y1, s1 = serial(*args, full)
    tol = 1e-10 * max(1.0, float(y1.abs().max()))
    y2, s2 = chunked(*args, s0)  # shared states, final state formed
    assert (y2 - y1).abs().max() < tol and (s2 - s1).abs().max() < 1e-10 * max(1.0, float(s1.abs().max()))
    y3, s3 = chunked(*args, s0, need_state=False)
    assert (y3 - y1).abs().max() < tol
    assert s3 is None or (s3 - s1).abs().max() < 1e-10 * max(1.0, float(s1.abs().max()))
    y4, _ = serial(*args, s0)  # the serial kernels take shared states too
    assert (y4 - y1).abs().max() < tol
    if version != "4" and 1 < T <= 16:
        assert s3 is None  # a segment that fits one chunk skips forming the state
    with pytest.raises(ValueError, match="multiple"):
        chunked(*args, s0[:1].repeat(4, *([1] * (s0.dim() - 1))))  # 4 states cannot start 6 rows


def test_wkv5_chunked_decides_the_factorisation_per_chunk():
    """Strong and mild chunks side by side (per row, head and chunk): the outputs, state and gradients equal the
    serial kernel; float32 stays finite with decays down to e^-1e4 per token; and a run cut at a chunk border
    computes its tokens bit for bit as the whole run does (each chunk's path depends on that chunk alone)."""
    torch.manual_seed(3)
    B, T, H, N = 2, 48, 3, 8
    f64 = dict(dtype=torch.float64)
    r, k, v = (torch.randn(B, T, H, N, **f64) for _ in range(3))
    logw = -torch.exp(torch.randn(B, T, H, N, **f64) * 0.5 - 2.0)  # mild everywhere ...
    logw[0, 16:32, 1] = -torch.exp(torch.randn(16, N, **f64) + 2.5)  # ... but a strong chunk in row 0, head 1
    logw[1, 40:, 2, 3] = -1e4  # and a channel that forgets at once at the end of row 1, head 2
    u = torch.randn(H, N, **f64)
    s0 = torch.randn(B, H, N, N, **f64)
    strong = -torch.cumsum(logw.reshape(B, T // 16, 16, H, N), 2)[:, :, -1].amin(-1) > wkv.FACTOR_SPAN
    assert strong.any() and not strong.all()  # both paths are taken in one call
    y1, s1 = wkv.wkv5_serial(r, k, v, logw, u, s0)
    y2, s2 = wkv.wkv5_chunked(r, k, v, logw, u, s0)
    assert (y1 - y2).abs().max() < 1e-10 * float(y1.abs().max())
    assert (s1 - s2).abs().max() < 1e-10 * float(s1.abs().max())
    # gradients (v6 training runs this kernel)
    leaves = [t.clone().requires_grad_(True) for t in (r, k, v, logw)]
    g1 = torch.autograd.grad(wkv.wkv5_serial(*leaves, u, s0)[0].sin().sum(), leaves)
    g2 = torch.autograd.grad(wkv.wkv5_chunked(*leaves, u, s0)[0].sin().sum(), leaves)
    for a, b in zip(g1, g2):
        assert torch.isfinite(b).all() and (a - b).abs().max() < 1e-9 * max(1.0, float(a.abs().max()))
    # float32: finite, close to the float64 reference
    y32, _ = wkv.wkv5_chunked(*(t.float() for t in (r, k, v, logw, u, s0)))
    assert torch.isfinite(y32).all() and (y32.double() - y1).abs().max() < 1e-4 * float(y1.abs().max())
    # runs cut at chunk borders (before and after the strong chunks): their tokens bit for bit the whole run's
    for cut in (16, 32):
        y_cut, _ = wkv.wkv5_chunked(*(t.float()[:, :cut] for t in (r, k, v, logw)), u.float(), s0.float())
        assert torch.equal(y_cut, y32[:, :cut]), cut


def _random_model(version, **kw) -> RWKV:
    sd = random_state_dict(version, **kw)
    return RWKV.from_state_dict(detect_config(sd), sd)


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_hooks_capture_patch_and_state_positions(version):
    model = _random_model(version, n_layer=3, n_embd=64, head_size=16, seed=1)
    toks = list(range(3, 40))
    with torch.no_grad():
        base, _ = model(toks)
    # an identity hook on every point changes nothing (beyond rounding: the chunks are cut at the positions)
    with torch.no_grad():
        same, _ = model.run_with_hooks(toks, [(lambda n: True, lambda t, h: t.clone())], state_positions=[4, 20])
    assert (same - base).abs().max() < 1e-5 * base.abs().max()
    # the state captured after token p equals the final state of the prefix run
    _, _, cache = model.run_with_cache(toks, names_filter=r"blocks\.1\.(att|ffn)\.hook_(state|shift)",
                                       state_positions=[4, 20])
    assert cache.state_positions == (4, 20)
    with torch.no_grad():
        _, s21 = model(toks[:21])
    assert torch.allclose(cache["blocks.1.att.hook_state"][:, 1], s21.wkv[1], atol=1e-5)
    assert torch.allclose(cache["blocks.1.att.hook_shift"][:, 1], s21.att_shift[1], atol=1e-5)
    assert torch.allclose(cache["blocks.1.ffn.hook_shift"][:, 1], s21.ffn_shift[1], atol=1e-5)
    # replacing the state after token 10 changes nothing before token 11, and something after
    zero = model.zero_state(1)
    with torch.no_grad():
        patched, _ = model.run_with_hooks(toks, [("blocks.1.att.hook_state", lambda t, h: zero.wkv[1])],
                                          state_positions=[10])
        _, s11 = model(toks[:11])
        s11.wkv[1] = zero.wkv[1]
        resumed, _ = model(toks[11:], s11)
    assert torch.equal(patched[:, :11], base[:, :11])
    assert (patched[:, 11:] - base[:, 11:]).abs().max() > 1e-4
    assert torch.allclose(patched[:, 11:], resumed, atol=1e-5)
    # hooks are removed afterwards, also after an error inside the forward
    with pytest.raises(RuntimeError):
        model.run_with_hooks(toks, [("blocks.0.hook_resid_post", lambda t, h: (_ for _ in ()).throw(RuntimeError()))])
    assert not any(hp.active for hp in model.hook_points.values())


def test_capture_limited_to_layers_and_names():
    model = _random_model("6", n_layer=4, n_embd=64, head_size=16)
    _, _, cache = model.run_with_cache(list(range(20)), names_filter=r".*hook_(r|w)", layers=[2])
    assert set(cache) == {"blocks.2.att.hook_r", "blocks.2.att.hook_w", "blocks.2.ffn.hook_r"}
    assert cache["blocks.2.att.hook_w"].shape == (1, 20, 64)
    w = cache["blocks.2.att.hook_w"]
    assert bool(((w > 0) & (w < 1)).all())


def test_bf16_weights_keep_decays_and_state_in_fp32():
    sd = random_state_dict("7", n_layer=2, n_embd=64, head_size=16, seed=3)
    cfg = detect_config(sd)
    m32 = RWKV.from_state_dict(cfg, sd)
    m16 = RWKV.from_state_dict(cfg, sd, dtype=torch.bfloat16)
    att = m16.blocks[1].att
    assert att.receptance.weight.dtype == torch.bfloat16 and m16.emb.weight.dtype == torch.bfloat16
    assert att.w0.dtype == torch.float32 and att.r_k.dtype == torch.float32 and att.ln_x.weight.dtype == torch.float32
    toks = list(range(30))
    with torch.no_grad():
        l32, s32 = m32(toks)
        l16, s16 = m16(toks)
    assert s16.wkv.dtype == torch.float32 and l16.dtype == torch.float32
    assert (l16 - l32).abs().max() / l32.abs().max() < 0.05  # bf16 matrices: close, not equal


def test_batched_rows_are_independent():
    model = _random_model("6", n_layer=2, n_embd=64, head_size=16)
    a, b = list(range(5, 30)), list(range(40, 65))
    with torch.no_grad():
        both, st = model([a, b])
        la, sa = model(a)
        lb, _ = model(b)
    assert torch.allclose(both[0], la[0], atol=1e-5) and torch.allclose(both[1], lb[0], atol=1e-5)
    assert torch.allclose(st.select(0).wkv, sa.wkv, atol=1e-5)


def test_bad_tokens_are_rejected():
    model = _random_model("5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=256)
    with pytest.raises(ValueError, match="out of range"):
        model([1, 2, 256])
    with pytest.raises(ValueError, match="non-empty"):
        model([])


def test_capturing_decays_leaves_the_forward_unchanged(tiny_models):
    """Reading hook_w must not round-trip the decay through log: on this model some w underflow to 0 in fp32."""
    model = tiny_models("tiny-rwkv-6v0-1m-FP32.bin")
    toks = list("The Eiffel Tower is located in the city of".encode("utf-16-le"))
    with torch.no_grad():
        base, _ = model(toks)
    logits, _, cache = model.run_with_cache(toks, names_filter=r"blocks\.\d+\.att\.hook_w")
    assert torch.isfinite(logits).all() and torch.equal(logits, base)
    assert len(cache) == model.cfg.n_layer


def test_state_hook_at_every_token_matches_prefix_runs():
    model = _random_model("7", n_layer=2, n_embd=32, head_size=16, seed=4)
    toks = list(range(1, 25))
    _, _, cache = model.run_with_cache(toks, names_filter="blocks.1.att.hook_state", state_positions=range(24))
    states = cache["blocks.1.att.hook_state"][0]  # [P, H, N, N]
    for p in (0, 7, 23):
        with torch.no_grad():
            _, s = model(toks[:p + 1])
        assert torch.allclose(states[p], s.wkv[1, 0], atol=1e-5)


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_hook_logw_is_the_decay_the_kernel_uses(version):
    """hook_logw shows log w of hook_w; patching it acts like patching hook_w with exp of the same values."""
    model = _random_model(version, n_layer=2, n_embd=32, head_size=16, seed=5)
    toks = list(range(3, 30))
    _, _, cache = model.run_with_cache(toks, names_filter=r"blocks\.1\.att\.hook_(w|logw)")
    w, logw = cache["blocks.1.att.hook_w"], cache["blocks.1.att.hook_logw"]
    assert torch.allclose(torch.exp(logw), w, rtol=1e-6, atol=0)
    half = lambda t, h: t * 0.5  # halve the log-decay = square root of the decay
    with torch.no_grad():
        a, _ = model.run_with_hooks(toks, [("blocks.1.att.hook_logw", half)])
        b, _ = model.run_with_hooks(toks, [("blocks.1.att.hook_w", lambda t, h: torch.sqrt(t))])
        base, _ = model(toks)
    assert (a - base).abs().max() > 1e-4
    assert torch.allclose(a, b, atol=1e-4 * float(base.abs().max()))


@pytest.mark.parametrize("version", ["6", "7"])
def test_hook_xw_is_the_decay_lora_input(version):
    """hook_xw records the x_w fed to the decay LoRA: the layer's log_decay of it is hook_logw; a patched x_w
    changes the decay (and only through it: the other branches of the layer keep their values)."""
    model = _random_model(version, n_layer=2, n_embd=32, head_size=16, seed=6)
    toks = list(range(3, 30))
    names = r"blocks\.1\.att\.hook_(xw|logw|r|k)$"
    _, _, cache = model.run_with_cache(toks, names_filter=names)
    att = model.blocks[1].att
    with torch.no_grad():
        want = att.log_decay(cache["blocks.1.att.hook_xw"]).reshape(cache["blocks.1.att.hook_logw"].shape)
    assert torch.equal(want, cache["blocks.1.att.hook_logw"])
    zero = lambda t, h: torch.zeros_like(t)
    with model.hooks([("blocks.1.att.hook_xw", zero)]):
        _, _, patched = model.run_with_cache(toks, names_filter=names)
    with torch.no_grad():
        want0 = att.log_decay(torch.zeros_like(cache["blocks.1.att.hook_xw"]))
    assert torch.allclose(patched["blocks.1.att.hook_logw"].reshape(want0.shape), want0)
    assert not torch.allclose(patched["blocks.1.att.hook_logw"], cache["blocks.1.att.hook_logw"])
    for n in ("r", "k"):
        assert torch.equal(patched[f"blocks.1.att.hook_{n}"], cache[f"blocks.1.att.hook_{n}"])


@pytest.mark.parametrize("version", ["5.2", "6", "7"])
@pytest.mark.parametrize("L", [1, 7, 16])
def test_states_kernels_equal_serial_step_by_step_in_float64(version, L):
    """`wkv5_states` / `wkv7_states`: the output and the state after every token equal the serial kernel run one
    token at a time (shared starting states included)."""
    torch.manual_seed(2)
    B, Bs, H, N = 4, 2, 2, 8
    f64 = dict(dtype=torch.float64)
    r, k, v = (torch.randn(B, L, H, N, **f64) for _ in range(3))
    s0 = torch.randn(Bs, H, N, N, **f64)
    if version == "7":
        logw = -0.6065 * torch.sigmoid(torch.randn(B, L, H, N, **f64))
        kk = torch.nn.functional.normalize(torch.randn(B, L, H, N, **f64), dim=-1)
        a = torch.sigmoid(torch.randn(B, L, H, N, **f64))
        args, serial, states_fn = (r, logw, k, v, -kk, kk * a), wkv.wkv7_serial, wkv.wkv7_states
    else:
        logw = -torch.exp(torch.randn(B, L, H, N, **f64) * 2.0)
        u = torch.randn(H, N, **f64)
        args = (r, k, v, logw, u)
        serial, states_fn = wkv.wkv5_serial, wkv.wkv5_states
    y, states = states_fn(*args, s0)
    assert y.shape == (B, L, H, N) and states.shape == (B, L, H, N, N)
    state = s0.repeat(B // Bs, 1, 1, 1)
    for t in range(L):
        step = tuple(x[:, t:t + 1] if x.dim() == 4 else x for x in args)
        yt, state = serial(*step, state)
        assert (y[:, t:t + 1] - yt).abs().max() < 1e-10 * max(1.0, float(yt.abs().max()))
        assert (states[:, t] - state).abs().max() < 1e-10 * max(1.0, float(state.abs().max()))


@pytest.mark.parametrize("version", ["5.2", "6", "7"])
def test_state_hook_at_every_token_sees_and_replaces_as_at_a_few(version):
    """A state hook at every token (blocks of a states kernel) sees the states of the prefix runs, and a state it
    replaces after token 10 gives what the same replacement at that one position gives (one call per segment)."""
    model = _random_model(version, n_layer=2, n_embd=32, head_size=16, seed=5)
    toks = list(range(1, 41))
    _, _, cache = model.run_with_cache(toks, names_filter="blocks.1.att.hook_state", state_positions=range(40))
    states = cache["blocks.1.att.hook_state"][0]  # [P, H, N, N]
    for p in (0, 15, 16, 39):
        with torch.no_grad():
            _, s = model(toks[:p + 1])
        assert torch.allclose(states[p], s.wkv[1, 0], atol=1e-5)
    zero = model.zero_state(1).wkv[1]
    replace = lambda t, h: zero if h.pos == 10 else None  # noqa: E731
    with torch.no_grad():
        dense, _ = model.run_with_hooks(toks, [("blocks.1.att.hook_state", replace)], state_positions=range(40))
        sparse, _ = model.run_with_hooks(toks, [("blocks.1.att.hook_state", replace)], state_positions=[10])
        base, _ = model(toks)
    assert (dense[:, 11:] - base[:, 11:]).abs().max() > 1e-4
    assert torch.allclose(dense, sparse, atol=1e-5)


@pytest.mark.parametrize("version", ["4", "7"])
def test_greedy_continuation_equals_argmax_of_full_runs(version):
    """`RWKV.greedy` (last-token logits, then one-token steps) picks what the argmax of a whole run over the prompt
    and the tokens chosen so far picks."""
    model = _random_model(version, n_layer=2, n_embd=32, head_size=16, seed=6)
    toks = list(range(5, 17))
    got = model.greedy(toks, 3)
    ids = list(toks)
    for g in got:
        with torch.no_grad():
            logits, _ = model(ids)
        assert g == int(logits[0, -1].argmax())
        ids.append(g)


def test_a_state_hook_replacing_at_every_token_equals_token_by_token_runs():
    """A hook that replaces layer 1's state after every token (blocks of one token after each replacement) gives
    what running the prompt one token at a time and scaling that state in between gives."""
    model = _random_model("7", n_layer=2, n_embd=32, head_size=16, seed=7)
    toks = list(range(1, 30))
    with torch.no_grad():
        hooked, _ = model.run_with_hooks(toks, [("blocks.1.att.hook_state", lambda t, h: t * 0.9)],
                                         state_positions=range(len(toks)))
        state, outs = None, []
        for t in toks:
            logits, state = model([t], state)
            state.wkv[1] = state.wkv[1] * 0.9
            outs.append(logits[:, -1])
    assert torch.allclose(hooked[0], torch.cat(outs), atol=1e-4)
