"""`rwkv_core.demo.train` (issue 7): the training kernel's gradients, the schedule, the data windows, determinism of a
run, replaying the start of a phase, the official layout of what it saves, and the phases it records in a card.

Tiny models (2 layers x 32) and a few steps, so the whole file runs in well under a minute.
"""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from rwkv_core.model import wkv
from rwkv_core.demo import train as T
from rwkv_core.demo.card import card_json
from rwkv_core.io.checkpoint import load_model
from rwkv_core.demo.corpus import SEPARATOR

TINY = ["--n-layer", "2", "--n-embd", "32", "--head-size", "16", "--ctx-len", "24", "--batch", "2",
        "--data-bytes", "120000", "--threads", "1", "--warmup", "2", "--log-every", "1", "--seed", "3"]


def run(tmp_path, version: str, steps: int, *extra: str, out: str = "m.pth") -> dict:
    args = T.parse_args(["--version", version, "--steps", str(steps), "--out", str(tmp_path / out), *TINY, *extra])
    torch.manual_seed(12345)  # the run must not depend on the caller's global RNG state
    return T.train(args)


# ------------------------------------------------------------------------------------------------ kernel


@pytest.mark.parametrize("T_len", [1, 5, 16, 37])
def test_wkv7_training_kernel_equals_the_serial_kernel_with_gradients(T_len):
    """Outputs, final state and every input gradient of the training kernel equal autograd through the serial
    kernel (float64)."""
    g = torch.Generator().manual_seed(T_len)
    B, H, N = 2, 2, 8
    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale)
    kk = torch.nn.functional.normalize(rnd(B, T_len, H, N), dim=-1)
    a = torch.rand(B, T_len, H, N, generator=g, dtype=torch.float64)
    inputs = {"r": rnd(B, T_len, H, N), "logw": -torch.exp(rnd(B, T_len, H, N, scale=0.5) - 1.0),
              "k": rnd(B, T_len, H, N), "v": rnd(B, T_len, H, N), "alpha": -kk, "beta": kk * a,
              "state": rnd(B, H, N, N, scale=0.3)}
    outs = {}
    for name, fn in (("serial", wkv.wkv7_serial), ("train", T.wkv7_chunked_train)):
        xs = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        y, s = fn(xs["r"], xs["logw"], xs["k"], xs["v"], xs["alpha"], xs["beta"], xs["state"])
        w_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w_s = torch.randn(s.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ((y * w_y).sum() + (s * w_s).sum()).backward()
        outs[name] = (y.detach(), s.detach(), {k: v.grad for k, v in xs.items()})
    (y0, s0, g0), (y1, s1, g1) = outs["serial"], outs["train"]
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s1, s0, rtol=1e-10, atol=1e-10)
    for k in inputs:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-9, atol=1e-9, msg=lambda m: f"d/d{k}: {m}")


# ------------------------------------------------------------------------------------------------ schedule, data


def test_learning_rate_schedule_is_warmup_then_cosine():
    lr, lr_final, warmup, total = 3e-3, 1e-4, 10, 110
    got = [T.lr_at(s, total, warmup, lr, lr_final) for s in range(total + 1)]
    assert got[0] == pytest.approx(lr / warmup) and got[warmup - 1] == pytest.approx(lr)
    assert got[warmup] == pytest.approx(lr) and got[total] == pytest.approx(lr_final)
    mid = warmup + (total - warmup) // 2  # half way through the cosine: the mean of the two ends
    assert got[mid] == pytest.approx((lr + lr_final) / 2)
    assert all(a >= b for a, b in zip(got[warmup:], got[warmup + 1:]))


