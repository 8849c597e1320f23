"""Loading RWKV checkpoints: official BlinkDL `.pth`, `.safetensors` with official names, rwkv.cpp `.bin`,
Hugging Face folders (`hf_folder.py`) and llama.cpp GGUF (`gguf_file.py`).

Every format ends as a state_dict with the official names and shapes plus a `ModelConfig` read from the tensors.
Anything wrong (not a checkpoint, truncated, a pickle that would run code, missing or unexpected keys, wrong shapes,
an unknown version) raises `CheckpointError` with a one-line message naming the file, before any model is built.
"""
from __future__ import annotations

import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from rwkv_core.model.config import ModelConfig
from rwkv_core.errors import CheckpointError

PathLike = Union[str, os.PathLike]

ZIP_MAGIC = b"PK\x03\x04"
RWKVCPP_MAGIC = b"fmgg"  # uint32 0x67676d66, little-endian
GGUF_MAGIC = b"GGUF"


@dataclass
class Checkpoint:
    """A checkpoint as loaded: official-name tensors (as stored, possibly bf16/fp16), config and provenance."""

    path: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    source_format: str  # "pth", "safetensors", "rwkv.cpp", "pth (reverse-digits layout)", "GGUF (rwkv7, q8_0)", ...
    stored_dtype: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. v6 `time_state`, kept but not used
    tokenizer: Optional[tuple[str, str]] = None  # (kind, file) the checkpoint brings: a HF folder's, a GGUF's vocab

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    def info(self) -> dict:
        """The architecture as plain data (what `python -m rwkv_core info` prints)."""
        c = self.config
        return {
            "file": os.path.basename(self.path), "format": self.source_format, "version": c.version,
            "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head if c.has_heads else None,
            "head_size": c.head_size if c.has_heads else None, "dim_ffn": c.dim_ffn, "vocab_size": c.vocab_size,
            "n_params": self.n_params, "dtype": self.stored_dtype, "ln_x_eps": c.ln_x_eps if c.has_heads else None,
            "lora": dict(c.lora), "tokenizer": self.tokenizer[0] if self.tokenizer else None,
        }


# ------------------------------------------------------------------------------------------------ reading files


