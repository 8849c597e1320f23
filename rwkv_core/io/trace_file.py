"""The project's trace format: one `.npz` file with what a prompt did inside the model.

Keys (T tokens, C channels, V vocabulary; every array float32 unless said):
  tokens [T] int64, logits [T, V],
  per exported layer l: r_l{l}, k_l{l}, v_l{l}, w_l{l} (per-step decay in (0, 1)) [T, C], resid_l{l} [T, C] (the
  residual stream after block l); v7 also a_l{l}, kk_l{l}, ktilde_l{l} [T, C] and r_k_l{l} [H, N]; v4-v6 u_l{l}
  (the bonus: v4 time_first [C], v5.1 exp(time_first) and v5.2/v6 time_faaaa as [H, N]);
  optional (export --scores): attn_l{l}, span_l{l} [H, T, T], zero above the diagonal;
  meta: a JSON string (format version, model config, checkpoint file name, tokenizer kind, token texts, layers,
  conventions). A file opens without a model; `load_trace` refuses anything malformed with a one-line message.

Format versions: 2 stores the arrays uncompressed (activations and logits are float noise to zlib: compressing a
12-layer, 65,536-vocabulary trace took most of an export and saved under 10 %); 1 was the same keys, compressed.
Both open with `load_trace`; a file from a newer format is refused with a message saying so.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field, fields
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from rwkv_core.errors import RWKVInspectorError
from rwkv_core.model.config import VERSIONS, ModelConfig

FORMAT_VERSION = 2  # uncompressed .npz; version 1 files (compressed) still open
READABLE_VERSIONS = (1, 2)
MAX_TRACE_BYTES = 2 << 30  # refuse to open anything that would unpack to more than 2 GiB


class TraceFileError(RWKVInspectorError):
    """A trace file is malformed or hostile."""


def capture_names(version: str) -> list[str]:
    """The hook points a trace needs, relative to `blocks.{l}.`."""
    names = ["att.hook_r", "att.hook_k", "att.hook_v", "att.hook_w", "hook_resid_post"]
    if version == "7":
        names += ["att.hook_a", "att.hook_kk", "att.hook_k_tilde"]
    return names


def bonus_of(model, layer: int) -> tuple[str, np.ndarray]:
    """The per-layer bonus parameter as stored in a trace (`TimeMix.bonus`): ('u', ...) for v4-v6 (v4 [C], v5.1
    exp(time_first), v5.2/v6 time_faaaa as [H, N]), ('r_k', [H, N]) for v7."""
    bonus = model.blocks[layer].att.bonus().detach().float().cpu().numpy()
    return ("r_k" if model.cfg.version == "7" else "u"), bonus


@torch.no_grad()
def build_trace(model, tokens: Sequence[int], *, layers: Optional[Iterable[int]] = None, token_texts=None,
                tokenizer_kind: str = "", checkpoint_name: str = "", scores: bool = False) -> dict[str, np.ndarray]:
    """Run the prompt once with capture and return the trace arrays (see module docstring)."""
    cfg = model.cfg
    layers = sorted(set(range(cfg.n_layer) if layers is None else (int(l) for l in layers)))
    bad = [l for l in layers if not 0 <= l < cfg.n_layer]
    if bad:
        raise TraceFileError(f"layer {bad[0]} does not exist: the model has layers 0..{cfg.n_layer - 1}")
    names = [f"blocks.{l}.{n}" for l in layers for n in capture_names(cfg.version)]
    logits, _, cache = model.run_with_cache(list(tokens), names_filter=names)
    out: dict[str, np.ndarray] = {"tokens": np.asarray(tokens, dtype=np.int64), "logits": logits[0].numpy()}
    key = {"att.hook_r": "r", "att.hook_k": "k", "att.hook_v": "v", "att.hook_w": "w", "hook_resid_post": "resid",
           "att.hook_a": "a", "att.hook_kk": "kk", "att.hook_k_tilde": "ktilde"}
    for l in layers:
        for n in capture_names(cfg.version):
            out[f"{key[n]}_l{l}"] = cache[f"blocks.{l}.{n}"][0].float().numpy()
        bname, bval = bonus_of(model, l)
        out[f"{bname}_l{l}"] = bval
    if scores:
        from rwkv_core.analysis.scores import trace_scores

        out.update(trace_scores(out, cfg, layers))
    meta = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "checkpoint": checkpoint_name,
            "tokenizer": tokenizer_kind, "token_texts": list(token_texts) if token_texts is not None else None,
            "layers": layers, "conventions": {"w": "per-step decay in (0,1)", "span": "includes w_j",
                                               "resid": "after block l", "k_v7": "k before the a-modification"}}
    out["meta"] = np.array(json.dumps(meta))
    return out


def save_trace(arrays: dict[str, np.ndarray], path: Union[str, os.PathLike]) -> None:
    """Write the arrays of `build_trace` as an uncompressed `.npz` (format version 2) to a path or binary file."""
    np.savez(path, **arrays)


@dataclass
class Trace:
    """A loaded trace: arrays by key and the parsed metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> np.ndarray:
        return self.arrays["tokens"]

    @property
    def layers(self) -> list[int]:
        return list(self.meta.get("layers", []))

    def layer(self, name: str, l: int) -> np.ndarray:
        return self.arrays[f"{name}_l{l}"]


def _check_npy_header(zf: zipfile.ZipFile, name: str, label: str) -> None:
    """Read only the member's .npy header (a Python literal, parsed safely) and refuse absurd declared sizes."""
    from numpy.lib import format as npy_format

    with zf.open(name) as f:
        try:
            major, _ = npy_format.read_magic(f)
            read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=10_000)
        except Exception as e:
            what = type(e).__name__
            raise TraceFileError(f"{label}: not a usable trace: {name} has a malformed header ({what})") from None
    n_bytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if n_bytes > MAX_TRACE_BYTES:
        raise TraceFileError(f"{label}: not a usable trace: {name} declares {n_bytes / 2**30:.0f} GiB, "
                             "over the 2 GiB limit")