def test_windows_are_shifted_pairs_and_start_at_documents_when_asked():
    doc = b"abcdefghij" * 8
    data = SEPARATOR.encode().join([doc] * 50)
    w = T.Windows(data, 16, seed=0, doc_start_share=1.0)
    x, y = w.batch(32)
    assert x.shape == y.shape == (32, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert all(bytes(row.tolist()).startswith(b"abcdefghij") for row in x)  # every window at a document start
    x2, _ = T.Windows(data, 16, seed=0, doc_start_share=1.0).batch(32)
    assert torch.equal(x, x2)  # the seed fixes the windows


# ------------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("version", ["7", "6"])
def test_a_run_is_deterministic_and_a_replayed_prefix_equals_its_start(version, tmp_path):
    kernel = wkv.wkv7_chunked
    a = run(tmp_path, version, 6, out="a.pth")
    assert wkv.wkv7_chunked is kernel  # the training kernel is set on the trained model only, not process-wide
    b = run(tmp_path, version, 6, out="b.pth")
    sa = torch.load(tmp_path / "a.pth", weights_only=True)
    sb = torch.load(tmp_path / "b.pth", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    # --stop-after keeps the full run's schedule: its steps are the full run's first steps
    c = run(tmp_path, version, 6, "--stop-after", "3", out="c.pth")
    assert c["steps"] == 3
    assert [(h["step"], h["loss"], h["lr"]) for h in c["history"]] == \
        [(h["step"], h["loss"], h["lr"]) for h in a["history"][:3]]
    # another seed is another run
    d = T.train(T.parse_args(["--version", version, "--steps", "6", "--out", str(tmp_path / "d.pth"),
                              *TINY[:-1], "4"]))
    assert [h["loss"] for h in d["history"]] != [h["loss"] for h in a["history"]]


@pytest.mark.parametrize("version", ["7", "6"])
def test_a_trained_file_is_official_layout_and_loads_with_the_same_logits(version, tmp_path):
    run(tmp_path, version, 3)
    sd = torch.load(tmp_path / "m.pth", weights_only=True)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in sd.values())
    assert ("blocks.0.att.v0" in sd) is False if version == "7" else "blocks.0.att.time_faaaa" in sd
    tokens = list(b"The Eiffel Tower is in")
    with torch.no_grad():
        got = load_model(tmp_path / "m.pth")(tokens)[0][0].numpy()  # [T, V]
    assert np.isfinite(got).all() and np.abs(got).max() > 0
    if importlib.util.find_spec("rwkv") is None:
        pytest.skip("the official `rwkv` package is not installed")
    from tests.oracle_rwkv_pip import official_forward
    want = official_forward(tmp_path / "m.pth", tokens, mode="seq", version=version)["logits"]
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-5, f"max relative logit error {rel:.2e}"


def test_phase_args_drop_paths_and_reporting_options():
    argv = ["--version", "7", "--out", "x.pth", "--init-from=p.pth", "--steps", "5", "--card", "c.json",
            "--progress", "--log", "l.jsonl", "--save-every", "100", "--stop-after", "2", "--lr", "1e-3",
            "--kv-pairs", "2", "2"]
    assert T.phase_args(argv) == ["--version", "7", "--steps", "5", "--lr", "1e-3", "--kv-pairs", "2", "2"]


def test_card_records_each_phase_and_a_new_first_phase_starts_over(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "keep me", "metrics": {"x": 1}}))
    run(tmp_path, "7", 3, "--card", str(card), out="p1.pth")
    run(tmp_path, "7", 2, "--card", str(card), "--init-from", str(tmp_path / "p1.pth"), "--lr", "1e-3",
        out="p2.pth")
    c = json.loads(card.read_text())
    assert c["name"] == "keep me" and c["metrics"] == {"x": 1}
    ph = c["training"]["phases"]
    assert len(ph) == 2 and [p["tokens"] for p in ph] == [3 * 2 * 24, 2 * 2 * 24]
    assert c["training"]["total_tokens"] == 5 * 2 * 24
    assert "--out" not in ph[0]["args"] and "--card" not in ph[1]["args"] and "--init-from" not in ph[1]["args"]
    assert [s for s, _, _ in ph[0]["loss_log"]] == [1, 2, 3] and all(math.isfinite(l) for _, l, _ in ph[1]["loss_log"])
    # replaying the recorded phases gives the recorded losses
    again = tmp_path / "again.pth"
    r = T.train(T.parse_args(ph[0]["args"] + ["--out", str(again)]))
    assert [h["loss"] for h in r["history"]] == [l for _, l, _ in ph[0]["loss_log"]]
    r = T.train(T.parse_args(ph[1]["args"] + ["--out", str(tmp_path / "again2.pth"), "--init-from", str(again)]))
    assert [h["loss"] for h in r["history"]] == [l for _, l, _ in ph[1]["loss_log"]]
    # a run without --init-from is a new first phase
    run(tmp_path, "7", 2, "--card", str(card), out="p3.pth")
    assert len(json.loads(card.read_text())["training"]["phases"]) == 1


def test_card_json_is_the_same_json_with_flat_lists_on_one_line():
    rng = np.random.default_rng(0)

    def value(depth):
        kind = rng.integers(0, 7 if depth < 4 else 4)
        if kind == 0:
            return float(rng.normal())
        if kind == 1:
            return int(rng.integers(-5, 5))
        if kind == 2:
            return rng.choice(["a", 'q"uote', "[x]", "{y}", "", "ünï\n"])
        if kind == 3:
            return [None, True][int(rng.integers(0, 2))]
        if kind in (4, 5):
            return [value(depth + 1) for _ in range(rng.integers(0, 4))]
        return {f"k{i}": value(depth + 1) for i in range(rng.integers(0, 4))}

    for _ in range(300):
        obj = {"x": value(0), "y": [value(1) for _ in range(3)]}
        assert json.loads(card_json(obj)) == obj
    text = card_json({"phases": [{"args": ["--lr", "1e-3"], "loss_log": [[250, 1.5, 1.7], [500, 1.2, 1.3]]}]})
    assert '"args": ["--lr", "1e-3"]' in text and "\n    [250, 1.5, 1.7],\n" in text
    for card in ("demo-v6.json", "demo-v7.json"):  # the committed cards are written this way
        path = REPO / "models" / card
        assert path.read_text() == card_json(json.loads(path.read_text())) + "\n"
