"""Hugging Face folders written by other people's tools open through `load_model` with the official numbers:
RWKV-7 (flash-linear-attention layout, by rwkv7-hf's converter), RWKV-4 (transformers' RwkvForCausalLM),
RWKV-5/6 (the Hub's remote-code layouts); their own tokenizer; one line for every bad folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_core.io.checkpoint import load_checkpoint, load_model
from tests.io import format_fixtures as fx
from tests.io.format_checks import assert_matches_official, ours, reference_from, rel_error, tokens_for
from tests.conftest import REPO
from tests.io.test_checkpoint import _expect_error  # one line, naming the file, with the words given

pytest.importorskip("rwkv7_hf", reason="rwkv7-hf (test-only) writes the RWKV-7 folders")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------ RWKV-7


def test_rwkv7_fla_folder_is_the_source_checkpoint():
    src, folder = load_checkpoint(fx.v7_file("pth")), load_checkpoint(fx.v7_file("hf"))
    assert folder.config == src.config  # ln_x eps = head_dim x norm_eps = 64 x 1e-5, as the official 64e-5
    assert set(folder.state_dict) == set(src.state_dict)
    for k, t in src.state_dict.items():
        assert torch.equal(folder.state_dict[k].reshape(t.shape), t), k
    assert folder.tokenizer[0] == "world" and folder.tokenizer[1].endswith("rwkv_vocab_v20230424.txt")
    assert "RWKV7ForCausalLM" in folder.source_format


def test_rwkv7_fla_folder_logits_equal_official_package():
    tokens = tokens_for(65536)
    assert_matches_official(fx.v7_file("hf"), fx.v7_file("pth"), "7", tokens)


def test_rwkv7_bf16_shards_equal_official_package_on_the_rounded_weights(tmp_path):
    """Every tensor is the source rounded to the dtype rwkv7-hf stored it in (found through rwkv7-hf's own name
    map, read with safetensors' own loader); logits equal the package on those rounded weights."""
    from rwkv7_hf.converter import translate_name
    from safetensors import safe_open

    folder = fx.v7_file("hf_bf16")
    assert len(list(folder.glob("*.safetensors"))) >= 3 and (folder / "model.safetensors.index.json").is_file()
    stored = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            stored.update({k: st.get_slice(k).get_dtype() for k in st.keys()})
    src = load_checkpoint(fx.v7_file("pth")).state_dict
    rounded = {}
    for k, t in src.items():
        hf_name, _ = translate_name(k, 2)
        dtype = {"BF16": torch.bfloat16, "F32": torch.float32}[stored[hf_name]]
        rounded[k] = t.to(dtype).float()
    got = load_checkpoint(folder)
    assert got.stored_dtype == "bfloat16" and "3 shards" in got.source_format
    for k, t in rounded.items():
        assert torch.equal(got.state_dict[k].float().reshape(t.shape), t), k
    assert_matches_official(folder, reference_from(rounded, tmp_path / "rounded.pth"), "7", tokens_for(65536))


def test_rwkv7_folder_equals_rwkv7_hf_reference_model():
    """The second oracle: rwkv7-hf's pure-PyTorch model (its class imported from the package, no remote code)."""
    from rwkv7_hf.modeling_rwkv7 import RWKV7ForCausalLM

    folder = fx.v7_file("hf")
    ref = RWKV7ForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokens = tokens_for(65536)
    with torch.no_grad():
        want = ref(torch.tensor([tokens])).logits[0].float().numpy()
    got = ours(folder, tokens)
    assert rel_error(got["seq"], want) < 1e-5


def test_pytorch_model_bin_folder(tmp_path):
    """The same folder with pytorch_model.bin (read with weights_only) instead of safetensors."""
    from safetensors.torch import load_file

    folder = _copy(fx.v7_file("hf"), tmp_path / "bin-folder")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    src = load_checkpoint(fx.v7_file("pth")).state_dict
    got = load_checkpoint(folder)
    assert "pytorch_model.bin" in got.source_format
    assert all(torch.equal(got.state_dict[k].reshape(t.shape), t) for k, t in src.items())


def test_safetensors_are_memory_mapped():
    """No copy of the weights in memory: the tensors are views of the file's pages."""
    folder = fx.v7_file("hf_bf16")
    sd = load_checkpoint(folder).state_dict
    emb = sd["emb.weight"]
    assert not emb.untyped_storage().resizable()  # a numpy memory map's buffer, not an allocation of torch's


# ------------------------------------------------------------------------------------------------ RWKV-4, 5, 6


def test_rwkv4_transformers_folder_equals_official_package_and_transformers():
    from transformers import RwkvForCausalLM

    files = fx.v4_files()
    tokens = tokens_for(fx.V4_SHAPE["vocab_size"])
    got = assert_matches_official(files["hf"], files["pth"], "4", tokens)
    ref = RwkvForCausalLM.from_pretrained(str(files["hf"]), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([tokens])).logits[0].numpy()
    assert rel_error(got, want) < 1e-5


@pytest.mark.parametrize("version", [pytest.param("5.2", marks=pytest.mark.slow), "6"])
def test_hub_rwkv5_rwkv6_folders_equal_official_package(version):
    files = fx.v5_files() if version == "5.2" else {"hf": fx.v6_file("hf"), "pth": fx.v6_file("pth")}
    ckpt = load_checkpoint(files["hf"])
    assert ckpt.config.version == version and ckpt.config.ln_x_eps == pytest.approx(64e-5)
    vocab = ckpt.config.vocab_size
    assert_matches_official(files["hf"], files["pth"], version, tokens_for(vocab))


# ------------------------------------------------------------------------------------------------ tokenizer


def _tiny_tokenizer_json(path: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["The Eiffel Tower is located in the city of Paris."] * 50, trainer)
    tok.save(str(path))
    return path


def test_text_uses_the_folders_own_tokenizer(tmp_path):
    """export --text on a folder with a tokenizer.json tokenizes with it (checked against `tokenizers` itself);
    on a folder with the World vocabulary, with that (checked against the rwkv package's trie tokenizer)."""
    from tokenizers import Tokenizer

    text = "The Eiffel Tower is located in the city of Paris"
    v4 = _copy(fx.v4_files()["hf"], tmp_path / "v4")
    _tiny_tokenizer_json(v4 / "tokenizer.json", fx.V4_SHAPE["vocab_size"])
    for folder, kind, want in ((v4, "hf", Tokenizer.from_file(str(v4 / "tokenizer.json")).encode(text).ids),
                               (fx.v7_file("hf"), "world", None)):
        if want is None:
            from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

            want = TRIE_TOKENIZER(str(folder / "rwkv_vocab_v20230424.txt")).encode(text)
        out = tmp_path / f"{folder.name}.npz"
        r = subprocess.run([sys.executable, "-m", "rwkv_core", "export", str(folder), "--text", text, "--out",
                            str(out), "--layers", "0", "--logits-topk", "4"], capture_output=True, text=True,
                           cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr
        with np.load(out) as z:
            assert z["tokens"].tolist() == list(want), folder.name
            meta = json.loads(str(z["meta"]))
        assert meta["tokenizer"] == kind


# ------------------------------------------------------------------------------------------------ bad folders


def test_other_architecture_is_refused(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    from safetensors.torch import save_file
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    _expect_error(folder, "LlamaForCausalLM", "not an RWKV model")


def test_missing_shard_is_refused(tmp_path):
    folder = _copy(fx.v7_file("hf_bf16"), tmp_path / "sharded")
    shard = sorted(folder.glob("*-of-*.safetensors"))[1]
    shard.unlink()
    _expect_error(folder, "missing shard", shard.name)


def test_config_disagreeing_with_tensors_is_refused(tmp_path):
    folder = _copy(fx.v7_file("hf"), tmp_path / "mixed-up")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 256
    (folder / "config.json").write_text(json.dumps(cfg))
    _expect_error(folder, "config.json says hidden_size = 256", "128")


def test_truncated_safetensors_is_refused(tmp_path):
    folder = _copy(fx.v7_file("hf"), tmp_path / "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect_error(folder, "model.safetensors", "truncated")


def test_folder_code_is_never_run(tmp_path):
    """The folder's remote code (auto_map) is not imported: a modeling file that would leave a mark leaves none."""
    folder = _copy(fx.v7_file("hf"), tmp_path / "with-code")
    mark = tmp_path / "ran"
    for name in ("modeling_rwkv7.py", "configuration_rwkv7.py", "tokenization_rwkv7.py"):
        (folder / name).write_text(f"open({str(mark)!r}, 'w').write('ran')\n")
    load_model(folder)
    assert not mark.exists()


def test_pickle_in_pytorch_model_bin_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("would run",))

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["RWKV7ForCausalLM"]}))
    torch.save({"model.embeddings.weight": Evil()}, folder / "pytorch_model.bin")
    _expect_error(folder, "pytorch_model.bin", "would run code")