def _read_raw(path: Path, dtype: Optional[torch.dtype] = None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Tensors as named in the file, the format name and format metadata (dtype: see `load_checkpoint`)."""
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if path.is_dir():
        from rwkv_core.io.hf_folder import is_hf_folder, read_hf_folder

        if not is_hf_folder(path):
            raise CheckpointError(path, "not a regular file, and not a Hugging Face model folder (no config.json)")
        return read_hf_folder(path)
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(path, f"file is only {size} bytes: not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == GGUF_MAGIC:
        from rwkv_core.io.gguf_file import read_gguf

        return read_gguf(path, dtype)
    if head[:4] == RWKVCPP_MAGIC:
        from rwkv_core.io.rwkvcpp import read_rwkvcpp

        sd, meta = read_rwkvcpp(path)
        return sd, "rwkv.cpp", meta
    if head[:4] == ZIP_MAGIC or head[:1] == b"\x80":
        return _read_torch(path, zipped=head[:4] == ZIP_MAGIC), "pth", {}
    n = int.from_bytes(head[:8], "little")
    if 2 <= n <= min(size - 8, 100_000_000) and head[8:9] == b"{":
        return _read_safetensors(path), "safetensors", {}
    raise CheckpointError(path, "not a checkpoint: expected a PyTorch .pth, a .safetensors, an rwkv.cpp .bin, a "
                                "GGUF file or a Hugging Face folder")


def _read_torch(path: Path, zipped: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        detail = str(e).split("\n")
        what = next((l.strip() for l in detail if "GLOBAL" in l or "Unsupported" in l), detail[0][:120])
        raise CheckpointError(path, f"refused: loading this pickle would run code ({what}); "
                                    "only plain tensor checkpoints are accepted") from None
    except Exception as e:  # truncated zips, torch's own format errors, a pickle handed to safetensors by its name
        msg = (str(e).split("\n") or [""])[0][:160] or type(e).__name__
        raise CheckpointError(path, f"truncated or corrupt PyTorch file ({msg})") from None
    if isinstance(obj, dict) and set(obj) <= {"state_dict", "model"} and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state_dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"entry {bad[0]!r} is not a named tensor: not a state_dict")
    return obj


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"truncated or corrupt safetensors file ({str(e)[:160]})") from None


# ------------------------------------------------------------------------------------------------ layouts


def _from_reverse_digits_layout(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """BlinkDL's RWKV-v8 task models (e.g. 260123_reverse_L2_only_rwkv7.pth) to official names.

    No ln0; `o.bias` becomes `head.bias`; the ROSA branch, whose embedding is zero, contributes only its output
    bias, a per-layer constant kept as `blocks.{l}.resid_bias`.
    """
    out = {}
    for k, t in sd.items():
        m = re.match(r"(ln|rwkv|ffn|rosa)(\d+)([abc]?)\.(.+)$", k)
        if k.startswith("e."):
            out["emb." + k[2:]] = t
        elif k.startswith("lno."):
            out["ln_out." + k[4:]] = t
        elif k.startswith("o."):
            out["head." + k[2:]] = t
        elif m:
            kind, L, sub, rest = m.group(1), int(m.group(2)) - 1, m.group(3), m.group(4)
            if kind == "ln" and sub in "ab" and sub:
                out[f"blocks.{L}.{'ln1' if sub == 'a' else 'ln2'}.{rest}"] = t
            elif kind == "rwkv":
                out[f"blocks.{L}.att.{rest}"] = t
            elif kind == "ffn":
                out[f"blocks.{L}.ffn.{rest}"] = t
            elif kind == "rosa":
                if rest == "rosa_qkv.emb" and bool(t.float().abs().max() > 0):
                    raise CheckpointError(path, "the ROSA branch is active (non-zero rosa_qkv.emb): not a pure RWKV-7 model")
                if rest == "o.bias":
                    out[f"blocks.{L}.resid_bias"] = t
            # ln{L}c (pre-ROSA norm) feeds only the inactive branch: dropped
        else:
            out[k] = t  # left for the key check to report
    return out


def _is_reverse_digits_layout(sd: dict) -> bool:
    return "e.weight" in sd and "o.weight" in sd and any(k.startswith("rwkv1.") for k in sd)


# ------------------------------------------------------------------------------------------------ config


def detect_config(sd: dict[str, torch.Tensor], path: PathLike = None, *, ln_x_eps: Optional[float] = None) -> ModelConfig:
    """Version and sizes from the tensors (rules of rwkv-math §2); raises CheckpointError if no version fits."""
    has = sd.__contains__
    if not has("emb.weight") or not has("blocks.0.att.key.weight"):
        missing = "emb.weight" if not has("emb.weight") else "blocks.0.att.key.weight"
        raise CheckpointError(path, f"not an RWKV checkpoint: no {missing}")
    a0 = "blocks.0.att."
    vocab, C = sd["emb.weight"].shape
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    n_layer = max(layers) + 1
    dim_att = sd[a0 + "key.weight"].shape[0]
    dim_ffn = sd["blocks.0.ffn.key.weight"].shape[0] if has("blocks.0.ffn.key.weight") else 0
    lora: dict[str, int] = {}
    if has(a0 + "k_k"):
        version = "7"
        H, N = sd[a0 + "r_k"].shape
        lv = next((sd[f"blocks.{i}.att.v1"].shape[1] for i in range(n_layer) if has(f"blocks.{i}.att.v1")), 1)
        lora = {"w": sd[a0 + "w1"].shape[1], "a": sd[a0 + "a1"].shape[1], "v": lv, "g": sd[a0 + "g1"].shape[1]}
    elif has(a0 + "time_maa_x"):
        version = "6"
        H, N = sd[a0 + "time_faaaa"].shape[:2]
        lora = {"maa": sd[a0 + "time_maa_w1"].shape[1] // 5, "decay": sd[a0 + "time_decay_w1"].shape[1]}
    elif has(a0 + "ln_x.weight") and has(a0 + "time_faaaa"):
        version = "5.2"
        H, N = sd[a0 + "time_decay"].shape[:2]
    elif has(a0 + "ln_x.weight") and has(a0 + "time_first") and sd[a0 + "time_decay"].dim() == 1:
        if has(a0 + "gate.weight"):
            raise CheckpointError(path, "gated RWKV-5 preview (the rwkv package's 'v5.1') is not supported")
        version = "5.1"
        H = sd[a0 + "time_decay"].shape[0]
        N = dim_att // H
    elif has(a0 + "time_first") and has(a0 + "time_mix_k"):
        version, H, N = "4", 1, 0
    else:
        raise CheckpointError(path, "unknown RWKV version: blocks.0.att has none of k_k, time_maa_x, ln_x, time_first")
    eps = ln_x_eps if ln_x_eps is not None else 64e-5
    return ModelConfig(version=version, n_layer=n_layer, n_embd=C, vocab_size=vocab, dim_ffn=dim_ffn, n_head=H,
                       head_size=N, dim_att=dim_att, ln_x_eps=eps, has_ln0=has("blocks.0.ln0.weight"),
                       head_bias=has("head.bias"), resid_bias=has("blocks.0.resid_bias"), lora=lora)


DEEP_EMBED = re.compile(r"blocks\.\d+\.ffn\.s(_emb|_emb_x|0|1|2)(\.weight)?$")  # BlinkDL's DeepEmbed RWKV-7
OPTIONAL_KEYS = re.compile(r"blocks\.0\.att\.v[012]$")  # v7 layer 0 ignores its value-residual LoRA


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of every tensor the modules of `cfg` hold (built on the meta device, no data)."""
    from rwkv_core.model.rwkv import RWKV, SkipInit

    with torch.device("meta"), SkipInit():
        return {k: tuple(v.shape) for k, v in RWKV(cfg).state_dict().items()}


def check_keys(sd: dict[str, torch.Tensor], cfg: ModelConfig, path: PathLike = None) -> tuple[dict, dict]:
    """Compare against the modules the config builds; returns (state_dict to load, extras). Strict otherwise."""
    expected = expected_shapes(cfg)
    extras = {k: sd[k] for k in sd if k.endswith("att.time_state")}
    given = {k: v for k, v in sd.items() if k not in extras and not (cfg.version == "7" and OPTIONAL_KEYS.match(k))}
    missing = [k for k in expected if k not in given]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(path, f"missing keys for RWKV v{cfg.version}: {', '.join(missing[:3])}{more}")
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        more = f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise CheckpointError(path, f"unexpected keys for RWKV v{cfg.version}: {', '.join(unexpected[:3])}{more}")
    out = {}
    for k, shape in expected.items():
        t = given[k]
        if tuple(t.shape) != shape:
            if t.numel() == int(torch.Size(shape).numel()) and k.split(".")[-1].startswith(("time_", "x_", "w0", "a0", "v0", "k_")):
                t = t.reshape(shape)  # squeezed mixing vectors, e.g. from converters
            else:
                raise CheckpointError(path, f"wrong shape for {k}: {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point():
            raise CheckpointError(path, f"{k} has dtype {t.dtype}, expected a floating-point tensor")
        out[k] = t
    return out, extras


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in `t`. A finite float32 sum proves it in one pass without a [t.shape] bool tensor
    (a NaN or an infinity makes the sum NaN or infinite; ~10x faster than isfinite on 0.8 GB of weights); only a
    sum that overflows gets the element-wise check."""
    if bool(torch.isfinite(t.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(t).all())


def load_checkpoint(path: PathLike, *, ln_x_eps: Optional[float] = None, check_finite: bool = True,
                    dtype: Optional[torch.dtype] = None) -> Checkpoint:
    """Read and validate a checkpoint file of any supported format; nothing is built if anything is wrong.

    dtype: the dtype a model will be built in, when known: a quantised GGUF's matrices are dequantised straight into
    it (otherwise float32)."""
    path = Path(path)
    sd, fmt, meta = _read_raw(path, dtype)
    if _is_reverse_digits_layout(sd):
        sd, fmt = _from_reverse_digits_layout(sd, path), "pth (reverse-digits layout)"
    if any(DEEP_EMBED.match(k) for k in sd):
        raise CheckpointError(path, "an RWKV-7 DeepEmbed checkpoint (ffn.s_emb, the rwkv package's "
                                    "RWKV_DE_VERSION=1): not supported yet")
    eps = ln_x_eps if ln_x_eps is not None else meta.get("ln_x_eps")
    cfg = detect_config(sd, path, ln_x_eps=eps)
    if meta.get("version_hint") and meta["version_hint"] != cfg.version:
        raise CheckpointError(path, f"tensors look like v{cfg.version} but the file says v{meta['version_hint']}")
    sd, extras = check_keys(sd, cfg, path)
    if check_finite:
        bad = next((k for k, t in sd.items() if not all_finite(t)), None)
        if bad is not None:
            raise CheckpointError(path, f"{bad} contains NaN or infinite values")
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in sd.values() if t.dim() >= 2)
    stored = meta.get("data_type") or (dtypes.most_common(1)[0][0] if dtypes else "float32")
    tok = meta.get("tokenizer")
    return Checkpoint(str(path), cfg, sd, fmt, stored, extras, (tok[0], str(tok[1])) if tok else None)


def model_dtypes(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Official key -> the dtype the modules of `cfg` keep it in when built for `dtype` (matrices in `dtype`,
    decays, mixes and norms in float32), read off a model on the meta device."""
    from rwkv_core.model.rwkv import RWKV, SkipInit

    with torch.device("meta"), SkipInit():
        model = RWKV(cfg).to_device("meta", dtype)
    return {k: v.dtype for k, v in model.state_dict().items()}


def load_model(path: Union[PathLike, Checkpoint], *, device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32, ln_x_eps: Optional[float] = None, take: bool = False):
    """Checkpoint file -> RWKV module on `device` (matrices in `dtype`, decays and states in float32).

    take: the Checkpoint given is not used afterwards, so its tensors are converted to their model dtypes in place,
    one at a time, each old one freed (a quantised GGUF's float32 weights built as bf16 never coexist with all of the
    bf16 copy); always so for a path."""
    from rwkv_core.model.rwkv import RWKV

    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path, ln_x_eps=ln_x_eps, dtype=dtype)
    if take or not isinstance(path, Checkpoint):
        targets = model_dtypes(ckpt.config, dtype)
        for k, t in ckpt.state_dict.items():
            if targets.get(k, t.dtype) != t.dtype:
                ckpt.state_dict[k] = t.to(targets[k])
    model = RWKV.from_state_dict(ckpt.config, ckpt.state_dict, device=device, dtype=dtype)
    model.checkpoint_info = ckpt.info()
    return model
