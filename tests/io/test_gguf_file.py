"""llama.cpp GGUF files (written by llama.cpp's own convert_hf_to_gguf.py, 4-bit re-quantised by the gguf package)
open through `load_model` with the official numbers: RWKV-7 and RWKV-6, f32 to Q4_0; one line for every bad file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_core.io.checkpoint import load_checkpoint, load_model
from tests.conftest import REPO
from tests.io import format_fixtures as fx
from tests.io.format_checks import assert_matches_official, ours, reference_from, rel_error, tokens_for
from tests.io.test_checkpoint import _expect_error  # one line, naming the file, with the words given

gguf = pytest.importorskip("gguf", reason="the gguf package reads GGUF files")
pytest.importorskip("rwkv7_hf", reason="rwkv7-hf (test-only) writes the RWKV-7 folders llama.cpp converts")

TOKENS = tokens_for(65536)
# largest |quantised - source| / largest |source| of one tensor that the format allows
QUANT_ERROR = {"q8_0": 0.01, "q4_0": 0.15, "q4_1": 0.15, "q5_0": 0.05, "q5_1": 0.05}


def _source(version: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(fx.v7_file("pth") if version == "7" else fx.v6_file("pth")).state_dict


def _file(version: str, kind: str) -> Path:
    return fx.v7_file(f"gguf_{kind}") if version == "7" else fx.v6_file(f"gguf_{kind}")


@pytest.mark.parametrize("version", ["7", "6"])
def test_f32_file_is_the_source_checkpoint(version):
    """llama.cpp's layout undone: every tensor as in the .pth (v6: block 1's output matrices, halved by llama.cpp's
    rescale_every = 1, multiplied back), and the logits of the official package, sequence and RNN mode."""
    path, src = _file(version, "f32"), _source(version)
    got = load_checkpoint(path)
    assert got.source_format == f"GGUF (rwkv{version}, f32)" and got.config.ln_x_eps == pytest.approx(64e-5)
    assert set(got.state_dict) == set(src), set(got.state_dict) ^ set(src)
    for k, t in src.items():
        assert torch.equal(got.state_dict[k].reshape(t.shape), t), k
    assert got.tokenizer[0] == "world"
    assert_matches_official(path, fx.v7_file("pth") if version == "7" else fx.v6_file("pth"), version, TOKENS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_half_files_equal_official_package_on_the_rounded_weights(kind, tmp_path):
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[kind]
    src = _source("7")
    got = load_checkpoint(_file("7", kind))
    assert got.stored_dtype == kind
    rounded = 0
    for k, t in src.items():
        x = got.state_dict[k].float().reshape(t.shape)
        if torch.equal(x, t.to(dtype).float()) and not torch.equal(x, t):
            rounded += 1
        else:
            assert torch.equal(x, t), f"{k} is neither the source nor the source rounded to {kind}"
    assert rounded >= 10  # every matrix
    reference = reference_from(got.state_dict, tmp_path / "rounded.pth")
    assert_matches_official(_file("7", kind), reference, "7", TOKENS)


SLOW = pytest.mark.slow  # the default run keeps q8_0 and q4_0 of RWKV-7; `-m slow` the rest


@pytest.mark.parametrize("version,kind", [("7", "q8_0"), ("7", "q4_0"), pytest.param("7", "q4_1", marks=SLOW),
                                          pytest.param("7", "q5_0", marks=SLOW), pytest.param("7", "q5_1", marks=SLOW),
                                          pytest.param("6", "q8_0", marks=SLOW)])
def test_quantised_files_equal_official_package_on_the_dequantised_weights(version, kind, tmp_path):
    """Each tensor within the format's rounding of the source (so the mapping is right for quantised tensors
    too); logits equal the package's on the weights the gguf package dequantises, and differ from the f32 file's."""
    src = _source(version)
    got = load_checkpoint(_file(version, kind))
    assert got.stored_dtype == kind
    quantised = 0
    for k, t in src.items():
        x = got.state_dict[k].float().reshape(t.shape)
        err = float((x - t).abs().max() / t.abs().max())
        assert err <= QUANT_ERROR[kind], f"{k}: {err:.3g}"
        quantised += err > 0
    assert quantised >= 8
    reference = reference_from(got.state_dict, tmp_path / "dequantised.pth")
    logits = assert_matches_official(_file(version, kind), reference, version, TOKENS)
    assert rel_error(logits, ours(_file(version, "f32"), TOKENS)["seq"]) > 1e-4


@pytest.mark.slow
def test_k_quant_file(tmp_path):
    """A Q6_K matrix (random blocks: the gguf package has no K-quant quantiser) reads as the gguf package's own
    dequantisation of the file's bytes, in the official layout, and the model runs as the package does on it."""
    from gguf.quants import dequantize

    path = _file("7", "q6_k")
    got = load_checkpoint(path)
    assert got.stored_dtype == "q6_k"
    reader = gguf.GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == "blk.1.channel_mix_value.weight")
    assert t.tensor_type.name == "Q6_K"
    assert torch.equal(got.state_dict["blocks.1.ffn.value.weight"], torch.from_numpy(dequantize(t.data, t.tensor_type)))
    assert_matches_official(path, reference_from(got.state_dict, tmp_path / "dequantised.pth"), "7", TOKENS)