def load_trace(path_or_file) -> Trace:
    """Open a trace `.npz` (path or file-like) safely: no pickles, bounded size, keys and shapes checked."""
    label = os.path.basename(str(path_or_file)) if isinstance(path_or_file, (str, os.PathLike)) else "upload"
    try:
        with zipfile.ZipFile(path_or_file) as zf:
            total = sum(i.file_size for i in zf.infolist())
            if total > MAX_TRACE_BYTES:
                raise TraceFileError(f"{label}: unpacks to {total / 2**30:.1f} GiB, more than the 2 GiB limit")
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    _check_npy_header(zf, info.filename, label)
        if hasattr(path_or_file, "seek"):
            path_or_file.seek(0)
        with np.load(path_or_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except TraceFileError:
        raise
    except Exception as e:  # numpy lets many kinds out of forged headers (MemoryError, SyntaxError, TokenError...)
        detail = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise TraceFileError(f"{label}: not a trace file (.npz) or corrupt: {detail}") from None
    for k in ("tokens", "meta"):
        if k not in arrays:
            raise TraceFileError(f"{label}: missing '{k}': not an RWKV Inspector trace")
    try:
        meta = json.loads(str(arrays.pop("meta")))
        assert isinstance(meta, dict)
    except (ValueError, AssertionError):
        raise TraceFileError(f"{label}: 'meta' is not valid JSON") from None
    tokens = arrays["tokens"]
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu" or len(tokens) == 0:
        raise TraceFileError(f"{label}: 'tokens' must be a non-empty 1-D integer array")
    T = len(tokens)
    for k, a in arrays.items():
        if k == "tokens":
            continue
        if a.dtype.kind != "f":
            raise TraceFileError(f"{label}: '{k}' has dtype {a.dtype}, expected floating point")
        if k == "logits" and (a.ndim != 2 or a.shape[0] != T):
            raise TraceFileError(f"{label}: 'logits' must be [T, V] with T = {T}")
        if k.split("_l")[0] in ("r", "k", "v", "w", "resid", "a", "kk", "ktilde") and (a.ndim != 2 or a.shape[0] != T):
            raise TraceFileError(f"{label}: '{k}' must be [T, C] with T = {T}, got {list(a.shape)}")
        if k.split("_l")[0] in ("attn", "span") and a.shape[-2:] != (T, T):
            raise TraceFileError(f"{label}: '{k}' must be [H, T, T] with T = {T}")
    version = meta.get("format_version", 1)
    if version not in READABLE_VERSIONS:
        raise TraceFileError(f"{label}: trace format version {str(version)[:20]} is not one this RWKV Inspector reads "
                             f"({', '.join(map(str, READABLE_VERSIONS))}): export it again with this version")
    cfg = meta.get("config") or {}
    if not isinstance(cfg, dict) or cfg.get("version") not in VERSIONS:
        raise TraceFileError(f"{label}: meta has no valid model config")
    return Trace(arrays, meta)


# ------------------------------------------------------------------------------------------------ checked meta


@dataclass(frozen=True)
class TraceContents:
    """What a viewer draws from a loaded trace besides its arrays, checked: the model config, the exported layers,
    the token ids and a text for every token."""

    cfg: ModelConfig
    layers: list[int]
    tokens: list[int]
    token_texts: list[str]


_POSITIVE_CONFIG_FIELDS = ("n_layer", "n_embd", "vocab_size", "n_head")


def trace_config(raw: dict) -> ModelConfig:
    """The model config of a trace's meta, checked field by field: the meta comes from the file, and a hostile or
    hand-edited one must give a one-line message, not a traceback."""
    try:
        cfg = ModelConfig(**raw)
        for f in fields(ModelConfig):
            v = getattr(cfg, f.name)
            if f.type in (int, "int"):
                ok = type(v) is int and (v > 0 if f.name in _POSITIVE_CONFIG_FIELDS else v >= 0)
            elif f.type in (float, "float"):
                ok = type(v) in (int, float) and v >= 0
            elif f.type in (bool, "bool"):
                ok = type(v) is bool
            elif f.name == "lora":
                ok = isinstance(v, dict) and all(isinstance(k, str) and type(n) is int for k, n in v.items())
            else:
                ok = isinstance(v, str)
            if not ok:
                raise ValueError(f"{f.name} = {v!r}")
    except (TypeError, ValueError) as e:
        raise TraceFileError(f"the trace's model config is not usable ({str(e).splitlines()[0][:120]})") from None
    return cfg


def trace_contents(trace: Trace) -> TraceContents:
    """The config, layers, tokens and token texts of a loaded trace, checked (`load_trace` checks the arrays; this
    checks the meta a viewer relies on). Layers must be layer numbers of the config (TraceFileError otherwise);
    token texts missing, of the wrong length or of the wrong type give way to the token ids."""
    cfg = trace_config(trace.meta["config"])
    layers = trace.meta.get("layers")
    if not (isinstance(layers, list) and all(type(l) is int and 0 <= l < cfg.n_layer for l in layers)):
        raise TraceFileError(f"the trace's 'layers' must be a list of layer numbers 0..{cfg.n_layer - 1}")
    tokens = [int(t) for t in trace.tokens]
    texts = trace.meta.get("token_texts")
    if not (isinstance(texts, list) and len(texts) == len(tokens) and all(isinstance(t, str) for t in texts)):
        texts = [str(t) for t in tokens]
    return TraceContents(cfg, list(layers), tokens, list(texts))
