"""Checkpoint formats and every kind of bad input: a one-line CheckpointError naming the file, nothing loaded."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwkv_core.io.checkpoint import load_checkpoint, load_model
from rwkv_core.errors import CheckpointError
from rwkv_core.io.synthetic import random_state_dict, save_checkpoint
from tests.conftest import REPO, shared_file




@pytest.fixture(scope="module")
def good_sd():
    return random_state_dict("6", n_layer=2, n_embd=64, head_size=16, seed=0)


def _expect_error(path, *words):
    with pytest.raises(CheckpointError) as ei:
        load_model(path)
    msg = str(ei.value)
    assert "\n" not in msg and Path(path).name in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize("version", ["4", "5.1", "5.2", "6", "7"])
def test_detects_architecture_from_tensors(tmp_path, version):
    sd = random_state_dict(version, n_layer=3, n_embd=64, head_size=16, vocab_size=300, seed=1)
    save_checkpoint(sd, tmp_path / "m.pth")
    info = load_checkpoint(tmp_path / "m.pth").info()
    assert info["version"] == version and info["n_layer"] == 3 and info["n_embd"] == 64 and info["vocab_size"] == 300
    if version != "4":
        assert info["n_head"] == 4 and info["head_size"] == 16
    assert info["dim_ffn"] == sd["blocks.0.ffn.key.weight"].shape[0]
    assert info["n_params"] == sum(t.numel() for t in sd.values() if not t.dim() == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(tmp_path, good_sd, dtype):
    save_checkpoint({k: v.to(dtype) for k, v in good_sd.items()}, tmp_path / "h.pth")
    ck = load_checkpoint(tmp_path / "h.pth")
    assert ck.stored_dtype == str(dtype).split(".")[-1]


def test_safetensors_equals_pth(tmp_path, good_sd):
    from safetensors.torch import save_file

    save_checkpoint(good_sd, tmp_path / "m.pth")
    save_file({k: v.contiguous() for k, v in good_sd.items()}, str(tmp_path / "m.safetensors"))
    toks = list(range(20))
    with torch.no_grad():
        a, _ = load_model(tmp_path / "m.pth")(toks)
        b, _ = load_model(tmp_path / "m.safetensors")(toks)
    assert torch.equal(a, b)


def test_v7_layer0_value_lora_is_optional(tmp_path):
    sd = random_state_dict("7", n_layer=2, n_embd=64, head_size=16, include_v7_layer0_v=True)
    save_checkpoint(sd, tmp_path / "with.pth")
    save_checkpoint({k: v for k, v in sd.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")},
                    tmp_path / "without.pth")
    with torch.no_grad():
        a, _ = load_model(tmp_path / "with.pth")([1, 2, 3])
        b, _ = load_model(tmp_path / "without.pth")([1, 2, 3])
    assert torch.equal(a, b)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not a model\n" * 10)
    _expect_error(p, "not a checkpoint")


def test_missing_file_and_directory(tmp_path):
    _expect_error(tmp_path / "nope.pth", "not found")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_model(tmp_path)


def test_truncated_pth(tmp_path, good_sd):
    save_checkpoint(good_sd, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "cut.pth", "truncated or corrupt")


def test_truncated_rwkvcpp_bin(tmp_path):
    data = shared_file("tiny-rwkv-5v2-730K-FP32.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError) as ei:
        load_model(tmp_path / "cut.bin")
    assert "cut.bin" in str(ei.value)


def test_missing_keys(tmp_path, good_sd):
    save_checkpoint({k: v for k, v in good_sd.items() if k != "blocks.1.att.gate.weight"}, tmp_path / "m.pth")
    _expect_error(tmp_path / "m.pth", "missing keys", "blocks.1.att.gate.weight")


def test_unexpected_keys(tmp_path, good_sd):
    save_checkpoint({**good_sd, "blocks.0.att.mystery": torch.zeros(3)}, tmp_path / "m.pth")
    _expect_error(tmp_path / "m.pth", "unexpected keys", "blocks.0.att.mystery")


def test_wrong_shape(tmp_path, good_sd):
    bad = dict(good_sd)
    bad["blocks.1.att.key.weight"] = torch.zeros(64, 32)
    save_checkpoint(bad, tmp_path / "m.pth")
    _expect_error(tmp_path / "m.pth", "wrong shape", "blocks.1.att.key.weight")


def test_unknown_version(tmp_path, good_sd):
    bad = {k: v for k, v in good_sd.items() if not k.startswith("blocks.") or ".att.time_" not in k}
    save_checkpoint(bad, tmp_path / "m.pth")
    _expect_error(tmp_path / "m.pth", "unknown RWKV version")


def test_non_finite_weights(tmp_path, good_sd):
    bad = dict(good_sd)
    bad["blocks.0.ffn.value.weight"] = good_sd["blocks.0.ffn.value.weight"].clone()
    bad["blocks.0.ffn.value.weight"][0, 0] = float("nan")
    save_checkpoint(bad, tmp_path / "m.pth")
    _expect_error(tmp_path / "m.pth", "NaN")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, good_sd):
    _Evil.marker = str(tmp_path / "pwned")
    torch.save({**good_sd, "evil": _Evil()}, tmp_path / "evil.pth")
    _expect_error(tmp_path / "evil.pth", "refused", "run code")
    assert not (tmp_path / "pwned").exists()


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"PK\x03\x04" + os.urandom(500))
    out = subprocess.run([sys.executable, "-m", "rwkv_core", "info", str(p)], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "junk.pth" in out.stderr and "Traceback" not in out.stderr
