"""Reader for rwkv.cpp `.bin` model files (RWKV v4, v5.1, v5.2, v6, v7).

Format (little-endian, no padding; ../shared/docs/rwkv-math.md §10):

- header, 24 bytes: 6 x uint32 = magic 0x67676d66, file version (100 or 101), n_vocab, n_embed, n_layer, data type;
- tensors until EOF: int32 n_dims, int32 name_len, int32 data_type, n_dims x int32 dims (ggml order, i.e. the
  PyTorch shape reversed), the UTF-8 name, the raw data (row-major in the PyTorch shape).

Supported tensor data types: FP32 (0), FP16 (1) and Q5_1 (8, dequantised exactly). The tensors are converted back
to the official BlinkDL names and shapes (undoing rwkv.cpp's decay pre-computation, transposed LoRA matrices,
squeezed mix vectors and v7's concatenated `att.x_rwkvag`).

Public API:
    read_rwkvcpp(path) -> (state_dict of float32 torch tensors, official names/shapes; meta)
    read_rwkvcpp_raw(path) -> {name: float32 numpy array as stored in the file, PyTorch shape}
    scan_rwkvcpp(path) -> (RwkvCppHeader, [RwkvCppTensor]): the layout, validated, without reading tensor data
    dequantize_q5_1(data, n) -> float32 numpy array of n values

Every problem with the file raises CheckpointError(path, one-line problem); nothing is returned half-read.
The file is memory-mapped; sizes from the file are checked against the file length before anything is allocated.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rwkv_core.errors import CheckpointError

__all__ = [
    "MAGIC",
    "DATA_TYPE_NAMES",
    "RwkvCppHeader",
    "RwkvCppTensor",
    "scan_rwkvcpp",
    "read_rwkvcpp_raw",
    "read_rwkvcpp",
    "dequantize_q5_1",
]

MAGIC = 0x67676D66  # bytes 66 6d 67 67 ("fmgg" read as little-endian uint32 "ggmf")
FILE_VERSIONS = (100, 101)  # 101: current quantisation layouts (quantised tensors need it)
HEADER_SIZE = 24
TENSOR_HEADER_SIZE = 12
MAX_NAME_LEN = 4096
MAX_DIMS = 3

# rwkv.cpp's `rwkv_type` codes (rwkv_file_format.inc); 4-6 are formats removed from rwkv.cpp/ggml.
DATA_TYPE_NAMES = {
    0: "FP32",
    1: "FP16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_O",
    5: "Q4_2",
    6: "Q4_3",
    7: "Q5_0",
    8: "Q5_1",
    9: "Q8_0",
    10: "Q8_1",
    11: "Q2_K",
    12: "Q3_K",
    13: "Q4_K",
    14: "Q5_K",
    15: "Q6_K",
    16: "Q8_K",
}
FP32, FP16, Q5_1 = 0, 1, 8
SUPPORTED_TENSOR_TYPES = (FP32, FP16, Q5_1)
QK5_1 = 32  # values per Q5_1 block
Q5_1_BLOCK_BYTES = 24  # fp16 d, fp16 m, uint32 qh, uint8 qs[16]
_Q5_1_BLOCK = np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))])
assert _Q5_1_BLOCK.itemsize == Q5_1_BLOCK_BYTES

# ln_x GroupNorm eps as rwkv.cpp uses it (rwkv-weights README §4): 1e-5 for v5.x, 64e-5 for v6/v7, none for v4.
LN_X_EPS = {"4": None, "5.1": 1e-5, "5.2": 1e-5, "6": 64e-5, "7": 64e-5}

# Bounds used when inverting a stored decay that sits exactly on 0 or 1 (the original is not recoverable there).
# The replacement reproduces the stored value exactly in float32 and float64 and keeps every rate finite.
_RATE_MAX = 1e4  # exp(-1e4) == 0 in float64 and float32
_LOG_MAX = 1e4  # exp(+-1e4) == inf / 0


def _type_name(code: int) -> str:
    return DATA_TYPE_NAMES.get(code, f"unknown type {code}")


@dataclass(frozen=True)
class RwkvCppHeader:
    file_version: int
    n_vocab: int
    n_embed: int
    n_layer: int
    data_type: int

    @property
    def data_type_name(self) -> str:
        return _type_name(self.data_type)


@dataclass(frozen=True)
class RwkvCppTensor:
    """One tensor's place in the file. `shape` is the PyTorch shape (the file's ggml dims reversed)."""

    name: str
    data_type: int
    shape: tuple[int, ...]
    offset: int  # of the raw data, from the start of the file
    nbytes: int

    @property
    def data_type_name(self) -> str:
        return _type_name(self.data_type)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _tensor_nbytes(data_type: int, numel: int) -> int:
    if data_type == FP32:
        return 4 * numel
    if data_type == FP16:
        return 2 * numel
    if data_type == Q5_1:
        return numel // QK5_1 * Q5_1_BLOCK_BYTES
    raise AssertionError(data_type)  # callers only pass supported types


# --------------------------------------------------------------------------------------------------- file access


def _map(path: str | os.PathLike) -> np.ndarray:
    """The whole file as a read-only uint8 array (memory-mapped; a plain empty array for an empty file)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise CheckpointError(path, "not a regular file")
        if size == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.asarray(np.memmap(p, dtype=np.uint8, mode="r"))  # plain ndarray view; keeps the map alive
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(path, f"cannot read the file ({e.strerror or e})") from e


