"""Test files in other people's formats, written by their own tools (so the project does not check itself).

- RWKV-7 Hugging Face folders (flash-linear-attention layout): `rwkv7-hf`'s converter on a synthetic `.pth`.
- RWKV-4 folder: transformers' RwkvForCausalLM, filled after the renames of transformers'
  `convert_rwkv_checkpoint_to_hf.py`, written by `save_pretrained`.
- RWKV-5/RWKV-6 folders in the Hub's remote-code layouts (RWKV/v5-Eagle-*-HF, RWKV/v6-Finch-*-HF): no package
  writes them, so the renames of the Hub's conversion scripts are applied here (llama.cpp's converter checks every
  RWKV-6 name it reads).
- GGUF: llama.cpp's `convert_hf_to_gguf.py` (from the llama-cpp-python source archive, with its own `gguf-py`)
  writes f32/f16/bf16/q8_0 from those folders; 4-bit files are the f32 file's matrices re-quantised by the `gguf`
  package's quantiser (`llama-quantize` would need a compiled llama.cpp).
Files are built once and cached under `~/.cache/rwkv_inspector_tests` (or `$RWKV_INSPECTOR_TEST_CACHE`), keyed by
`BUILD` (raise it when a builder here changes) and the writers' versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_core.io.synthetic import random_state_dict, save_checkpoint
from rwkv_core.io.tokenizer import default_world_vocab_path

BUILD = 1  # the builders' own version: part of the cache key
LLAMA_CPP_PYTHON = "0.3.36"  # the source archive whose vendor/llama.cpp holds convert_hf_to_gguf.py
V7_SHAPE = dict(n_layer=2, n_embd=128, head_size=64, vocab_size=65536)  # llama.cpp's World vocab needs 65530+ rows
V6_SHAPE = dict(n_layer=2, n_embd=128, head_size=64, vocab_size=65536)
V4_SHAPE = dict(n_layer=2, n_embd=64, vocab_size=300)
V5_SHAPE = dict(n_layer=2, n_embd=128, head_size=64, vocab_size=300)


def cache_root() -> Path:
    root = os.environ.get("RWKV_INSPECTOR_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "rwkv_inspector_tests"


def _versions() -> str:
    out = []
    for dist in ("rwkv7-hf", "transformers", "gguf", "torch"):
        try:
            out.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist}=none")
    return ",".join(out)


def build_dir(name: str) -> Path:
    """A cache folder for one set of files, keyed by `BUILD` and the writers' versions."""
    key = hashlib.blake2b(f"{BUILD},{_versions()},{LLAMA_CPP_PYTHON}".encode(), digest_size=6).hexdigest()
    d = cache_root() / f"{name}-{key}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _once(target: Path, make) -> Path:
    """Build `target` with make(tmp) into a temporary sibling, then rename: a killed run leaves no half file."""
    if target.exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    make(tmp)
    tmp.rename(target)
    return target


# ------------------------------------------------------------------------------------------------ llama.cpp


def llama_cpp_dir() -> Path:
    """llama.cpp's Python converter and gguf-py: `$RWKV_LLAMA_CPP_DIR`, else extracted from the llama-cpp-python
    source archive (downloaded once with pip; nothing is compiled). Skips the test where neither is possible."""
    env = os.environ.get("RWKV_LLAMA_CPP_DIR")
    if env:
        return Path(env)
    target = cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target

    def fetch(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as dl:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                                "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", dl],
                               capture_output=True, text=True, timeout=600)
            archives = list(Path(dl).glob("llama_cpp_python-*.tar.gz"))
            if r.returncode != 0 or not archives:
                pytest.skip(f"llama-cpp-python {LLAMA_CPP_PYTHON} source archive not available: {r.stderr[-300:]}")
            prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
            keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
            with tarfile.open(archives[0]) as tar:
                for m in tar.getmembers():
                    rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                    if rel and rel.startswith(keep) and (m.isfile() or m.isdir()):
                        m.name = rel
                        tar.extract(m, tmp, filter="data")
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            pytest.skip("the llama-cpp-python source archive has no vendor/llama.cpp/convert_hf_to_gguf.py")

    return _once(target, fetch)