def test_deep_embed_release_is_refused(tmp_path):
    """BlinkDL's DeepEmbed RWKV-7 (per-layer token embeddings in the FFN, `ffn.s_emb`; the rwkv package runs it
    under RWKV_DE_VERSION=1) is named as such, not reported as unexpected keys."""
    from rwkv_core.io.synthetic import random_state_dict, save_checkpoint

    sd = random_state_dict("7", n_layer=2, n_embd=64, head_size=16)
    for l in range(2):
        sd[f"blocks.{l}.ffn.s_emb.weight"] = torch.zeros(256, 1024)
        sd[f"blocks.{l}.ffn.s1"], sd[f"blocks.{l}.ffn.s2"] = torch.zeros(64, 32), torch.zeros(32, 256)
        sd[f"blocks.{l}.ffn.s0"] = torch.zeros(256)
    save_checkpoint(sd, tmp_path / "de.pth")
    _expect_error(tmp_path / "de.pth", "DeepEmbed", "not supported")


def test_take_converts_the_checkpoints_tensors_in_place():
    """load_model(ckpt, take=True) (the app's pool, the commands) moves each tensor to its model dtype in the
    Checkpoint itself, freeing the old one; without take the Checkpoint is left as it was."""
    ckpt = load_checkpoint(fx.v7_file("hf_bf16"))
    before = {k: t.dtype for k, t in ckpt.state_dict.items()}
    load_model(ckpt, dtype=torch.float32)
    assert {k: t.dtype for k, t in ckpt.state_dict.items()} == before
    model = load_model(ckpt, dtype=torch.float32, take=True)
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