def _parse_header(path, buf: np.ndarray) -> RwkvCppHeader:
    size = buf.size
    head = bytes(buf[:HEADER_SIZE])
    if size < 4:
        raise CheckpointError(path, f"not an rwkv.cpp file: only {size} bytes, too short for the magic number")
    if head[:4] != struct.pack("<I", MAGIC):
        hint = ""
        if head[:4] == b"PK\x03\x04":
            hint = " (looks like a PyTorch .pth zip archive)"
        elif head[:4] == b"GGUF":
            hint = " (looks like a GGUF file)"
        raise CheckpointError(
            path, f"not an rwkv.cpp file: magic bytes {head[:4].hex(' ')}, expected 66 6d 67 67{hint}"
        )
    if size < HEADER_SIZE:
        raise CheckpointError(path, f"truncated header: {size} of {HEADER_SIZE} bytes")
    _, version, n_vocab, n_embed, n_layer, data_type = struct.unpack("<6I", head)
    if version not in FILE_VERSIONS:
        raise CheckpointError(path, f"unsupported rwkv.cpp file version {version} (expected 100 or 101)")
    if data_type not in DATA_TYPE_NAMES:
        raise CheckpointError(path, f"unknown data type {data_type} in the file header")
    for field, value in (("n_vocab", n_vocab), ("n_embed", n_embed), ("n_layer", n_layer)):
        if value == 0 or value >= 2**31:
            raise CheckpointError(path, f"corrupt header: {field} = {value}")
    return RwkvCppHeader(version, n_vocab, n_embed, n_layer, data_type)


