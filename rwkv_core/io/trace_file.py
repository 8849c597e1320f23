"""The project's trace format: one `.npz` file with what a prompt did inside the model.

Keys (T tokens, C channels, V vocabulary, K top-k; float32 unless said; with `float16` the [T, C], [T, V] and
[H, T, T] arrays are float16, each one that would overflow float16 kept float32):
  tokens [T] int64;
  the logits, one of: logits [T, V] (full), or logits_topk_ids [T, K] int64 and logits_topk_logp [T, K] float32
  (the K most likely next tokens at every position and their log-probabilities, log-softmax over all V), or none;
  per exported layer l: r_l{l}, k_l{l}, v_l{l} [T, C]; the decay as logw_l{l} = ln w [T, C] (w the per-step decay
  in (0, 1); formats 1 and 2 stored w_l{l}: float32 w keeps a rate of 1e-4 to only ~0.1 %, float16 w would round
  every decay slower than ~2,000 tokens to 1, ln w keeps the rate to the storage's own precision); resid_l{l}
  [T, C] (the residual stream after block l; optional); v7 also a_l{l} [T, C], the
  parameters k_k_l{l}, k_a_l{l} [C] and, without float16, kk_l{l}, ktilde_l{l} [T, C] (with float16 they are
  recomputed from k, a, k_k and k_a when read); the bonus: v4-v6 u_l{l} (v4 time_first [C], v5.1 exp(time_first),
  v5.2/v6 time_faaaa as [H, N]), v7 r_k_l{l} [H, N];
  optional (export --scores): attn_l{l}, span_l{l} [H, T, T], zero above the diagonal;
  optional (export --lens): the logit lens (`rwkv_core.analysis.lens`) of every exported layer l, lens_logp_l{l} [T]
  float32 (the log-probability at position t of token t + 1 read off the residual stream after block l, NaN at the
  last position), lens_rank_l{l} [T] int64 (its rank, 0 = top-1; -1 at the last position), lens_top_l{l} [T, 10]
  int64 (the ten most likely tokens), and the same of the embedding after ln0 as lens_logp_embed, lens_rank_embed,
  lens_top_embed;
  optional (export --state [--state-positions 3,17]): state_l{l}, the WKV state of layer l after the last token as
  the official `rwkv` package stores it (v5/v6 [H, key, value], v7 [H, value, key], v4 [3, C]: numerator aa,
  denominator bb, exponent pp), float32; with positions a leading axis, one entry per position ([P, ...], the
  positions in meta.stored.state_positions);
  meta: a JSON string (format version, model config, checkpoint file name, tokenizer kind, token texts, layers,
  what was stored, conventions). A file opens without a model; `load_trace` refuses anything malformed with a
  one-line message; `Trace.layer` / `Trace.layer_arrays` give every array as float32, derived ones recomputed.

Format versions: 3 adds the options above (top-k logits, float16, no residual stream) and stores ln w for w; 2
stores the arrays uncompressed (activations and logits are float noise to zlib: compressing a 12-layer,
65,536-vocabulary trace took most of an export and saved under 10 %); 1 was the same keys, compressed. All open with
`load_trace`; a file from a newer format is refused with a message saying so.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from rwkv_core.errors import RWKVInspectorError
from rwkv_core.model.config import VERSIONS, ModelConfig

FORMAT_VERSION = 3  # top-k logits, float16, optional residual stream; versions 1 (compressed) and 2 still open
READABLE_VERSIONS = (1, 2, 3)
MAX_TRACE_BYTES = 2 << 30  # refuse to open anything that would unpack to more than 2 GiB
FLOAT16_MAX = 65504.0  # the largest finite float16: an array beyond it stays float32
PREDICTIONS_K = 16  # the top-k the pages show (the token view's hover): the download's default
COMPACT = {"logits_topk": PREDICTIONS_K, "float16": True, "residual": False}  # the app's default download
LOGITS_CHUNK = 256  # positions unembedded at once when the logits are built (bounds the [chunk, V] temporary)
TOKEN_ARRAYS = ("r", "k", "v", "w", "logw", "resid", "a", "kk", "ktilde")  # the [T, C] arrays of a layer
LAYER_EXTRAS = ("lens_", "state_")  # per-layer keys that are not activations: the logit lens, the WKV states

class TraceFileError(RWKVInspectorError):
    """A trace file is malformed or hostile."""


def bonus_of(model, layer: int) -> tuple[str, np.ndarray]:
    """The per-layer bonus parameter as stored in a trace (`TimeMix.bonus`): ('u', ...) for v4-v6 (v4 [C], v5.1
    exp(time_first), v5.2/v6 time_faaaa as [H, N]), ('r_k', [H, N]) for v7."""
    bonus = model.blocks[layer].att.bonus().detach().float().cpu().numpy()
    return ("r_k" if model.cfg.version == "7" else "u"), bonus


def _stored(x: torch.Tensor, float16: bool) -> np.ndarray:
    """A captured tensor as stored: float16 where asked and every value fits, else float32 (numpy, on the CPU)."""
    x = x.detach().float()
    if float16 and bool(torch.isfinite(x).all()) and float(x.abs().max()) <= FLOAT16_MAX:
        return x.half().cpu().numpy()
    return x.cpu().numpy()


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits of every position [T, V] as (ids [T, k] int64, log-probabilities [T, k] float32):
    log-softmax over the whole vocabulary, so exp gives the probabilities a full-logits file would."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logp, min(int(k), logp.shape[-1]), dim=-1)
    return top.indices.cpu().numpy().astype(np.int64), top.values.cpu().numpy().astype(np.float32)


def trace_keys(cfg: ModelConfig, layer: int, *, float16: bool = False, residual: bool = True) -> dict[str, tuple]:
    """The arrays one exported layer adds to a trace, key -> shape (T as None): what `build_trace` writes and
    `estimate_trace_bytes` counts."""
    C, l = cfg.dim_att, layer
    keys: dict[str, tuple] = {f"{n}_l{l}": (None, C) for n in ("r", "k", "v")}
    keys[f"logw_l{l}"] = (None, C)
    if residual:
        keys[f"resid_l{l}"] = (None, cfg.n_embd)
    if cfg.version == "7":
        keys[f"a_l{l}"] = (None, C)
        keys.update({f"k_k_l{l}": (C,), f"k_a_l{l}": (C,), f"r_k_l{l}": (cfg.n_head, cfg.head_size)})
        if not float16:
            keys.update({f"kk_l{l}": (None, C), f"ktilde_l{l}": (None, C)})
    else:
        keys[f"u_l{l}"] = (C,) if cfg.version == "4" else (cfg.n_head, cfg.head_size)
    return keys


def estimate_trace_bytes(cfg: ModelConfig, n_tokens: int, *, layers: Optional[Iterable[int]] = None,
                         logits_topk: Optional[int] = None, float16: bool = False, residual: bool = True,
                         scores: bool = False, lens: bool = False, state_positions: int = 0) -> int:
    """The size of the file `build_trace` + `save_trace` write with these options, before anything is computed: the
    arrays' bytes plus each member's .npy and zip headers (exact up to float16 arrays kept float32 for range)."""
    T = int(n_tokens)
    layers = range(cfg.n_layer) if layers is None else list(layers)
    big = 2 if float16 else 4
    members: list[int] = [8 * T]  # tokens
    if logits_topk is None:
        members.append(big * T * cfg.vocab_size)
    elif logits_topk > 0:
        k = min(int(logits_topk), cfg.vocab_size)
        members += [8 * T * k, 4 * T * k]
    for l in layers:
        for shape in trace_keys(cfg, l, float16=float16, residual=residual).values():
            members.append((big if shape[0] is None else 4) * math.prod(T if n is None else n for n in shape))
        if scores:
            members += [big * cfg.n_head * T * T] * 2
        if lens:
            members += [4 * T, 8 * T, 8 * T * 10]
        if state_positions:
            one = 3 * cfg.dim_att if cfg.version == "4" else cfg.n_head * cfg.head_size ** 2
            members.append(4 * one * int(state_positions))
    if lens:
        members += [4 * T, 8 * T, 8 * T * 10]  # the embedding's lens
    meta_bytes = 2048 + 24 * T  # the JSON meta (token texts as 4-byte unicode, roughly)
    return sum(members) + meta_bytes + 250 * (len(members) + 1)


def _layer_names(version: str, float16: bool, residual: bool) -> dict[str, str]:
    """Hook point (relative to `blocks.{l}.`) -> trace key prefix, for the options."""
    names = {"att.hook_r": "r", "att.hook_k": "k", "att.hook_v": "v"}
    names["att.hook_logw"] = "logw"
    if residual:
        names["hook_resid_post"] = "resid"
    if version == "7":
        names["att.hook_a"] = "a"
        if not float16:
            names.update({"att.hook_kk": "kk", "att.hook_k_tilde": "ktilde"})
    return names


@torch.no_grad()
def build_trace(model, tokens: Sequence[int], *, layers: Optional[Iterable[int]] = None, token_texts=None,
                tokenizer_kind: str = "", checkpoint_name: str = "", scores: bool = False,
                logits_topk: Optional[int] = None, float16: bool = False, residual: bool = True,
                lens: bool = False, state: bool = False, state_positions: Optional[Sequence[int]] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> dict[str, np.ndarray]:
    """Run the prompt once with capture and return the trace arrays (see module docstring).

    logits_topk: None keeps the full logits [T, V]; K >= 1 keeps the K most likely next tokens per position; 0 none.
    float16: the [T, C], [T, V] and [H, T, T] arrays as float16 (v7 kk, ktilde left to be recomputed). residual: also the residual stream after each exported block. lens: the logit lens of the embedding and
    every exported layer (`rwkv_core.analysis.lens.trace_lens_keys`), read off the residual stream as it passes.
    state: the WKV state of every exported layer after the last token, state_l{l}; state_positions: after each of
    these tokens instead, [P, ...] (implies state). progress(done, total) is called after
    each block of the forward pass and after the logits (total = n_layer + 1); an exception it raises stops the build.
    Each capture is converted as it comes, so only the stored arrays are held, never a float32 copy of them all."""
    from rwkv_core.analysis import lens as lens_

    cfg = model.cfg
    layers = sorted(set(range(cfg.n_layer) if layers is None else (int(l) for l in layers)))
    bad = [l for l in layers if not 0 <= l < cfg.n_layer]
    if bad:
        raise TraceFileError(f"layer {bad[0]} does not exist: the model has layers 0..{cfg.n_layer - 1}")
    if logits_topk is not None and int(logits_topk) < 0:
        raise TraceFileError(f"logits_topk must be 0 (no logits), a positive count or None (all), not {logits_topk}")
    T = len(tokens)
    positions = None if state_positions is None else [int(p) for p in state_positions]
    if positions is not None and not all(0 <= p < T for p in positions):
        raise TraceFileError(f"state positions must be tokens of the prompt (0..{T - 1}), got {positions}")
    state_at = positions if positions is not None else ([T - 1] if state else [])
    names = _layer_names(cfg.version, float16, residual)
    total, last = cfg.n_layer + 1, f"blocks.{cfg.n_layer - 1}.hook_resid_post"
    out: dict[str, np.ndarray] = {"tokens": np.asarray(tokens, dtype=np.int64)}
    final: dict[str, torch.Tensor] = {}
    states: dict[str, list] = {}
    wanted = torch.from_numpy(lens_.next_token_targets(tokens))
    lens_stage = {"blocks.0.hook_resid_pre": "embed"} if lens else {}
    if lens:
        lens_stage.update({f"blocks.{l}.hook_resid_post": f"l{l}" for l in layers})

    def record(t: torch.Tensor, hook) -> None:
        block, rest = hook.name[len("blocks."):].split(".", 1)
        if rest == "att.hook_state":
            states.setdefault(block, []).append(t[0].detach().float().cpu())
            return
        if rest in names and int(block) in layers:
            out[f"{names[rest]}_l{block}"] = _stored(t[0], float16)
        if hook.name in lens_stage:  # the lens of this stage, before the stream moves on
            logp, rank, top, _ = lens_.read_stage(model.unembed, t[0], wanted)
            key = lens_stage[hook.name]
            out[f"lens_logp_{key}"], out[f"lens_rank_{key}"] = logp.numpy(), rank.numpy()
            out[f"lens_top_{key}"] = top.numpy()
        if hook.name == last:
            final["x"] = t[0]
        if rest == "hook_resid_post" and progress is not None:
            progress(int(block) + 1, total)

    hooked = {f"blocks.{l}.{n}" for l in layers for n in names} | {f"blocks.{l}.hook_resid_post" for l in
                                                                   range(cfg.n_layer)} | set(lens_stage)
    if state_at:
        hooked |= {f"blocks.{l}.att.hook_state" for l in layers}
    model.run_with_hooks(list(tokens), [(sorted(hooked), record)], logits="none", state_positions=state_at)
    for block, got in states.items():
        order = {p: i for i, p in enumerate(sorted(set(state_at)))}  # the hook fires in token order
        stacked = torch.stack([got[order[p]] for p in state_at]).numpy()
        out[f"state_l{block}"] = stacked if positions is not None else stacked[0]
    if logits_topk != 0:
        out.update(_logits(model, final["x"], logits_topk, float16))
    if progress is not None:
        progress(total, total)
    for l in layers:
        bname, bval = bonus_of(model, l)
        out[f"{bname}_l{l}"] = bval
        if cfg.version == "7":
            att = model.blocks[l].att
            out[f"k_k_l{l}"] = att.k_k.detach().float().reshape(-1).cpu().numpy()
            out[f"k_a_l{l}"] = att.k_a.detach().float().reshape(-1).cpu().numpy()
    if scores:
        from rwkv_core.analysis.scores import trace_scores

        for k, v in trace_scores(Trace(out, {"layers": layers, "config": cfg.to_dict()}).float_arrays(), cfg,
                                 layers).items():
            out[k] = _stored(torch.from_numpy(v), float16)
    stored = {"logits": "none" if logits_topk == 0 else ("full" if logits_topk is None else "topk"),
              "logits_topk": logits_topk or None, "float16": bool(float16), "residual": bool(residual)}
    if lens:
        stored["lens"] = True
    if state_at:
        stored.update(state=True, state_positions=positions)  # positions None: after the last token only
    meta = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "checkpoint": checkpoint_name,
            "tokenizer": tokenizer_kind, "token_texts": list(token_texts) if token_texts is not None else None,
            "layers": layers, "stored": stored,
            "conventions": {"w": "per-step decay in (0,1)", "logw": "ln w", "span": "includes w_j",
                            "resid": "after block l", "k_v7": "k before the a-modification",
                            "logits_topk_logp": "log-softmax over the whole vocabulary",
                            "lens": "lens_logp_l{l}: log-probability of token t+1 at position t after block l "
                                    "(NaN at the last); embed: after ln0",
                            "state": "v5/v6 [H, key, value], v7 [H, value, key], v4 [3, C] (aa, bb, pp); "
                                     "leading axis per position with state_positions"}}
    out["meta"] = np.array(json.dumps(meta))
    return out


def _logits(model, x: torch.Tensor, logits_topk: Optional[int], float16: bool) -> dict[str, np.ndarray]:
    """The logits part of a trace from the last block's output x [T, C], LOGITS_CHUNK positions at a time."""
    T, V = x.shape[0], model.cfg.vocab_size
    if logits_topk is None:
        full = np.empty((T, V), dtype=np.float16 if float16 else np.float32)
        for s in range(0, T, LOGITS_CHUNK):
            full[s:s + LOGITS_CHUNK] = model.unembed(x[s:s + LOGITS_CHUNK]).float().cpu().numpy()
        if float16 and not np.isfinite(full).all():  # a logit beyond float16's range: the whole array in float32
            full = np.concatenate([model.unembed(x[s:s + LOGITS_CHUNK]).float().cpu().numpy()
                                   for s in range(0, T, LOGITS_CHUNK)])
        return {"logits": full}
    k = min(int(logits_topk), V)
    ids, logp = np.empty((T, k), np.int64), np.empty((T, k), np.float32)
    for s in range(0, T, LOGITS_CHUNK):
        ids[s:s + LOGITS_CHUNK], logp[s:s + LOGITS_CHUNK] = topk_logprobs(model.unembed(x[s:s + LOGITS_CHUNK]), k)
    return {"logits_topk_ids": ids, "logits_topk_logp": logp}