def convert_hf_to_gguf(folder: Path, out: Path, outtype: str) -> Path:
    """llama.cpp's own converter, run with its own gguf-py."""
    def make(tmp: Path) -> None:
        llama = llama_cpp_dir()
        env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"))
        r = subprocess.run([sys.executable, str(llama / "convert_hf_to_gguf.py"), str(folder), "--outtype",
                            outtype, "--outfile", str(tmp)], capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed on {folder}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return _once(out, make)


def _random_q6_k(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Q6_K blocks of random quants and scales with a small f16 scale d: the gguf package has a K-quant dequantiser
    but no K-quant quantiser, so the values of a K-quant matrix are whatever llama.cpp's format makes of them."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q6_K]
    raw = np.random.default_rng(seed).integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    raw[..., -2:] = np.array([1e-5], np.float16).view(np.uint8)  # d, the block's f16 scale
    return raw.reshape(shape[0], -1)


def requantize(src: Path, out: Path, qtype_name: str) -> Path:
    """`src` (an f32 GGUF) with every 2-D matrix whose rows fit the block size quantised to `qtype_name` by the gguf
    package's quantiser (Q6_K: random blocks, see `_random_q6_k`); metadata and the other tensors copied as they
    are."""
    import gguf
    from gguf.quants import quantize

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        quantize = lambda data, _: _random_q6_k(data.shape, data.shape[0])  # noqa: E731

    def make(tmp: Path) -> None:
        reader = gguf.GGUFReader(src)
        arch = reader.fields["general.architecture"].contents()
        writer = gguf.GGUFWriter(tmp, arch)
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, f.contents(), vtype, sub_type=sub)
        for t in reader.tensors:
            data = np.array(t.data)
            if t.tensor_type == gguf.GGMLQuantizationType.F32 and data.ndim == 2 and data.shape[1] % block == 0:
                writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
            else:
                writer.add_tensor(t.name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return _once(out, make)


# ------------------------------------------------------------------------------------------------ RWKV-7


def v7_file(name: str) -> Path:
    """One file made from the synthetic RWKV-7 .pth ("pth"), built on first use with what it needs: "hf" (fp32
    folder), "hf_bf16" (bf16 folder in several shards), "gguf_f32", "gguf_f16", "gguf_bf16", "gguf_q8_0"
    (llama.cpp's converter on "hf"), "gguf_q4_0", "gguf_q4_1", "gguf_q5_0", "gguf_q5_1", "gguf_q6_k" (re-quantised
    "gguf_f32")."""
    d = build_dir("v7")
    if name == "pth":
        return _once(d / "source.pth", lambda p: save_checkpoint(random_state_dict("7", seed=7, **V7_SHAPE), p))
    if name in ("hf", "hf_bf16"):
        precision, shard = ("fp32", "1000GB") if name == "hf" else ("bf16", "8MB")

        def make(tmp: Path) -> None:
            from rwkv7_hf.converter import main

            main(["--input", str(v7_file("pth")), "--output", str(tmp), "--precision", precision,
                  "--vocab-file", str(default_world_vocab_path()), "--max-shard-size", shard])
        return _once(d / name, make)
    kind = name.removeprefix("gguf_")
    if kind in ("f32", "f16", "bf16", "q8_0"):
        return convert_hf_to_gguf(v7_file("hf"), d / f"model-{kind}.gguf", kind)
    return requantize(v7_file("gguf_f32"), d / f"model-{kind}.gguf", kind.upper())


# ------------------------------------------------------------------------------------------------ RWKV-4, 5, 6


def _hub_rwkv_names(sd: dict[str, torch.Tensor], long_mix: bool) -> dict[str, torch.Tensor]:
    """Official -> transformers / Hub names, as transformers' convert_rwkv_checkpoint_to_hf.py renames them
    (emb -> embeddings, ln0 -> pre_ln, att -> attention, ffn -> feed_forward, time_mix_k -> time_mix_key, ...,
    `rwkv.` before everything but the head)."""
    out = {}
    for name, t in sd.items():
        if name.startswith("emb."):
            name = name.replace("emb.", "embeddings.")
        if name.startswith("blocks.0.ln0"):
            name = name.replace("blocks.0.ln0", "blocks.0.pre_ln")
        name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        if long_mix:
            for short, long in (("k", "key"), ("v", "value"), ("r", "receptance"), ("g", "gate")):
                if name.endswith(f".time_mix_{short}"):
                    name = name[: -len(short)] + long
        if name != "head.weight":
            name = "rwkv." + name
        out[name] = t.clone().contiguous()
    return out


def v4_files() -> dict[str, Path]:
    """RWKV-4: the .pth and the folder transformers' RwkvForCausalLM writes with save_pretrained."""
    d = build_dir("v4")
    sd = random_state_dict("4", seed=4, **V4_SHAPE)
    files = {"pth": _once(d / "source.pth", lambda p: save_checkpoint(sd, p))}

    def make(tmp: Path) -> None:
        from transformers import RwkvConfig, RwkvForCausalLM

        C = V4_SHAPE["n_embd"]
        cfg = RwkvConfig(vocab_size=V4_SHAPE["vocab_size"], hidden_size=C, num_hidden_layers=V4_SHAPE["n_layer"],
                         attention_hidden_size=C, intermediate_size=4 * C, context_length=1024)
        model = RwkvForCausalLM(cfg)
        hf = _hub_rwkv_names(sd, long_mix=True)
        missing, unexpected = model.load_state_dict(hf, strict=False)
        if unexpected or missing:
            raise RuntimeError(f"transformers' RWKV-4 rejects the renames: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(tmp)  # before any forward: inference rescales the weights in place
    files["hf"] = _once(d / "hf", make)
    return files


def _hub_folder(tmp: Path, sd: dict[str, torch.Tensor], config: dict, long_mix: bool, vocab: bool) -> None:
    from safetensors.torch import save_file

    tmp.mkdir(parents=True)
    save_file(_hub_rwkv_names(sd, long_mix), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if vocab:
        shutil.copyfile(default_world_vocab_path(), tmp / "rwkv_vocab_v20230424.txt")


def v6_file(name: str) -> Path:
    """RWKV-6: "pth", "hf" (the Hub's Rwkv6ForCausalLM layout) and llama.cpp's "gguf_f32" / "gguf_q8_0" of it
    (rescale_every 1, so llama.cpp halves block 1's output matrices)."""
    d = build_dir("v6")
    sd = random_state_dict("6", seed=6, **V6_SHAPE)
    if name == "pth":
        return _once(d / "source.pth", lambda p: save_checkpoint(sd, p))
    if name == "hf":
        C, L = V6_SHAPE["n_embd"], V6_SHAPE["n_layer"]
        config = {"architectures": ["Rwkv6ForCausalLM"], "model_type": "rwkv6", "vocab_size": V6_SHAPE["vocab_size"],
                  "hidden_size": C, "num_hidden_layers": L, "attention_hidden_size": C, "head_size": 64,
                  "head_size_divisor": 8, "intermediate_size": sd["blocks.0.ffn.key.weight"].shape[0],
                  "layer_norm_epsilon": 1e-5, "rescale_every": 1, "tie_word_embeddings": False}
        return _once(d / "hf", lambda tmp: _hub_folder(tmp, sd, config, long_mix=False, vocab=True))
    kind = name.removeprefix("gguf_")
    return convert_hf_to_gguf(v6_file("hf"), d / f"model-{kind}.gguf", kind)


def v5_files() -> dict[str, Path]:
    """RWKV-5.2: the .pth and a folder in the Hub's Rwkv5ForCausalLM layout (long mix names)."""
    d = build_dir("v5")
    sd = random_state_dict("5.2", seed=5, **V5_SHAPE)
    files = {"pth": _once(d / "source.pth", lambda p: save_checkpoint(sd, p))}
    C = V5_SHAPE["n_embd"]
    config = {"architectures": ["Rwkv5ForCausalLM"], "model_type": "rwkv5", "vocab_size": V5_SHAPE["vocab_size"],
              "hidden_size": C, "num_hidden_layers": V5_SHAPE["n_layer"], "attention_hidden_size": C,
              "head_size": 64, "head_size_divisor": 8, "intermediate_size": sd["blocks.0.ffn.key.weight"].shape[0],
              "layer_norm_epsilon": 1e-5, "rescale_every": 6}
    files["hf"] = _once(d / "hf", lambda tmp: _hub_folder(tmp, sd, config, long_mix=True, vocab=False))
    return files


if __name__ == "__main__":  # .ci/run: fetch llama.cpp's converter before the tests (python -m tests.io.format_fixtures)
    try:
        print(f"== llama.cpp converter: {llama_cpp_dir()}")
    except pytest.skip.Exception as e:
        print(f"== WARNING: {e} (the GGUF tests will skip)")