def _parse_tensors(path, buf: np.ndarray, header: RwkvCppHeader) -> list[RwkvCppTensor]:
    size = buf.size
    off = HEADER_SIZE
    tensors: list[RwkvCppTensor] = []
    seen: set[str] = set()
    while off < size:
        start = off
        if size - off < TENSOR_HEADER_SIZE:
            raise CheckpointError(
                path, f"truncated: tensor header #{len(tensors)} at byte {start} is cut off ({size - off} bytes left)"
            )
        n_dims, name_len, data_type = struct.unpack("<3i", bytes(buf[off : off + TENSOR_HEADER_SIZE]))
        off += TENSOR_HEADER_SIZE
        if not 1 <= n_dims <= MAX_DIMS:
            raise CheckpointError(
                path, f"corrupt tensor header #{len(tensors)} at byte {start}: {n_dims} dimensions (expected 1 to 3)"
            )
        if not 1 <= name_len <= MAX_NAME_LEN:
            raise CheckpointError(
                path,
                f"corrupt tensor header #{len(tensors)} at byte {start}: name length {name_len} "
                f"(expected 1 to {MAX_NAME_LEN})",
            )
        if size - off < 4 * n_dims + name_len:
            raise CheckpointError(path, f"truncated: tensor header #{len(tensors)} at byte {start} is cut off")
        dims = struct.unpack(f"<{n_dims}i", bytes(buf[off : off + 4 * n_dims]))
        off += 4 * n_dims
        raw_name = bytes(buf[off : off + name_len])
        off += name_len
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(
                path, f"corrupt tensor header #{len(tensors)} at byte {start}: name is not UTF-8 ({raw_name[:32]!r})"
            ) from None
        if not name.isprintable():
            raise CheckpointError(path, f"corrupt tensor header at byte {start}: unprintable name {name[:64]!r}")
        if any(d < 1 for d in dims):
            raise CheckpointError(path, f"corrupt tensor header: tensor {name!r} has dimensions {list(dims)}")
        if data_type not in SUPPORTED_TENSOR_TYPES:
            what = (
                f"unsupported data type {DATA_TYPE_NAMES[data_type]} (code {data_type})"
                if data_type in DATA_TYPE_NAMES
                else f"unknown data type {data_type}"
            )
            raise CheckpointError(path, f"{what} for tensor {name!r}; this reader supports FP32, FP16 and Q5_1")
        shape = tuple(reversed(dims))  # ggml order -> PyTorch order
        numel = 1
        for d in dims:
            numel *= d  # Python int: no overflow
        if data_type == Q5_1:
            if dims[0] % QK5_1:
                raise CheckpointError(
                    path, f"corrupt tensor {name!r}: Q5_1 row length {dims[0]} is not a multiple of {QK5_1}"
                )
            if header.file_version < 101:
                raise CheckpointError(
                    path,
                    f"unsupported: Q5_1 tensor {name!r} in file version {header.file_version} uses an old "
                    "quantisation layout; re-quantise with a current rwkv.cpp",
                )
        nbytes = _tensor_nbytes(data_type, numel)
        if nbytes > size:
            raise CheckpointError(
                path,
                f"corrupt tensor header: tensor {name!r} declares shape {list(shape)} ({nbytes} bytes), "
                f"more than the whole file ({size} bytes)",
            )
        if nbytes > size - off:
            raise CheckpointError(
                path, f"truncated: tensor {name!r} needs {nbytes} bytes of data, only {size - off} remain"
            )
        if name in seen:
            raise CheckpointError(path, f"corrupt file: tensor {name!r} appears twice")
        seen.add(name)
        tensors.append(RwkvCppTensor(name, data_type, shape, off, nbytes))
        off += nbytes
    if not tensors:
        raise CheckpointError(path, "truncated: the file has a header but no tensors")
    return tensors


def scan_rwkvcpp(path: str | os.PathLike) -> tuple[RwkvCppHeader, list[RwkvCppTensor]]:
    """Parse and validate the header and the tensor table of an rwkv.cpp file without reading tensor data."""
    buf = _map(path)
    header = _parse_header(path, buf)
    return header, _parse_tensors(path, buf, header)


# ------------------------------------------------------------------------------------------------- dequantisation