def save_trace(arrays: dict[str, np.ndarray], path: Union[str, os.PathLike]) -> None:
    """Write the arrays of `build_trace` as an uncompressed `.npz` to a path or binary file."""
    np.savez(path, **arrays)


@dataclass
class Trace:
    """A loaded trace: arrays by key (as stored: float16 or float32) and the parsed metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> np.ndarray:
        return self.arrays["tokens"]

    @property
    def layers(self) -> list[int]:
        return list(self.meta.get("layers", []))

    def layer(self, name: str, l: int) -> np.ndarray:
        """Array `name` of layer l as float32 (name as in the file: r, k, v, w, logw, resid, a, kk, ktilde, u, r_k,
        attn, span), recomputed where the file leaves it out: w from logw and back, v7 kk and ktilde from k, a, k_k,
        k_a. KeyError where the file holds neither it nor what it comes from."""
        key = f"{name}_l{l}"
        if key in self.arrays:
            return _float32(self.arrays[key])
        g = lambda n: self.layer(n, l)  # noqa: E731
        if name == "w" and f"logw_l{l}" in self.arrays:
            return np.exp(g("logw"))
        if name == "logw" and f"w_l{l}" in self.arrays:
            with np.errstate(divide="ignore"):
                return np.log(g("w"))  # w underflowed to 0: -inf, as the model's own log would give
        if name in ("kk", "ktilde") and all(f"{n}_l{l}" in self.arrays for n in ("k", "a", "k_k", "k_a")):
            return _v7_keys(g("k"), g("a"), g("k_k"), g("k_a"), int((self.meta.get("config") or {}).get("n_head", 0)),
                            name, l)
        raise KeyError(f"the trace has no {name} of layer {l}")

    def layer_arrays(self, l: int) -> dict[str, np.ndarray]:
        """Every array of layer l keyed as in a full file (r_l{l}, ..., w_l{l}, v7 kk_l{l} and ktilde_l{l}), float32,
        with what the file leaves out recomputed (w from logw_l{l}, which is kept too: the decay without rounding)."""
        names = {k[: -len(f"_l{l}")] for k in self.arrays if k.endswith(f"_l{l}") and not k.startswith(LAYER_EXTRAS)}
        if "logw" in names:
            names.add("w")
        if {"k", "a", "k_k", "k_a"} <= names:
            names |= {"kk", "ktilde"}
        return {f"{n}_l{l}": self.layer(n, l) for n in sorted(names)}

    def float_arrays(self, layers: Optional[Iterable[int]] = None) -> dict[str, np.ndarray]:
        """`layer_arrays` of these layers (default: the trace's) in one dict, what the score and decay code reads."""
        out: dict[str, np.ndarray] = {}
        for l in self.layers if layers is None else layers:
            out.update(self.layer_arrays(int(l)))
        return out

    @property
    def has_logits(self) -> bool:
        return "logits" in self.arrays or "logits_topk_ids" in self.arrays

    def predictions(self, k: int = PREDICTIONS_K) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The k most likely next tokens at every position: (ids [T, k'] int64, probabilities [T, k'] float32), from
        the full logits or the stored top-k (k' = min(k, what was stored)); None for a trace without logits."""
        if "logits_topk_ids" in self.arrays:
            k = max(1, min(int(k), self.arrays["logits_topk_ids"].shape[1]))
            return (self.arrays["logits_topk_ids"][:, :k].astype(np.int64),
                    np.exp(_float32(self.arrays["logits_topk_logp"][:, :k])))
        if "logits" in self.arrays:
            ids, logp = topk_logprobs(torch.from_numpy(_float32(self.arrays["logits"])), k)
            return ids, np.exp(logp)
        return None


def _float32(a: np.ndarray) -> np.ndarray:
    """A stored float array as float32 (float16 files are cast on reading; float32 is returned as is)."""
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _v7_keys(k: np.ndarray, a: np.ndarray, k_k: np.ndarray, k_a: np.ndarray, n_head: int, name: str,
             l: int) -> np.ndarray:
    """v7's removal key kk = normalize(k * k_k) per head, or the written key ktilde = k (1 + (a - 1) k_a), [T, C]
    float32, from a float16 file's k, a [T, C] and the layer's k_k, k_a [C] (as the model computes them)."""
    T, C = k.shape
    if a.shape != k.shape or k_k.shape != (C,) or k_a.shape != (C,) or n_head <= 0 or C % n_head:
        raise TraceFileError(f"the trace's v7 keys of layer {l} do not fit together (k {list(k.shape)}, a "
                             f"{list(a.shape)}, k_k {list(k_k.shape)}, k_a {list(k_a.shape)}, {n_head} heads)")
    if name == "ktilde":
        return k * (1 + (a - 1) * k_a)
    kk = (k * k_k).reshape(T, n_head, C // n_head)
    return (kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)).reshape(T, C).astype(np.float32)


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
        if k in ("tokens", "logits_topk_ids"):
            if k == "logits_topk_ids" and (a.dtype.kind not in "iu" or a.ndim != 2 or a.shape[0] != T
                                           or (a.size and int(a.min()) < 0)):
                raise TraceFileError(f"{label}: 'logits_topk_ids' must be [T, K] token ids with T = {T}")
            continue
        if k.startswith(("lens_top_", "lens_rank_")):
            top = k.startswith("lens_top_")
            if a.dtype.kind not in "iu" or a.ndim != (2 if top else 1) or a.shape[0] != T or (
                    a.size and int(a.min()) < (0 if top else -1)):
                raise TraceFileError(f"{label}: '{k}' must be [T{', K' if top else ''}] "
                                     f"{'token ids' if top else 'ranks'} with T = {T}")
            continue
        if k.startswith("lens_logp_") and a.shape != (T,):
            raise TraceFileError(f"{label}: '{k}' must be [T] with T = {T}")
        if a.dtype.kind != "f":
            raise TraceFileError(f"{label}: '{k}' has dtype {a.dtype}, expected floating point")
        if k == "logits" and (a.ndim != 2 or a.shape[0] != T):
            raise TraceFileError(f"{label}: 'logits' must be [T, V] with T = {T}")
        if k == "logits_topk_logp" and a.shape != arrays.get("logits_topk_ids", np.empty(0)).shape:
            raise TraceFileError(f"{label}: 'logits_topk_logp' must have the shape of 'logits_topk_ids' [T, K]")
        if k.split("_l")[0] in TOKEN_ARRAYS and (a.ndim != 2 or a.shape[0] != T):
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
    ids = trace.arrays.get("logits_topk_ids")
    if ids is not None and ids.size and int(ids.max()) >= cfg.vocab_size:
        raise TraceFileError(f"the trace's top-k logits name token {int(ids.max())}, outside the vocabulary of "
                             f"{cfg.vocab_size}")
    for k, a in trace.arrays.items():
        if k.startswith("lens_top_") and a.size and int(a.max()) >= cfg.vocab_size:
            raise TraceFileError(f"the trace's {k} names token {int(a.max())}, outside the vocabulary of "
                                 f"{cfg.vocab_size}")
    logits = trace.arrays.get("logits")
    if logits is not None and logits.shape[1] != cfg.vocab_size:
        raise TraceFileError(f"the trace's logits have {logits.shape[1]} columns for a vocabulary of {cfg.vocab_size}")
    texts = trace.meta.get("token_texts")
    if not (isinstance(texts, list) and len(texts) == len(tokens) and all(isinstance(t, str) for t in texts)):
        texts = [str(t) for t in tokens]
    return TraceContents(cfg, list(layers), tokens, list(texts))
