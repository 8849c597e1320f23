"""The command line and the trace file format: what `export` writes equals what the model computes."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from rwkv_core.io.checkpoint import load_model
from rwkv_core.analysis.scores import capture_score_inputs, full_scores_all
from rwkv_core.io.synthetic import write_random_checkpoint
from rwkv_core.io.trace_file import TraceFileError, load_trace
from tests.conftest import REPO, shared_file




def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rwkv_core", *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_info_prints_the_architecture():
    out = cli("info", shared_file("tiny-rwkv-6v0-3m-Q5_1.bin"))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert {k: info[k] for k in ("version", "n_layer", "n_embd", "n_head", "head_size", "dim_ffn", "vocab_size")} == \
        {"version": "6", "n_layer": 12, "n_embd": 128, "n_head": 16, "head_size": 8, "dim_ffn": 448, "vocab_size": 256}
    assert info["n_params"] == 3_334_656 and info["dtype"] == "Q5_1"


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_export_writes_what_the_model_computes(tmp_path, version):
    ckpt = tmp_path / "m.pth"
    write_random_checkpoint(ckpt, version, n_layer=3, n_embd=64, head_size=16, seed=2)
    out = cli("export", ckpt, "--text", "Hello, trace!", "--layers", "0,2", "--scores", "--out", tmp_path / "t.npz")
    assert out.returncode == 0, out.stderr
    tr = load_trace(tmp_path / "t.npz")
    tokens = list("Hello, trace!".encode())
    assert tr.tokens.tolist() == tokens and tr.layers == [0, 2]
    model = load_model(ckpt)
    logits, _, cache = model.run_with_cache(tokens)
    np.testing.assert_allclose(tr.arrays["logits"], logits[0].numpy(), rtol=1e-5, atol=1e-5)
    for l in (0, 2):
        np.testing.assert_allclose(tr.layer("resid", l), cache[f"blocks.{l}.hook_resid_post"][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(tr.layer("w", l), cache[f"blocks.{l}.att.hook_w"][0].numpy(), rtol=1e-6)
        for name in ("r", "k", "v"):
            assert tr.layer(name, l).shape == (len(tokens), 64)
        si = capture_score_inputs(model, tokens, layers=[l])[0]
        np.testing.assert_allclose(tr.layer("attn", l), full_scores_all(si).numpy(), rtol=1e-4, atol=1e-5)
        assert tr.layer("span", l).shape == (4, len(tokens), len(tokens))
        assert np.all(np.triu(tr.layer("attn", l)[0], 1) == 0)
    if version == "7":
        assert "a_l0" in tr.arrays and "kk_l2" in tr.arrays and "r_k_l0" in tr.arrays
    assert "layer 1" not in tr.meta and "r_l1" not in tr.arrays
    assert tr.meta["config"]["version"] == version and tr.meta["token_texts"][0] == "H"


def test_export_with_token_ids_and_bad_options(tmp_path):
    ckpt = shared_file("tiny-rwkv-4v0-660K-FP32.bin")
    ok = cli("export", ckpt, "--tokens", "34,105,110", "--out", tmp_path / "t.npz")
    assert ok.returncode == 0, ok.stderr
    expected = np.fromfile(shared_file("expected-logits-4v0-660K.bin"), dtype="<f4")
    assert np.abs(load_trace(tmp_path / "t.npz").arrays["logits"][-1] - expected).max() < 1e-4
    bad = cli("export", ckpt, "--tokens", "1,x", "--out", tmp_path / "u.npz")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--tokens" in bad.stderr
    bad = cli("export", ckpt, "--tokens", "1,2", "--layers", "9", "--out", tmp_path / "u.npz")
    assert bad.returncode == 2 and "layer 9" in bad.stderr


def test_decay_csv(tmp_path):
    out = cli("decay", shared_file("tiny-rwkv-6v0-1m-FP32.bin"), "--out", tmp_path / "d.csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    assert len(rows) == 12 * 64 and set(rows[0]) >= {"layer", "head", "channel", "decay", "half_life"}
    d = np.array([float(r["decay"]) for r in rows])
    assert np.all((d > 0) & (d < 1))


def test_hostile_trace_files_are_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", tokens=np.array([1, 2]), meta=np.array([{"x": 1}], dtype=object))
    with pytest.raises(TraceFileError):
        load_trace(tmp_path / "obj.npz")
    np.savez(tmp_path / "shape.npz", tokens=np.array([1, 2, 3]), meta=np.array(json.dumps({"config": {"version": "6"}})),
             r_l0=np.zeros((2, 8), np.float32))
    with pytest.raises(TraceFileError, match="r_l0"):
        load_trace(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TraceFileError, match="junk.npz"):
        load_trace(tmp_path / "junk.npz")