def dequantize_q5_1(data, n: int) -> np.ndarray:
    """Dequantise `n` values (a multiple of 32) stored as ggml Q5_1 blocks in `data` (bytes-like or uint8 array).

    Per 24-byte block: fp16 d, fp16 m, uint32 qh, uint8 qs[16]; for j = 0..15
    lo = (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10), hi = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10),
    y[j] = lo*d + m, y[j+16] = hi*d + m. The product q*d is exact in float32 (5-bit q, 11-bit d), so the result is
    the exactly rounded float32 of q*d + m, as in ggml.
    """
    if n % QK5_1:
        raise ValueError(f"Q5_1 value count {n} is not a multiple of {QK5_1}")
    nb = n // QK5_1
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError("Q5_1 data must be bytes or a uint8 array")
        raw = np.ascontiguousarray(data).reshape(-1)
    else:
        raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < nb * Q5_1_BLOCK_BYTES:
        raise ValueError(f"Q5_1 data too short: {raw.size} bytes for {n} values")
    blocks = raw[: nb * Q5_1_BLOCK_BYTES].view(_Q5_1_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]
    m = blocks["m"].astype(np.float32)[:, None]
    qh = blocks["qh"][:, None]  # (nb, 1) uint32
    qs = blocks["qs"]  # (nb, 16) uint8
    j = np.arange(16, dtype=np.uint32)
    lo = (qs & 0x0F).astype(np.uint8) | (((qh >> j) << 4) & 0x10).astype(np.uint8)
    hi = (qs >> 4).astype(np.uint8) | ((qh >> (j + 12)) & 0x10).astype(np.uint8)
    q = np.concatenate([lo, hi], axis=1)  # (nb, 32): values 0..31
    y = q.astype(np.float32) * d + m
    return y.reshape(n)


def _decode(buf: np.ndarray, t: RwkvCppTensor) -> np.ndarray:
    """A fresh float32 array (PyTorch shape) with the values of tensor `t` (never a view of the file)."""
    chunk = buf[t.offset : t.offset + t.nbytes]
    if t.data_type == FP32:
        arr = chunk.view("<f4").astype(np.float32)  # astype copies
    elif t.data_type == FP16:
        arr = chunk.view("<f2").astype(np.float32)
    else:  # Q5_1
        arr = dequantize_q5_1(chunk, t.numel)
    return arr.reshape(t.shape)


