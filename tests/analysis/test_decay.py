"""Time decay: static and per-token decays, half-life, retention, state size, figures, CSV/CLI and the page.

Reference values are computed here independently from the raw checkpoint tensors (formulas of rwkv-math §9),
from the w the forward pass used (hook `blocks.{l}.att.hook_w`) and from RNN-mode states (`forward_rnn`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rwkv_core.analysis import decay as D
from rwkv_core.figures import decay as FD
from rwkv_core.figures.common import cell_from_selection, image_config
from rwkv_core.io.checkpoint import detect_config, load_checkpoint, load_model
from rwkv_core.io.synthetic import random_state_dict, save_checkpoint
from tests.conftest import shared_file

VERSIONS = ("4", "5.1", "5.2", "6", "7")
TINY = {
    "4": "tiny-rwkv-4v0-660K-FP32.bin",
    "5.1": "tiny-rwkv-5v1-730K-FP32.bin",
    "5.2": "tiny-rwkv-5v2-730K-FP32.bin",
    "6": "tiny-rwkv-6v0-1m-FP32.bin",
    "7": "tiny-rwkv-7v0-834K-FP32.bin",
    "7-digits": "260123_reverse_L2_only_rwkv7.pth",
}


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    """version -> (path, raw state_dict) of a small random official checkpoint (2 layers, C 64, N 16)."""
    out = {}
    root = tmp_path_factory.mktemp("decay_ckpt")
    for v in VERSIONS:
        sd = random_state_dict(v, n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=3)
        path = root / f"random-v{v}.pth"
        save_checkpoint(sd, path)
        out[v] = (path, sd)
    return out


def formula_decay(sd: dict, version: str, n_layer: int, dtype=torch.float64) -> np.ndarray:
    """lambda [L, C] straight from the raw tensors (rwkv-math §9), in `dtype`."""
    rows = []
    for l in range(n_layer):
        p = f"blocks.{l}.att."
        if version == "7":
            w0 = sd[p + "w0"].to(dtype).reshape(-1)
            lam = torch.exp(-math.exp(-0.5) * torch.sigmoid(w0))
        else:
            td = sd[p + "time_decay"].to(dtype)
            lam = torch.exp(-torch.exp(td))
            if version == "5.1":  # one per head, repeated over the head's channels
                C = sd[p + "key.weight"].shape[0]
                lam = lam.repeat_interleave(C // lam.numel())
            lam = lam.reshape(-1)
        rows.append(lam.double().numpy())
    return np.stack(rows)


def hook_w_all_layers(model, tokens) -> np.ndarray:
    """[L, T, C] w captured through hook_w in one forward (a read-only hook leaves the forward unchanged)."""
    names = [f"blocks.{l}.att.hook_w" for l in range(model.cfg.n_layer)]
    _, _, cache = model.run_with_cache(tokens, names_filter=names)
    return np.stack([cache[n][0].double().numpy() for n in names])


# ------------------------------------------------------------------------------------------------ static


@pytest.mark.parametrize("version", VERSIONS)
def test_static_decay_random_checkpoints_equal_formula(random_ckpt, version):
    path, sd = random_ckpt[version]
    st = D.static_decay(path)  # through load_checkpoint: the raw tensors
    ref = formula_decay(sd, version, 2)
    assert st.decay.shape == (2, 64)
    np.testing.assert_allclose(st.decay, ref, rtol=1e-12, atol=0)
    # fp32 evaluation of the formula (what the issue asks for) agrees to fp32 rounding
    np.testing.assert_allclose(st.decay, formula_decay(sd, version, 2, torch.float32), rtol=2e-6, atol=1e-7)
    # the decays have a real spread (not a degenerate test)
    assert st.decay.max() - st.decay.min() > 0.2
    # half-life = ln 2 / (-ln lambda) and rate = -ln lambda
    np.testing.assert_allclose(st.half_life, math.log(2) / -np.log(ref), rtol=1e-9)
    np.testing.assert_allclose(st.rate, -np.log(ref), rtol=1e-9)
    # the same numbers from the model's parameters and from the Checkpoint object
    np.testing.assert_allclose(D.static_decay(load_model(path)).decay, st.decay, rtol=1e-12)
    np.testing.assert_allclose(D.static_decay(load_checkpoint(path)).decay, st.decay, rtol=1e-12)
    H = 1 if version == "4" else 4
    assert (st.n_head, st.head_size) == (H, 64 // H)
    if version == "5.1":  # constant within each head
        assert np.all(np.ptp(st.by_head(st.decay), axis=-1) == 0)
    if version == "7":
        assert st.decay.min() > D.V7_MIN_DECAY and st.half_life.min() >= D.V7_MIN_HALF_LIFE


@pytest.mark.parametrize("key", list(TINY))
def test_static_decay_tiny_models_equal_formula(key):
    path = shared_file(TINY[key])
    ckpt = load_checkpoint(path)
    version = ckpt.config.version
    st = D.static_decay(ckpt)
    ref = formula_decay(ckpt.state_dict, version, ckpt.config.n_layer)
    np.testing.assert_allclose(st.decay, ref, rtol=1e-12, atol=0)
    assert st.decay.shape == (ckpt.config.n_layer, ckpt.config.n_embd)
    assert np.isfinite(st.log10_half_life).all()
    # the profiles the shared README describes
    if key in ("4", "5.1", "5.2"):
        assert 0.25 < st.decay.min() and st.decay.max() < 0.45
    elif key == "6":
        assert 0.65 < st.decay.min() < 0.67 and 0.997 < st.decay.max() < 0.999
        assert 250 < st.half_life.max() < 350
    elif key == "7-digits":
        assert 1 - st.decay.max() < 1e-7 and st.decay.min() < 0.55
        assert st.half_life.max() > 1e6  # finite although lambda is within 1e-7 of 1


def test_static_bonus_shapes(random_ckpt):
    for v in VERSIONS:
        path, sd = random_ckpt[v]
        b = D.static_bonus(path)
        assert b.shape == (2, 64)
        if v == "5.2":
            np.testing.assert_allclose(b[1], sd["blocks.1.att.time_faaaa"].double().reshape(-1).numpy())
        if v == "5.1":
            np.testing.assert_allclose(b[0, :16], math.exp(float(sd["blocks.0.att.time_first"][0])), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ per-token


@pytest.mark.parametrize("version", VERSIONS)
def test_token_decays_random_equal_hook_w(random_ckpt, version):
    path, _ = random_ckpt[version]
    model = load_model(path)
    tokens = [5, 200, 17, 99, 3, 3, 250, 42, 7]
    td = D.token_decays(model, tokens)
    w = hook_w_all_layers(model, tokens)
    assert td.log_decay.shape == w.shape == (2, len(tokens), 64)
    np.testing.assert_allclose(td.decay, w, rtol=2e-5, atol=1e-6)
    spread = np.ptp(td.log_decay, axis=1).max()
    assert (spread > 1e-3) if D.is_dynamic(version) else (spread == 0)


@pytest.mark.parametrize("key", ["6", "7", "7-digits"])
def test_token_decays_tiny_equal_hook_w(key):
    model = load_model(shared_file(TINY[key]))
    text = "Eiffel Tower, Paris"
    if key == "7-digits":  # vocabulary '0'-'9' -> 0-9, ',' -> 10, '#' -> 11
        tokens = ["0123456789,#".index(c) for c in "31415926,62951413#"]
    else:
        tokens = list(text.encode("utf-16-le")) if key == "6" else list(text.encode())
    td = D.token_decays(model, tokens)
    w = hook_w_all_layers(model, tokens)
    tiny = w < 1e-30  # fp32 underflow to 0 (tiny v6, layer 9): compare in absolute terms only
    np.testing.assert_allclose(td.decay[~tiny], w[~tiny], rtol=2e-5, atol=1e-7)
    assert np.all(td.decay[tiny] < 1e-30)
    assert np.isfinite(td.log10_half_life).all()  # also where w is 0 or 1 in fp32
    # a subset of layers gives the same rows
    sub = D.token_decays(model, tokens, layers=[1])
    np.testing.assert_array_equal(sub.log_decay[0], td.log_decay[1])
    # the static decay is the LoRA-free part: d_t - d_static is what the LoRA added, and it varies by token
    st = D.static_decay(model)
    assert np.ptp(td.logit[0] - st.logit[0][None], axis=0).max() > 1e-3


# ------------------------------------------------------------------------------------------------ formulas by hand


def test_half_life_hand_cases():
    ln2 = math.log(2)
    np.testing.assert_allclose(D.half_life(np.log([0.5, 2 ** -0.1, 0.25])), [1.0, 10.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(D.half_life(np.log([0.5])), [1.0])
    assert D.half_life(np.array([0.0]))[0] == np.inf
    # v4-v6 from the logit d: rho = e^d
    d = np.array([math.log(ln2), 0.0, -50.0, 50.0])
    lh = D.log10_half_life_from_logit(d, "6")
    np.testing.assert_allclose(lh[:2], [0.0, math.log10(ln2)], atol=1e-15)
    np.testing.assert_allclose(lh[2:], [math.log10(ln2) + 50 * math.log10(math.e),
                                        math.log10(ln2) - 50 * math.log10(math.e)], rtol=1e-14)
    lam = np.exp(D.log_decay_from_logit(d, "4"))
    assert lam[2] == 1.0 and lam[3] == 0.0  # float64 cannot hold them, the half-life still is finite
    np.testing.assert_allclose(lam[0], 0.5, rtol=1e-15)
    # v7: rho = e^-0.5 sigmoid(d)
    d7 = np.array([0.0, 40.0, -40.0])
    rho = math.exp(-0.5) * np.array([0.5, 1 / (1 + math.exp(-40)), 1 / (1 + math.exp(40))])
    np.testing.assert_allclose(D.log_decay_from_logit(d7, "7"), -rho, rtol=1e-14)
    np.testing.assert_allclose(10 ** D.log10_half_life_from_logit(d7, "7"), ln2 / rho, rtol=1e-12)
    np.testing.assert_allclose(10 ** D.log10_half_life_from_logit(np.array([0.0]), "7"), 2.2855, rtol=1e-4)
    assert abs(D.V7_MIN_HALF_LIFE - 1.1428) < 1e-4 and abs(D.V7_MIN_DECAY - 0.5452) < 1e-4


def test_retention_hand_cases():
    lam = np.array([[0.5, 1.0], [0.25, 0.5], [0.8, 0.5], [0.9, 0.5]])  # [T=4, C=2]
    logw = np.log(lam)
    r6 = D.retention(logw, 0, "6")  # read before own decay: prod_{j=1}^{t-1}
    np.testing.assert_allclose(r6[1:], [[1.0, 1.0], [0.25, 0.5], [0.2, 0.25]], rtol=1e-14)
    assert np.isnan(r6[0]).all()
    r7 = D.retention(logw, 0, "7")  # update then read: prod_{j=1}^{t}
    np.testing.assert_allclose(r7, [[1.0, 1.0], [0.25, 0.5], [0.2, 0.25], [0.18, 0.125]], rtol=1e-14)
    r4 = D.retention(logw, 1, "4")
    assert np.isnan(r4[:2]).all()
    np.testing.assert_allclose(r4[2:], [[1.0, 1.0], [0.8, 0.5]], rtol=1e-14)
    assert np.isnan(D.retention(logw, 3, "6")).all()  # nobody reads the last token through the state
    assert D.first_read(2, "6") == 3 and D.first_read(2, "7") == 2
    # long spans: summed in log space, no underflow to a wrong value
    long = np.full((3000, 1), math.log(0.999))
    np.testing.assert_allclose(D.log_retention(long, 0, "7")[-1], 2999 * math.log(0.999), rtol=1e-12)
    # aggregation over the channels of each head
    by = D.retention_by_head(r7, 1, "median")
    np.testing.assert_allclose(by[:, 0], [1.0, 0.375, 0.225, 0.1525])
    np.testing.assert_allclose(D.retention_by_head(r7, 2, "max"), r7)
    with pytest.raises(ValueError):
        D.log_retention(logw, 4, "6")


def test_head_summary_hand_case():
    # 1 layer, 2 heads of 3 channels; half-lives 1, 10, 100 | 0.5, 2, 1000
    lh = np.log10([[1.0, 10.0, 100.0, 0.5, 2.0, 1000.0]])
    s = D.head_summary(lh, 2, context_length=50)
    assert list(s.columns[:6]) == ["layer", "head", "median_half_life", "max_half_life", "min_half_life", "n_long"]
    np.testing.assert_allclose(s["median_half_life"], [10.0, 2.0])
    np.testing.assert_allclose(s["max_half_life"], [100.0, 1000.0])
    assert list(s["n_long"]) == [1, 1] and list(s["n_channels"]) == [3, 3]


# ------------------------------------------------------------------------------------------------ state size


@pytest.mark.parametrize("version", VERSIONS)
def test_state_sizes_equal_rnn_states(random_ckpt, version):
    model = load_model(random_ckpt[version][0])
    tokens = [9, 120, 33, 33, 250, 1]
    ss = D.state_sizes(model, tokens)
    H = 1 if version == "4" else 4
    assert ss.frobenius.shape == ss.max_abs.shape == (2, len(tokens), H)
    for t in range(len(tokens)):
        _, state = model.forward_rnn(tokens[: t + 1])
        s = state.wkv[:, 0].double()  # [L, H, N, N] or v4 [L, 3, C]
        if version == "4":
            content = s[:, 0] / s[:, 1]  # aa / bb
            frob, peak = content.norm(dim=-1)[:, None], content.abs().amax(-1)[:, None]
        else:
            frob = s.pow(2).sum((-2, -1)).sqrt()
            peak = s.abs().amax((-2, -1))
        np.testing.assert_allclose(ss.frobenius[:, t], frob.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ss.max_abs[:, t], peak.numpy(), rtol=1e-4, atol=1e-6)
    assert np.all(ss.frobenius > 0) and np.all(ss.max_abs <= ss.frobenius + 1e-12)


def test_state_size_of_explicit_tensor():
    s = torch.zeros(2, 2, 2)
    s[0] = torch.tensor([[3.0, 0.0], [0.0, -4.0]])
    f, m = D.state_size(s, "6")
    np.testing.assert_allclose(f, [5.0, 0.0]) and np.testing.assert_allclose(m, [4.0, 0.0])
    v4 = torch.tensor([[2.0, -6.0], [1.0, 2.0], [0.0, 5.0]])  # aa, bb, pp -> aa/bb = [2, -3]
    f, m = D.state_size(v4, "4")
    np.testing.assert_allclose(f, [math.sqrt(13)]) and np.testing.assert_allclose(m, [3.0])


# ------------------------------------------------------------------------------------------------ CSV


def test_write_static_csv(random_ckpt, tmp_path):
    for v in ("4", "6"):
        path, sd = random_ckpt[v]
        out = tmp_path / f"decay{v}.csv"
        n = D.write_static_csv(path, out)
        df = pd.read_csv(out)
        assert n == len(df) == 2 * 64
        assert list(df.columns) == ["layer", "head", "channel", "decay", "half_life"]
        ref = formula_decay(sd, v, 2)
        np.testing.assert_allclose(df["decay"].to_numpy().reshape(2, 64), ref, rtol=1e-14)  # float64: a few ulps
        np.testing.assert_allclose(df["half_life"], math.log(2) / -np.log(df["decay"]), rtol=1e-9)
        assert list(df["channel"][:3]) == [0, 1, 2] and df["layer"].iloc[-1] == 1
        assert set(df["head"]) == ({0} if v == "4" else {0, 1, 2, 3})


# ------------------------------------------------------------------------------------------------ figures


@pytest.fixture(scope="module")
def static6(random_ckpt):
    return D.static_decay(random_ckpt["6"][0])


def _all_traces_hover(fig):
    return all(tr.hovertemplate for tr in fig.data)


def test_paper_figure(static6):
    fig = FD.paper_figure(static6.decay, static6.log10_half_life, static6.head_size)
    lines = [tr for tr in fig.data if tr.mode == "lines"]
    assert len(lines) == 2 and all(len(tr.y) == 64 for tr in lines)
    for tr, layer in zip(lines, range(2)):
        assert np.all(np.diff(tr.y) <= 0)  # sorted descending
        np.testing.assert_allclose(sorted(tr.y, reverse=True), np.sort(static6.decay[layer])[::-1])
    assert lines[0].line.color != lines[1].line.color
    assert tuple(fig.layout.yaxis.range) == (0, 1.02)
    assert "decay" in fig.layout.yaxis.title.text and "rank" in fig.layout.xaxis.title.text
    assert "sorted" in fig.layout.title.text and _all_traces_hover(fig)
    fig = FD.paper_figure(static6.decay, static6.log10_half_life, 16, head=2, y="half_life")
    lines = [tr for tr in fig.data if tr.mode == "lines"]
    assert all(len(tr.y) == 16 for tr in lines) and fig.layout.yaxis.type == "log"
    assert set(lines[0].customdata[:, 0]) == set(range(32, 48)) and "head 2" in fig.layout.title.text
    with pytest.raises(ValueError):
        FD.paper_figure(static6.decay, static6.log10_half_life, 16, head=4)


def test_layer_channel_heatmap(static6):
    fig = FD.layer_channel_heatmap(static6.decay, static6.log10_half_life, 16)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (2, 64) and np.allclose(z, static6.decay)
    assert fig.layout.xaxis.title.text == "channel" and fig.layout.yaxis.title.text == "layer"
    fig = FD.layer_channel_heatmap(static6.decay, static6.log10_half_life, 16, sort=True, value="log10_half_life")
    z = np.asarray(fig.data[0].z)
    assert np.all(np.diff(z, axis=1) <= 0) and "sorted" in fig.layout.title.text
    assert _all_traces_hover(fig)
    fig = FD.bonus_heatmap(np.ones((2, 64)), version="6")
    assert np.asarray(fig.data[0].z).shape == (2, 64) and _all_traces_hover(fig)


def test_token_views():
    T, H, N = 7, 3, 4
    rng = np.random.default_rng(0)
    med = rng.normal(size=(T, H))
    labels = [f"t{i}" for i in range(T)]
    fig = FD.token_head_heatmap(med, labels, layer=1, selected=(2, 1))
    assert np.asarray(fig.data[0].z).shape == (H, T) and len(fig.data[1].x) == T * H
    assert fig.layout.xaxis.title.text == "token" and fig.layout.yaxis.title.text == "head"
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 1.5 and "layer 1" in fig.layout.title.text
    assert _all_traces_hover(fig)
    # the token axis: categories "index: text", so hover names the token with no per-cell strings
    assert list(fig.data[0].x) == [f"{i}: t{i}" for i in range(T)] and fig.layout.xaxis.type == "category"
    assert fig.data[0].customdata is None and "%{x}" in fig.data[0].hovertemplate
    overlay = fig.data[1]  # the click targets: (token, head) first in customdata, as cell_from_selection reads it
    assert overlay.type == "scatter" and overlay.x[T + 3] == "3: t3" and list(overlay.customdata[T + 3][:2]) == [3, 1]
    # 200 tokens x 12 heads: still clickable, the click targets in WebGL (SVG markers cost the browser per point)
    mid = FD.token_head_heatmap(rng.normal(size=(200, 12)), [f"t{i}" for i in range(200)], layer=0)
    assert mid.data[1].type == "scattergl" and len(mid.data[1].x) == 2400 and mid.data[1].x[199] == "199: t199"
    # 1,000 tokens: columns too narrow to aim at; the heat map alone (its hover still names token and head)
    big = FD.token_head_heatmap(rng.normal(size=(1000, 12)), [f"t{i}" for i in range(1000)], layer=0, selected=(500, 3))
    assert len(big.data) == 1 and big.data[0].type == "heatmap" and len(big.layout.shapes) == 1
    assert len(big.layout.xaxis.categoryarray) == 1000 and big.layout.xaxis.tickvals is None
    lam = rng.uniform(0.5, 1, N)
    fig = FD.channel_spectrum_figure(lam, np.log10(np.log(2) / -np.log(lam)), lam ** 2,
                                     np.log10(np.log(2) / -np.log(lam ** 2)), channels=range(4, 8),
                                     token_label="3 x", layer=0, head=1)
    assert len(fig.data) == 2 and list(fig.data[0].x) == [4, 5, 6, 7] and _all_traces_hover(fig)
    assert "static" in fig.data[0].name and "head 1" in fig.layout.title.text
    r = D.retention_by_head(D.retention(np.log(rng.uniform(0.5, 1, (T, H * N))), 2, "6"), H)
    fig = FD.retention_figure(r, labels, source=2, layer=0)
    assert len(fig.data) == H and list(fig.data[0].x) == ["3: t3", "4: t4", "5: t5", "6: t6"]
    assert fig.data[0].y[0] == 1.0 and fig.data[0].mode == "lines+markers"
    assert fig.layout.yaxis.type == "log" and _all_traces_hover(fig)
    assert list(fig.layout.xaxis.range) == [1.5, 6.5] and len(fig.layout.xaxis.categoryarray) == T  # by position
    long = D.retention_by_head(D.retention(np.log(rng.uniform(0.5, 1, (1000, H * N))), 0, "6"), H)
    fig = FD.retention_figure(long, [f"t{i}" for i in range(1000)], source=0, layer=0)
    assert {tr.mode for tr in fig.data} == {"lines"}  # 3,000 points: lines only (SVG markers would cost seconds)
    fig = FD.state_size_figure(rng.uniform(size=(T, H)), labels, layer=0, metric="max_abs")
    assert len(fig.data) == H and len(fig.data[0].y) == T and "max" in fig.layout.yaxis.title.text
    assert list(fig.data[0].x) == [f"{i}: t{i}" for i in range(T)] and fig.data[0].customdata is None
    assert _all_traces_hover(fig)
    assert image_config("rwkv-decay", "svg")["toImageButtonOptions"]["format"] == "svg"


def test_cell_from_selection():
    point = {"curve_number": 1, "x": 4, "y": 2, "customdata": [4, 2, 3.5]}
    assert cell_from_selection({"points": [point]}) == (4, 2)
    assert cell_from_selection({"points": [{"x": 3.0, "y": 1.0}]}) == (3, 1)
    # what Streamlit actually returns for a 2-D customdata row: a dict keyed by position (x/y point elsewhere)
    assert cell_from_selection({"points": [{"customdata": {"0": 4, "1": 2}, "x": 9, "y": 9}]}) == (4, 2)
    assert cell_from_selection({"points": []}) is None and cell_from_selection(None) is None
    # the layer x head grid: rows (layer) first
    assert cell_from_selection({"points": [{"x": 3.0, "y": 1.0}]}, axes=("y", "x")) == (1, 3)


def test_token_head_summary_hand_case():
    # 1 layer, 3 tokens, 1 head of 2 channels; rates per token and channel
    rho = np.array([[[1.0, 0.1], [0.5, 0.1], [0.3, 0.1]]])  # [L, T, C]
    lh = np.log10(np.log(2) / rho)
    td = D.TokenDecay("6", 1, 2, [0, 1, 2], [0], np.log(rho))  # v6: rho = e^d
    np.testing.assert_allclose(td.log_decay, -rho, rtol=1e-14)
    np.testing.assert_allclose(td.log10_half_life, lh, rtol=1e-12)
    s = D.token_head_summary(td, 0)
    avg = np.median(np.log10(np.log(2) / np.array([0.6, 0.1])))  # mean rates 0.6 and 0.1
    np.testing.assert_allclose(s["avg_half_life"], [10 ** avg])
    assert s["min_at_token"][0] == 0 and s["n_long"][0] == 1  # ln2/0.1 = 6.9 > 3 tokens
    np.testing.assert_allclose(s["min_half_life"], [10 ** np.median(lh[0, 0])])


def test_trace_log10_half_life_clips():
    w = np.array([[0.0, 1.0, 0.5, np.float32(0.9999)]], dtype=np.float32)
    td = D.trace_token_decays(np.tile(w, (3, 1)), type("C", (), {"version": "6", "n_head": 2, "head_size": 2,
                                                                     "dim_att": 4})(), [1, 2, 3], 0)
    lh = td.log10_half_life[0, :1]  # [1, C]: token 0, what the Time decay view shows
    assert np.all(np.isfinite(lh))
    np.testing.assert_allclose(lh[0, 2], 0.0, atol=1e-12)  # lambda = 0.5: half-life 1 token
    assert 6.8 < lh[0, 1] < 6.9  # w = 1 clipped to 1 - 1e-7: log10(ln2 / 1e-7) = 6.84
    w64 = np.clip(w.astype(np.float64), D.TRACE_W_MIN, D.TRACE_W_MAX)
    np.testing.assert_allclose(lh[0], D.LOG10_LN2 - np.log10(-np.log(w64[0])), rtol=1e-12)
    np.testing.assert_allclose(td.decay[0, 0, 2:], [0.5, np.float32(0.9999)], rtol=1e-12)


# ------------------------------------------------------------------------------------------------ the page's one pass


@pytest.mark.parametrize("version", ["4", "6", "7"])
def test_decay_pass_equals_separate_passes(random_ckpt, version):
    """decay_pass: x_w of every layer (the per-token decays to float32 rounding) and the state sizes of the measured
    layer from one forward pass; state_sizes of one layer (its pass ended after it) equals the all-layer rows."""
    model = load_model(random_ckpt[version][0])
    tokens = [9, 120, 33, 33, 250, 1, 77]
    every = D.state_sizes(model, tokens)
    one = D.decay_pass(model, tokens, state_layers=[0])
    assert one.state_sizes.layers == [0]
    np.testing.assert_allclose(one.state_sizes.frobenius[0], every.frobenius[0], rtol=1e-6)
    np.testing.assert_allclose(one.state_sizes.max_abs[0], every.max_abs[0], rtol=1e-6)
    early = D.state_sizes(model, tokens, layers=[0])
    np.testing.assert_array_equal(early.frobenius[0], every.frobenius[0])
    if not D.is_dynamic(version):
        assert one.lora_inputs == {}
        return
    assert sorted(one.lora_inputs) == [0, 1]
    td = D.token_decays_from_inputs(model, tokens, one.lora_inputs)
    np.testing.assert_allclose(td.log_decay, D.token_decays(model, tokens).log_decay, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("version", ["4", "6", "7"])
def test_another_layers_state_is_one_blocks_run_from_the_kept_input(version):
    """The prompt's pass keeps each block's input (v6/v7): another layer's state sizes then run that block alone
    (no layer below it) and equal a pass of their own from the embedding; v4/v5 keep none (the pass ends early)."""
    from rwkv_core.model.rwkv import RWKV

    sd = random_state_dict(version, n_layer=4, n_embd=64, head_size=16, vocab_size=256, seed=5)
    model = RWKV.from_state_dict(detect_config(sd), sd)
    tokens = [int(t) for t in torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(2))]
    kept = D.decay_pass(model, tokens, state_layers=[1])
    if not D.is_dynamic(version):
        assert kept.resid_pre == {} and kept.state_sizes_of(model, 3) is None
        return
    assert sorted(kept.resid_pre) == [1, 2, 3] and (kept.v_first is not None) == (version == "7")
    fired: list[str] = []
    with model.hooks([(lambda n: n.startswith("blocks.") and n.endswith("hook_resid_pre"),
                       lambda x, hook: fired.append(hook.name))]):
        for layer in (3, 2, 1):
            got = kept.state_sizes_of(model, layer)
            want = D.state_sizes(model, tokens, layers=[layer])
            assert got.layers == [layer]
            np.testing.assert_allclose(got.frobenius, want.frobenius, rtol=1e-5)
            np.testing.assert_allclose(got.max_abs, want.max_abs, rtol=1e-5)
    n_own = sum(range(1, 4)) + 3  # the own passes fire layers 0..l each; state_sizes_of fires only its block (3, 2)
    assert fired.count("blocks.3.hook_resid_pre") == 2 and fired.count("blocks.0.hook_resid_pre") == 3, fired
    assert len(fired) == n_own + 2
    with pytest.raises(ValueError, match="layer 0"):
        model.run_block(0, kept.resid_pre[1])


def test_tables_of_the_downloads(random_ckpt):
    """The per-token table (T x C rows of one layer, with the retention from a source) and the state-size table
    (L x T x H rows) hold the arrays they are built from, row by row."""
    model = load_model(random_ckpt["7"][0])
    tokens = [5, 200, 17, 99, 3]
    td = D.token_decays(model, tokens)
    table = D.token_decay_table(td, 1, source=2)
    T, C = len(tokens), 64
    assert len(table) == T * C and list(table.columns)[-1] == "retention_from_2"
    np.testing.assert_array_equal(table["decay"].to_numpy().reshape(T, C), td.decay[1])
    np.testing.assert_array_equal(table["half_life"].to_numpy().reshape(T, C), td.half_life[1])
    np.testing.assert_array_equal(table["retention_from_2"].to_numpy().reshape(T, C),
                                  D.retention(td.log_decay[1], 2, "7"))
    assert (table["head"] == table["channel"] // td.head_size).all() and (table["layer"] == 1).all()
    ss = D.state_sizes(model, tokens)
    rows = ss.table()
    assert len(rows) == 2 * T * 4
    row = rows[(rows["layer"] == 1) & (rows["token"] == 3) & (rows["head"] == 2)].iloc[0]
    assert row.frobenius == ss.frobenius[1, 3, 2] and row.max_abs == ss.max_abs[1, 3, 2]
