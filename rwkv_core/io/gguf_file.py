"""llama.cpp GGUF files of RWKV-6 and RWKV-7, read with the `gguf` package (llama.cpp's own reader and dequantiser).

Every tensor type the package dequantises (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants, ...) is
read; F32/F16/BF16 stay as memory-mapped views of the file, quantised matrices are dequantised to float32.
llama.cpp's layout (its `convert_hf_to_gguf.py`, classes Rwkv6Model and Rwkv7Model) is undone to BlinkDL's names:
- the token-shift mixes fused into `time_mix_lerp_fused` [n, 1, 1, C] (v6: w k v r g; v7: r w k v a g) split;
- LoRA matrices stored as nn.Linear [out, in] transposed back to the official [in, out] (v6 `time_mix_w2`
  [5, C, Dm] permuted back to [5, Dm, C]);
- v7 `r_k`, flattened to [H*N], reshaped to [H, N];
- v7 layer 0's value LoRA, a placeholder copy of its a-LoRA (llama.cpp needs one), dropped;
- v6 `time_mix_output` / `channel_mix_value` of block b, divided by 2^(b // rescale_every_n_layers), multiplied back.
The World vocabulary comes from the file's own token list (see `gguf_vocab_file`). ln_x's epsilon is 64e-5,
llama.cpp's constant for both architectures.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from rwkv_core.errors import CheckpointError

ARCHS = ("rwkv6", "rwkv7")
LERP_ORDER = {"rwkv6": ("w", "k", "v", "r", "g"), "rwkv7": ("r", "w", "k", "v", "a", "g")}
LN_X_EPS = 64e-5  # llama.cpp's group norm of both architectures: ggml_norm(..., 64e-5f)

_TOP = {"token_embd.weight": "emb.weight", "token_embd_norm.weight": "blocks.0.ln0.weight",
        "token_embd_norm.bias": "blocks.0.ln0.bias", "output_norm.weight": "ln_out.weight",
        "output_norm.bias": "ln_out.bias", "output.weight": "head.weight"}
_BLOCK = {"attn_norm": "ln1", "attn_norm_2": "ln2", "time_mix_key": "att.key", "time_mix_value": "att.value",
          "time_mix_receptance": "att.receptance", "time_mix_output": "att.output", "time_mix_gate": "att.gate",
          "time_mix_ln": "att.ln_x", "channel_mix_key": "ffn.key", "channel_mix_value": "ffn.value",
          "channel_mix_receptance": "ffn.receptance"}
_V6 = {"time_mix_lerp_x": "att.time_maa_x", "time_mix_w1": "att.time_maa_w1", "time_mix_w2": "att.time_maa_w2",
       "time_mix_decay": "att.time_decay", "time_mix_decay_w1": "att.time_decay_w1",
       "time_mix_decay_w2": "att.time_decay_w2", "time_mix_first": "att.time_faaaa",
       "channel_mix_lerp_k": "ffn.time_maa_k", "channel_mix_lerp_r": "ffn.time_maa_r"}
_V7 = {**{f"time_mix_{x}{i}": f"att.{x}{i}" for x in "wav" for i in "012"}, "time_mix_g1": "att.g1",
       "time_mix_g2": "att.g2", "time_mix_k_k": "att.k_k", "time_mix_k_a": "att.k_a", "time_mix_r_k": "att.r_k",
       "channel_mix_lerp_k": "ffn.x_k"}
_TRANSPOSED = {"rwkv6": ("time_mix_w1", "time_mix_decay_w1", "time_mix_decay_w2"),
               "rwkv7": tuple(f"time_mix_{x}{i}" for x in "wavg" for i in "12")}


def _reader_class():
    """gguf's GGUFReader, parsing a plain ndarray view of its memory map: numpy's memmap subclass costs ~10 us a
    slice, ~4 s of the header's 65,536 token strings; the view is the same memory, so nothing else changes."""
    import gguf

    class Reader(gguf.GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._memmap, self._plain = value, value.view(np.ndarray)

    return Reader


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        return default


def _to_torch(t, path: Path) -> torch.Tensor:
    """One GGUF tensor in numpy's row-major shape (ggml's dims reversed): float views where the type allows."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    kind = t.tensor_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only memory map: torch warns, we never write
        if kind in (Q.F32, Q.F16):
            return torch.from_numpy(np.asarray(t.data))
        if kind == Q.BF16:
            raw = np.asarray(t.data).view(np.uint16)  # bytes of the file, viewed
            shape = tuple(int(d) for d in reversed(t.shape))
            return torch.from_numpy(raw).view(torch.bfloat16).reshape(shape)
        try:
            return torch.from_numpy(dequantize(np.asarray(t.data), kind))
        except NotImplementedError:
            raise CheckpointError(path, f"tensor {t.name} has GGUF type {kind.name}, which the gguf package "
                                        "cannot dequantise") from None


def _block_name(arch: str, rest: str) -> Optional[str]:
    return _BLOCK.get(rest) or (_V6 if arch == "rwkv6" else _V7).get(rest)


def _official(reader, arch: str, path: Path, load, targets: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Every tensor of the file under its official name and shape; `load(t)` gives one tensor in the file's layout
    (its data, or a meta tensor of its shape); `targets` (official key -> dtype) converts each as it is read."""
    head_size = int(_field(reader, f"{arch}.wkv.head_size", 0) or 0)
    if not head_size:
        raise CheckpointError(path, f"no {arch}.wkv.head_size in the file's metadata: not a file llama.cpp could run")
    rescale = int(_field(reader, f"{arch}.rescale_every_n_layers", 0) or 0)
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, x: torch.Tensor) -> None:
        sd[key] = x.to(targets[key]) if targets and targets.get(key, x.dtype) != x.dtype else x

    for t in reader.tensors:
        name = t.name
        base, suffix = name.rpartition(".")[::2] if name.endswith((".weight", ".bias")) else (name, "weight")
        m = re.match(r"blk\.(\d+)\.(\w+)$", base)
        if not m:
            put(_TOP.get(name, name), load(t))  # an unknown name is left for the key check to report
            continue
        b, rest = int(m.group(1)), m.group(2)
        if arch == "rwkv7" and b == 0 and rest in ("time_mix_v0", "time_mix_v1", "time_mix_v2"):
            continue  # llama.cpp's placeholder (a copy of the a-LoRA): layer 0 has no value residual
        x = load(t)
        if rest == "time_mix_lerp_fused":
            order = LERP_ORDER[arch]
            if x.numel() != len(order) * x.shape[-1]:
                raise CheckpointError(path, f"{name} has shape {tuple(x.shape)}: expected {len(order)} fused mixes")
            prefix = "att.time_maa_" if arch == "rwkv6" else "att.x_"
            for i, key in enumerate(order):
                sd[f"blocks.{b}.{prefix}{key}"] = x.reshape(len(order), -1)[i]
            continue
        official = _block_name(arch, rest)
        if official is None:
            sd[name] = x  # left for the key check to report
            continue
        if rest in _TRANSPOSED[arch]:
            x = x.t()
        elif arch == "rwkv6" and rest == "time_mix_w2":
            x = x.permute(0, 2, 1)  # [5, C, Dm] -> [5, Dm, C]
        elif rest == "time_mix_r_k":
            x = x.reshape(-1, head_size)
        if arch == "rwkv6" and rescale > 0 and rest in ("time_mix_output", "channel_mix_value") and b >= rescale:
            x = x * float(2 ** (b // rescale))  # exact: a power of two
        module = official in _BLOCK.values()  # a Linear or a norm: .weight / .bias; else a parameter
        put(f"blocks.{b}.{official}.{suffix}" if module else f"blocks.{b}.{official}", x)
    return sd


def _meta(t) -> torch.Tensor:
    """A tensor of `t`'s shape (numpy order) and no data."""
    return torch.empty(tuple(int(d) for d in reversed(t.shape)), device="meta")


def read_gguf(path: Path, dtype: Optional[torch.dtype] = None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Official-name tensors, the format name and metadata (ln_x eps, stored type, tokenizer) of a GGUF file.

    dtype: the dtype the model will be built in. Quantised matrices that the model keeps in it are dequantised
    straight into it, tensor by tensor (a q8_0 file built as bf16 never holds all of its float32 weights)."""
    try:
        import gguf  # noqa: F401  (installed?)
    except ImportError:
        raise CheckpointError(path, "reading GGUF needs the `gguf` package (pip install gguf)") from None
    try:
        reader = _reader_class()(path, "c")
    except Exception as e:  # truncated files, bad magic or version, unknown types: the reader raises many kinds
        msg = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
        raise CheckpointError(path, f"truncated or corrupt GGUF file ({msg})") from None
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise CheckpointError(path, f"GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHS)})")
    targets = None
    if dtype is not None and dtype != torch.float32:
        from rwkv_core.io.checkpoint import detect_config, model_dtypes

        try:
            targets = model_dtypes(detect_config(_official(reader, arch, path, _meta), path), dtype)
        except (CheckpointError, ValueError, KeyError, RuntimeError):
            targets = None  # the full read below and the key check report what is wrong
    sd = _official(reader, arch, path, lambda t: _to_torch(t, path), targets)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
    quantised = {k: n for k, n in types.items() if k != "F32"}  # the file's type: the most common besides F32
    stored = max(quantised or types, key=(quantised or types).get).lower() if types else "f32"
    meta = {"ln_x_eps": LN_X_EPS, "version_hint": arch[-1], "data_type": stored,
            "tokenizer": gguf_tokenizer(reader, path)}
    return sd, f"GGUF ({arch}, {stored})", meta


# ------------------------------------------------------------------------------------------------ vocabulary


def _token_bytes(text: str) -> bytes:
    """llama.cpp writes World tokens as `repr(bytes)[2:-1]` (escapes such as \\x00, \\n, \\\\): undone exactly."""
    return codecs.escape_decode(text.encode("utf-8"))[0]


def gguf_tokenizer(reader, path: Path) -> Optional[tuple[str, Path]]:
    """("world", vocabulary file) for a file whose tokenizer.ggml.model is "rwkv"; None for anything else.

    The file's token list is compared with the World vocabulary shipped with the `rwkv` package; when it differs,
    it is written once in the same text format to a cache folder (named by its hash) and that file is used."""
    if _field(reader, "tokenizer.ggml.model") != "rwkv":
        return None
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type") or []
    if not tokens:
        return None
    table = {i: _token_bytes(tok) for i, tok in enumerate(tokens)
             if i > 0 and (i >= len(types) or types[i] == 1)}  # 1: NORMAL; 0 is <s>, the rest padding
    from rwkv_core.io.tokenizer import _load_world_vocab, default_world_vocab_path

    try:
        default = default_world_vocab_path()
        if _load_world_vocab(str(default)) == table:
            return "world", default
    except Exception:
        pass
    lines = "".join(f"{i} {b!r} {len(b)}\n" for i, b in sorted(table.items()))
    digest = hashlib.blake2b(lines.encode(), digest_size=8).hexdigest()
    folder = Path(os.environ.get("RWKV_INSPECTOR_CACHE", Path(tempfile.gettempdir()) / "rwkv_inspector_cache"))
    file = folder / f"gguf_vocab_{digest}.txt"
    if not file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(lines, encoding="utf-8")
        tmp.replace(file)
    return "world", file