def test_text_uses_the_files_world_vocabulary(tmp_path):
    """export --text on a GGUF tokenizes with the vocabulary stored in the file: the rwkv package's trie tokenizer's
    ids."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    from rwkv_core.io.tokenizer import default_world_vocab_path

    text = "The Eiffel Tower is located in the city of Paris.\n\tÉté 北京 ✓"
    want = TRIE_TOKENIZER(str(default_world_vocab_path())).encode(text)
    out = tmp_path / "t.npz"
    r = subprocess.run([sys.executable, "-m", "rwkv_core", "export", str(_file("7", "q8_0")), "--text", text, "--out",
                        str(out), "--layers", "0", "--logits-topk", "4"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with np.load(out) as z:
        assert z["tokens"].tolist() == want
        assert json.loads(str(z["meta"]))["tokenizer"] == "world"


def test_a_changed_vocabulary_is_the_files_own(tmp_path):
    """A token list that differs from the shipped World vocabulary is written out and used as it is."""
    from rwkv_core.io.gguf_file import gguf_tokenizer
    from rwkv_core.io.tokenizer import tokenizer_for

    class Reader:  # the fields gguf_tokenizer reads, as GGUFReader gives them
        def __init__(self, fields):
            self.fields = fields

    class Field:
        def __init__(self, value):
            self.value = value

        def contents(self):
            return self.value

    tokens = ["<s>"] + [repr(bytes([b]))[2:-1] for b in range(256)] + ["hello", "hel", "\\xe2\\x9c"]
    reader = Reader({"tokenizer.ggml.model": Field("rwkv"), "tokenizer.ggml.tokens": Field(tokens),
                     "tokenizer.ggml.token_type": Field([3] + [1] * (len(tokens) - 1))})
    kind, file = gguf_tokenizer(reader, tmp_path / "x.gguf")
    tok = tokenizer_for(65536, kind=kind, path=file)
    assert tok.encode("hello hel").ids == [257, ord(" ") + 1, 258]
    assert tok.token_bytes(259) == b"\xe2\x9c"


# ------------------------------------------------------------------------------------------------ bad files


def _write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_wkv_head_size(64)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_other_architecture_is_refused(tmp_path):
    p = _write_gguf(tmp_path / "llama.gguf", "llama", {"token_embd.weight": np.zeros((8, 4), np.float32)})
    _expect_error(p, "GGUF architecture 'llama' is not supported", "rwkv6, rwkv7")


def test_unsupported_tensor_type_is_refused(tmp_path):
    p = _write_gguf(tmp_path / "ints.gguf", "rwkv7", {"token_embd.weight": np.zeros((8, 4), np.int32)})
    _expect_error(p, "token_embd.weight", "I32", "cannot dequantise")


def test_truncated_file_is_refused(tmp_path):
    p = tmp_path / "cut.gguf"
    data = _file("7", "q8_0").read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect_error(p, "truncated or corrupt GGUF")


def test_header_only_file_is_refused(tmp_path):
    p = tmp_path / "head.gguf"
    p.write_bytes(_file("7", "f32").read_bytes()[:100])
    _expect_error(p, "truncated or corrupt GGUF")


def test_missing_tensor_is_named(tmp_path):
    """A file without one of the tensors the architecture needs: the key check names it."""
    src = _file("7", "f32")
    reader = gguf.GGUFReader(src)
    keep = {t.name: np.array(t.data) for t in reader.tensors if t.name != "blk.1.time_mix_k_k.weight"}
    p = _write_gguf(tmp_path / "partial.gguf", "rwkv7", keep)
    _expect_error(p, "missing keys", "blocks.1.att.k_k")


@pytest.mark.slow
def test_every_command_takes_a_folder_and_a_gguf_file(tmp_path):
    """info, decay and trace (export: see the tokenizer tests) on a Hugging Face folder and a GGUF file."""
    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "rwkv_core", *args], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    for path, fmt in ((fx.v7_file("hf"), "Hugging Face folder (RWKV7ForCausalLM"), (_file("7", "q8_0"), "GGUF")):
        info = json.loads(cli("info", str(path)))
        assert info["format"].startswith(fmt) and info["version"] == "7" and info["tokenizer"] == "world"
        rows = cli("decay", str(path)).strip().splitlines()
        assert len(rows) == 1 + 2 * 128  # header + layers x channels
    out = tmp_path / "grid.npz"
    cli("trace", str(_file("7", "q8_0")), "--prompt", "The Eiffel Tower is in the city of", "--subject",
        "The Eiffel Tower", "--answer", " Paris", "--samples", "2", "--out", str(out))
    with np.load(out) as z:
        assert z["grid"].shape[1] == 2


@pytest.mark.parametrize("version", ["7", "6"])
def test_dequantised_straight_into_the_model_dtype(version):
    """load_model(path, dtype=bf16) dequantises the matrices it keeps in bf16 one at a time (never all of the float32
    weights at once): the same model as converting a float32 read afterwards, its vectors still float32."""
    path = _file(version, "q8_0")
    direct = load_checkpoint(path, dtype=torch.bfloat16)
    assert {t.dtype for t in direct.state_dict.values()} == {torch.bfloat16, torch.float32}
    assert direct.state_dict["emb.weight"].dtype == torch.bfloat16
    a = load_model(path, dtype=torch.bfloat16).state_dict()
    b = load_model(load_checkpoint(path), dtype=torch.bfloat16).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