def read_rwkvcpp_raw(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors as stored in the file, in the file's order: rwkv.cpp names, PyTorch shape (ggml dims reversed),
    float32 values (FP16 upcast exactly, Q5_1 dequantised exactly). No conversion to official tensors."""
    return _read_raw(path)[1]


def _read_raw(path) -> tuple[RwkvCppHeader, dict[str, np.ndarray], dict[str, int]]:
    buf = _map(path)
    header = _parse_header(path, buf)
    tensors = _parse_tensors(path, buf, header)
    raw = {t.name: _decode(buf, t) for t in tensors}
    types = {t.name: t.data_type for t in tensors}
    del buf
    return header, raw, types


# ---------------------------------------------------------------------------------------- version and conversion

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _detect_version(path, raw: dict[str, np.ndarray], n_embed: int) -> tuple[str, int]:
    """(version, n_head) from the names and shapes of `blocks.0.att.*` (rwkv-math §2; file names, PyTorch shapes)."""
    att = {k[len("blocks.0.att.") :]: v.shape for k, v in raw.items() if k.startswith("blocks.0.att.")}
    if not att:
        raise CheckpointError(path, "not an RWKV model: no blocks.0.att.* tensors")

    def need(key: str) -> tuple[int, ...]:
        if key not in att:
            raise CheckpointError(path, f"incomplete model: blocks.0.att.{key} is missing")
        return att[key]

    if "k_k" in att:
        version, n_head = "7", need("r_k")[0]
    elif "time_maa_x" in att:
        version, n_head = "6", need("time_faaaa")[0]
    elif "ln_x.weight" in att and "time_faaaa" in att:
        version, n_head = "5.2", need("time_decay")[0]
    elif "ln_x.weight" in att and "time_first" in att:
        if "gate.weight" in att:
            raise CheckpointError(
                path, "unsupported architecture: gated RWKV-5 preview (ln_x, time_first and gate)"
            )
        shape = need("time_decay")
        n_head = int(np.prod(shape))
        if n_head == n_embed:
            raise CheckpointError(path, "unsupported architecture: RWKV-5 layout with one time_decay per channel")
        version = "5.1"
    elif "time_decay" in att and "time_first" in att:
        version, n_head = "4", 1
    else:
        raise CheckpointError(path, "unrecognised RWKV architecture: blocks.0.att has no known time-mix tensors")
    if n_head < 1 or n_embed % n_head:
        raise CheckpointError(path, f"inconsistent model: {n_head} heads do not divide n_embed = {n_embed}")
    return version, n_head


def _reshape(path, name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if a.size != int(np.prod(shape)):
        raise CheckpointError(path, f"unexpected shape {list(a.shape)} for {name} (expected {list(shape)} elements)")
    return a.reshape(shape)


def _transpose2d(path, name: str, a: np.ndarray, cols: int) -> np.ndarray:
    """`.T` of a 2-D matrix whose stored (PyTorch-order) shape must have `cols` in one of its axes."""
    if a.ndim != 2 or cols not in a.shape:
        raise CheckpointError(path, f"unexpected shape {list(a.shape)} for {name}")
    return np.ascontiguousarray(a.T)


def _inv_exp_neg_exp(s: np.ndarray) -> np.ndarray:
    """w with exp(-exp(w)) == s, in float64 (v5 decays). s = 1 -> w = -1e4 (rate 0), s = 0 -> w = log(1e4)."""
    s64 = np.clip(s.astype(np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        rate = np.clip(-np.log(s64), 0.0, _RATE_MAX)
        w = np.maximum(np.log(rate), -_LOG_MAX)
    return w


def _log_clamped(x: np.ndarray) -> np.ndarray:
    """log(x) in float64 with x <= 0 -> -1e4 and inf -> 1e4 (exp reproduces 0 / inf)."""
    x64 = np.clip(x.astype(np.float64), 0.0, None)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(x64), -_LOG_MAX, _LOG_MAX)


def _convert(path, raw: dict[str, np.ndarray], version: str, C: int, H: int) -> dict[str, np.ndarray]:
    N = C // H
    vec = (1, 1, C)
    out: dict[str, np.ndarray] = {}
    for name, a in raw.items():
        m = _BLOCK_KEY.match(name)
        if not m:
            out[name] = a
            continue
        sub = m.group(2)  # e.g. "att.time_decay"
        prefix = name[: len(name) - len(sub)]
        leaf = sub.split(".", 1)[1] if "." in sub else sub
        is_att = sub.startswith("att.")

        if sub in ("att.time_maa_w1", "att.time_maa_w2", "att.time_decay_w1", "att.time_decay_w2"):
            if version != "6":
                out[name] = a
            elif sub == "att.time_maa_w2":  # file (5, C, Dm) -> official (5, Dm, C)
                if a.ndim != 3 or a.shape[1] != C:
                    raise CheckpointError(path, f"unexpected shape {list(a.shape)} for {name}")
                out[name] = np.ascontiguousarray(a.transpose(0, 2, 1))
            else:  # time_maa_w1 (5Dm, C) -> (C, 5Dm); time_decay_w1 (Dd, C) -> (C, Dd); time_decay_w2 (C, Dd) -> (Dd, C)
                out[name] = _transpose2d(path, name, a, C)
        elif leaf.startswith("time_mix_") or leaf.startswith("time_maa_"):
            out[name] = _reshape(path, name, a, vec)
        elif sub == "att.time_decay":
            if version == "4":  # file: -exp(w)
                out[name] = _log_clamped(-_reshape(path, name, a, (C,))).astype(np.float32)
            elif version == "5.1":  # file: exp(-exp(w)), (H,1,1)
                out[name] = _inv_exp_neg_exp(_reshape(path, name, a, (H,))).astype(np.float32)
            elif version == "5.2":  # file: exp(-exp(w)), (H,N,1); invert in float64
                out[name] = _inv_exp_neg_exp(_reshape(path, name, a, (H, N))).astype(np.float32)
            elif version == "6":  # file: raw w, (H,N,1)
                out[name] = _reshape(path, name, a, vec)
            else:
                out[name] = a
        elif sub == "att.time_first":
            if version == "4":
                out[name] = _reshape(path, name, a, (C,))
            elif version == "5.1":  # file: exp(u), (H,1,1)
                out[name] = _log_clamped(_reshape(path, name, a, (H,))).astype(np.float32)
            else:
                out[name] = a
        elif sub == "att.time_faaaa" and version in ("5.2", "6"):
            out[name] = _reshape(path, name, a, (H, N))
        elif version == "7" and sub == "att.x_rwkvag":
            parts = _reshape(path, name, a, (6, C))
            for i, x in enumerate(("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")):
                out[f"{prefix}att.{x}"] = np.ascontiguousarray(parts[i]).reshape(vec)
        elif version == "7" and is_att and re.fullmatch(r"[wavg][12]", leaf):
            out[name] = _transpose2d(path, name, a, C)
        elif version == "7" and sub in ("att.w0", "att.a0", "att.v0", "att.k_k", "att.k_a", "ffn.x_k"):
            out[name] = _reshape(path, name, a, vec)
        elif version == "7" and sub == "att.r_k":
            out[name] = _reshape(path, name, a, (H, N))
        else:
            out[name] = a
    return out


def _check_model(path, header: RwkvCppHeader, raw: dict[str, np.ndarray]) -> None:
    for key in ("emb.weight", "head.weight", "ln_out.weight"):
        if key not in raw:
            raise CheckpointError(path, f"incomplete model: {key} is missing")
    emb = raw["emb.weight"].shape
    if emb != (header.n_vocab, header.n_embed):
        raise CheckpointError(
            path,
            f"inconsistent model: emb.weight is {list(emb)} but the header says n_vocab={header.n_vocab}, "
            f"n_embed={header.n_embed}",
        )
    layers = {int(m.group(1)) for k in raw if (m := _BLOCK_KEY.match(k))}
    if layers != set(range(header.n_layer)):
        found = f"{len(layers)} (max index {max(layers)})" if layers else "none"
        raise CheckpointError(
            path, f"inconsistent model: the header says n_layer={header.n_layer}, the file has blocks {found}"
        )


def read_rwkvcpp(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an rwkv.cpp .bin file and return (state_dict in the OFFICIAL BlinkDL names and shapes, float32
    tensors; meta).

    meta: format "rwkv.cpp", file_version, data_type (the header's whole-file type name, e.g. "FP32", "Q5_1"),
    n_vocab, n_embed, n_layer (from the header, checked against the tensors), version_hint ("4", "5.1", "5.2", "6",
    "7"), ln_x_eps as rwkv.cpp uses it (1e-5 for v5.x, 64e-5 for v6/v7, None for v4), n_head (1 for v4), head_size
    (None for v4) and tensor_data_types ({type name: number of tensors stored in it}).

    v7 files from rwkv.cpp have no `blocks.0.att.v0/v1/v2` (layer 0 has no value residual); none are invented.
    Stored decays of exactly 0 or 1 cannot be inverted; they get a finite value that reproduces them exactly.
    """
    header, raw, types = _read_raw(path)
    _check_model(path, header, raw)
    version, n_head = _detect_version(path, raw, header.n_embed)
    official = _convert(path, raw, version, header.n_embed, n_head)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in official.items()}
    counts: dict[str, int] = {}
    for code in types.values():
        counts[_type_name(code)] = counts.get(_type_name(code), 0) + 1
    meta = {
        "format": "rwkv.cpp",
        "file_version": header.file_version,
        "data_type": header.data_type_name,
        "n_vocab": header.n_vocab,
        "n_embed": header.n_embed,
        "n_layer": header.n_layer,
        "version_hint": version,
        "ln_x_eps": LN_X_EPS[version],
        "n_head": n_head,
        "head_size": None if version == "4" else header.n_embed // n_head,
        "tensor_data_types": counts,
    }
    return state, meta
