"""Hugging Face model folders of RWKV: `config.json` beside the weights, mapped to BlinkDL's official names.

Weights: `model.safetensors`, sharded `*.safetensors` with `model.safetensors.index.json`, or `pytorch_model.bin`
(sharded with `pytorch_model.bin.index.json`; read with `weights_only=True`). Safetensors are memory-mapped
(copy-on-write, pages read when touched), so a folder of bf16 shards costs about its own size, not a second copy.

Layouts (`config.json`'s `architectures`, else its `model_type`):
- RWKV7ForCausalLM: flash-linear-attention (fla-hub/rwkv7-*, RWKV/RWKV7-Goose-*-HF, rwkv7-hf's converter):
  `model.layers.N.attn.{r,k,v,o}_proj`, `{w,a,v,g}_lora.lora.{0,2}` (nn.Linear [out, in], so the official
  [in, out] LoRA matrices transposed; `lora.2.bias` is w0/a0/v0), `g_norm` (= ln_x, eps = head_dim x norm_eps),
  `pre_norm`/`attn_norm`/`ffn_norm` (= ln0/ln1/ln2), `model.embeddings`, `model.norm`, `lm_head`.
- RwkvForCausalLM (RWKV-4, transformers' own class) and Rwkv5ForCausalLM / Rwkv6ForCausalLM (the Hub's remote
  code, RWKV/v5-Eagle-*-HF, RWKV/v6-Finch-*-HF): `rwkv.` + the official names with `embeddings`, `pre_ln`,
  `attention`, `feed_forward` and transformers' long mix names (`time_mix_key` for `time_mix_k`); ln_x eps is
  1e-5 x head_size_divisor^2 (64e-5 by default), BlinkDL's value, which the weights were trained with (an early
  version of the Hub's RWKV-5 code normalised with torch's default 1e-5).
No code in the folder is imported or run (no trust_remote_code): only config.json, the weights and the tokenizer.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from rwkv_core.errors import CheckpointError

# architecture name -> our layout key; model_type as the fallback
ARCHITECTURES = {"RWKV7ForCausalLM": "7", "Rwkv7ForCausalLM": "7", "RwkvForCausalLM": "4",
                 "Rwkv5ForCausalLM": "5", "Rwkv6ForCausalLM": "6"}
MODEL_TYPES = {"rwkv7": "7", "rwkv": "4", "rwkv5": "5", "rwkv6": "6"}
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"


def is_hf_folder(path: Path) -> bool:
    """A folder with a config.json: what `load_checkpoint` hands to this module."""
    return path.is_dir() and (path / "config.json").is_file()


# ------------------------------------------------------------------------------------------------ weights


def _mmap_safetensors(file: Path, folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one .safetensors file as a view of a copy-on-write memory map (nothing read yet)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if not 2 <= n <= size - 8:
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n))
        data = np.memmap(file, dtype=np.uint8, mode="c", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES.get(spec["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name} has dtype {spec['dtype']}, not a float type")
            start, end = spec["data_offsets"]
            shape = tuple(spec["shape"])
            if end > data.size or end - start != int(np.prod(shape)) * dtype.itemsize:
                raise ValueError(f"tensor {name} lies beyond the end of the file (truncated?)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = torch.from_numpy(data[start:end]) if end > start else torch.zeros(0, dtype=torch.uint8)
            out[name] = t.view(dtype).reshape(shape)
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise CheckpointError(folder, f"{file.name}: truncated or corrupt safetensors file ({str(e)[:160]})") from None


def _torch_bin(file: Path, folder: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin, weights only: a pickle that would run code is refused."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(folder, f"{file.name}: refused, loading this pickle would run code "
                                      f"({str(e).splitlines()[0][:120]})") from None
    except Exception as e:
        raise CheckpointError(folder, f"{file.name}: truncated or corrupt PyTorch file ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(folder, f"{file.name}: not a state_dict of tensors")
    return obj


def _shards(folder: Path, index_name: str) -> list[Path]:
    """The shard files an index names, each checked to exist."""
    index = folder / index_name
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(folder, f"{index_name}: not a readable shard index ({str(e)[:120]})") from None
    for name in files:
        if Path(name).name != name:
            raise CheckpointError(folder, f"{index_name} names {name!r}, not a file in the folder")
        if not (folder / name).is_file():
            raise CheckpointError(folder, f"missing shard {name} (listed in {index_name})")
    return [folder / name for name in files]


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the folder by their Hugging Face names, and which files they came from."""
    found = []
    for single, index, reader in (("model.safetensors", "model.safetensors.index.json", _mmap_safetensors),
                                  ("pytorch_model.bin", "pytorch_model.bin.index.json", _torch_bin)):
        if (folder / index).is_file():
            found = [(f, reader) for f in _shards(folder, index)]
            kind = f"{len(found)} shards of {single}"
        elif (folder / single).is_file():
            found, kind = [(folder / single, reader)], single
        if found:
            break
    if not found:
        raise CheckpointError(folder, "no weights: expected model.safetensors (or shards with "
                                      "model.safetensors.index.json) or pytorch_model.bin beside config.json")
    sd: dict[str, torch.Tensor] = {}
    for file, reader in found:
        sd.update(reader(file, folder))
    return sd, kind


# ------------------------------------------------------------------------------------------------ layouts


def _from_fla_rwkv7(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flash-linear-attention RWKV-7 names -> official names (inverse of rwkv7-hf's `translate_name`)."""
    top = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
           "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}
    parts = {"pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2", "attn": "att", "ffn": "ffn"}
    proj = {"r_proj": "receptance", "k_proj": "key", "v_proj": "value", "o_proj": "output", "g_norm": "ln_x"}
    out = {}
    for k, t in sd.items():
        m = re.match(r"model\.layers\.(\d+)\.(\w+)\.(.+)$", k)
        if k in top:
            out[top[k]] = t
        elif m and m.group(2) in parts:
            layer, rest = int(m.group(1)), m.group(3)
            lora = re.match(r"([wavg])_lora\.lora\.(0\.weight|2\.weight|2\.bias)$", rest)
            if lora:
                x, which = lora.groups()
                if x == "v" and layer == 0:
                    continue  # layer 0 never uses the value residual
                n = {"0.weight": "1", "2.weight": "2", "2.bias": "0"}[which]
                rest = x + n
                t = t.t() if n in "12" else t  # nn.Linear [out, in] -> official LoRA [in, out]: a view, no copy
            else:
                head, _, tail = rest.partition(".")
                rest = proj[head] + (("." + tail) if tail else "") if head in proj else rest
            out[f"blocks.{layer}.{parts[m.group(2)]}.{rest}"] = t
        else:
            out[k] = t  # left for the key check to report
    return out


_LONG_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r",
             "time_mix_gate": "time_mix_g"}


def _from_hf_rwkv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' RwkvForCausalLM and the Hub's Rwkv5/Rwkv6 names -> official names."""
    out = {}
    for k, t in sd.items():
        name = k[len("rwkv."):] if k.startswith("rwkv.") else k
        name = re.sub(r"^embeddings\.", "emb.", name)
        name = re.sub(r"^blocks\.(\d+)\.pre_ln\.", r"blocks.\1.ln0.", name)
        name = re.sub(r"^blocks\.(\d+)\.attention\.", r"blocks.\1.att.", name)
        name = re.sub(r"^blocks\.(\d+)\.feed_forward\.", r"blocks.\1.ffn.", name)
        last = name.rsplit(".", 1)
        if len(last) == 2 and last[1] in _LONG_MIX:
            name = last[0] + "." + _LONG_MIX[last[1]]
        out[name] = t
    return out


# ------------------------------------------------------------------------------------------------ config


def _layout(cfg: dict, folder: Path) -> str:
    archs = cfg.get("architectures") or []
    archs = archs if isinstance(archs, list) else [archs]
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    mt = cfg.get("model_type")
    if not archs and mt in MODEL_TYPES:
        return MODEL_TYPES[mt]
    what = ", ".join(map(str, archs)) or f"model_type {mt!r}"
    raise CheckpointError(folder, f"config.json describes {what}, not an RWKV model (supported: "
                                  f"{', '.join(sorted(set(ARCHITECTURES)))})")


def _check_config(cfg: dict, sd: dict[str, torch.Tensor], folder: Path) -> None:
    """config.json's sizes must be the tensors' sizes: a disagreement means a broken or mixed-up folder."""
    if "emb.weight" not in sd or "blocks.0.att.key.weight" not in sd:
        return  # the key check names what is missing
    vocab, C = sd["emb.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
    checks = {"hidden_size": C, "vocab_size": vocab, "num_hidden_layers": layers}
    if "blocks.0.ffn.key.weight" in sd:
        checks["intermediate_size"] = sd["blocks.0.ffn.key.weight"].shape[0]
    if "blocks.0.att.r_k" in sd:
        checks["head_dim"] = sd["blocks.0.att.r_k"].shape[-1]
    elif "blocks.0.att.time_faaaa" in sd:
        checks["head_size"] = sd["blocks.0.att.time_faaaa"].shape[-1]
    for key, actual in checks.items():
        given = cfg.get(key)
        if isinstance(given, (int, float)) and not isinstance(given, bool) and int(given) != int(actual):
            raise CheckpointError(folder, f"config.json says {key} = {given} but the tensors have {actual}")


def _ln_x_eps(cfg: dict, layout: str, sd: dict[str, torch.Tensor]) -> Optional[float]:
    """The ln_x GroupNorm epsilon the layout defines: fla head_dim x norm_eps; Hub v5/v6 1e-5 x divisor^2."""
    if layout == "7":
        head_dim = sd["blocks.0.att.r_k"].shape[-1] if "blocks.0.att.r_k" in sd else cfg.get("head_dim", 64)
        return float(head_dim) * float(cfg.get("norm_eps", 1e-5))
    if layout in ("5", "6"):
        return 1e-5 * float(cfg.get("head_size_divisor", 8)) ** 2
    return None


def folder_tokenizer(folder: Path) -> Optional[tuple[str, Path]]:
    """The folder's own tokenizer as (kind, file): the World vocabulary file, else a tokenizer.json."""
    if (folder / WORLD_VOCAB_FILE).is_file():
        return "world", (folder / WORLD_VOCAB_FILE).resolve()
    if (folder / "tokenizer.json").is_file():
        return "hf", (folder / "tokenizer.json").resolve()
    return None


def read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Official-name tensors, the format name and metadata (ln_x eps, tokenizer) of a Hugging Face folder."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(folder, f"config.json is not readable JSON ({str(e)[:120]})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(folder, "config.json is not a JSON object")
    layout = _layout(cfg, folder)
    raw, files = read_weights(folder)
    if layout == "7":
        sd = _from_fla_rwkv7(raw)
        if "head.weight" not in sd and cfg.get("tie_word_embeddings") and "emb.weight" in sd:
            sd["head.weight"] = sd["emb.weight"]
    else:
        sd = _from_hf_rwkv(raw)
    _check_config(cfg, sd, folder)
    arch = {"7": "RWKV7ForCausalLM", "4": "RwkvForCausalLM", "5": "Rwkv5ForCausalLM", "6": "Rwkv6ForCausalLM"}[layout]
    meta = {"ln_x_eps": _ln_x_eps(cfg, layout, sd), "version_hint": {"5": "5.2"}.get(layout, layout),
            "tokenizer": folder_tokenizer(folder)}
    return sd, f"Hugging Face folder ({arch}, {files})", meta
