"""Implicit attention scores A[h, j, i] ("R-W-K dot") and influence spans S[h, j, i] ("W-K norm") for RWKV v4-v7.

Definitions (issue 4, rwkv-math §7-8; tokens 0-based, query j reads source i <= j, everything zero above the
diagonal):

- Score A[h, j, i]: the coefficient of v_i in head h's WKV output at token j, before ln_x and the gate, so that
  sum_i A[h, j, i] v_i = WKV output (`hook_wkv`). Exactly:
    v5.x/v6  i < j: sum_c r_j[c] (prod_{t=i+1}^{j-1} w_t[c]) k_i[c];   i = j: sum_c r_j[c] u[c] k_j[c]
    v7       i < j: k~_i G_{i+1} ... G_j r_j^T;                          i = j: k~_j . r_j
             with G_t = diag(w_t) - kk_t^T (kk_t * a_t) (update first, then read); the r_k bonus is not part of A
             (the model adds it after ln_x).
    v4       per channel c: the normalised weight of token i in wkv_j[c] (rows sum to 1 per channel); v4 has no
             heads, so a "head" here is a group of `v4_group_size(C)` (= 64) consecutive channels and A is the mean
             of the per-channel weights over the group (rows of the mean still sum to 1). The identity holds per
             channel (`full_scores(..., per_channel=True)`), not for the group mean.
  `diagonal=False` zeroes A[j, j] (the bonus term u for v4-v6, k~_j . r_j for v7); v4 keeps its normaliser.
- Span S[h, j, i]: the norm over the head's channels of what is left of token i's key in the state after token j
  has been processed:
    v5.x/v6  ||k_i * prod_{t=i+1}^{j} w_t||  (includes w_j, as web-rwkv-inspector's code; `variant="read"` stops at
             w_{j-1}, i.e. what query j can read, rwkv-math §8 span_read);  i = j: ||k_j||
    v7       ||k~_i G_{i+1} ... G_j||;  i = j: ||k~_j||  (read follows update: both variants coincide)
    v4       the L2 norm over the group's channels of token i's share of the state's normaliser after token j,
             exp(k_i + sum_{t=i+1}^{j} log w_t) / sum_{i' <= j} exp(k_i' + sum_{t=i'+1}^{j} log w_t)  (in [0, 1];
             `variant="read"` uses the state after token j-1 for i < j).

API: `capture_score_inputs` / `capture_with_logits` (one forward, hook points) or `ScoreInputs.from_arrays` /
`inputs_from_trace` (a trace file, no model) give a `ScoreInputs` per layer; `full_scores`, `full_spans` give one
head's T x T matrix; `row_and_column` gives the selected token's row and column for every (layer, head);
`trace_scores` is `export --scores`; `wkv_from_scores` checks the identity; `topk_predictions`, `auto_scale`,
`span_curves`, `span_reach`, `overview_values` serve the pages. Figures: `rwkv_core.figures.scores`.

Numerics: float32 results on the inputs' device. v4-v6 decay products are exp of differences of float64 cumulative
log-decays; between a query chunk and an earlier source chunk the factor is split in three at the chunk borders,
each exponent <= 0 (no exp of an unbounded cumulative sum, no division of cumulative products), and the cross
blocks are matmuls. v7 uses the chunked delta-rule form of `rwkv_core.model.wkv` (chunk-local exponents within e^{+-40}).
Exponents below -87 give exact zeros, and subnormal floats are flushed to zero while computing (both would
otherwise put the CPU on paths ~100x slower; such values are 0 for any score). Memory: O(T^2) for the one head
asked (`full_scores`, `full_spans`), O(T N) per (layer, head) for the selected token (`row_and_column`).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Union

import numpy as np
import torch

from rwkv_core.errors import InputError
from rwkv_core.model.config import VERSIONS
from rwkv_core.model.threads import recurrence_threads
from rwkv_core.model.wkv import V7_MAX_CHUNK_EXP, v7_chunk_terms

V4_GROUP_SIZE = 64  # v4 channels per display "head"
LOGW_FLOOR = -1e4  # per-step log-decays below this (decay < e^-10000, i.e. 0 in any float) are clamped to it
V7_LOGW_FLOOR = -V7_MAX_CHUNK_EXP  # v7 models have log w >= -e^-0.5; arbitrary v7 inputs are clamped here
SPAN_VARIANTS = ("state", "read")

ArrayLike = Union[torch.Tensor, np.ndarray]


def v4_group_size(C: int) -> int:
    """Channels per v4 display head: 64, or the largest divisor of C below 64 when C is not a multiple of 64."""
    if C % V4_GROUP_SIZE == 0:
        return V4_GROUP_SIZE
    return max(d for d in range(1, min(V4_GROUP_SIZE, C) + 1) if C % d == 0)


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class ScoreInputs:
    """What scores and spans of one layer need, float32, [T, H, N] per token (any device).

    version: "4", "5.1", "5.2", "6" or "7". r, k (v7: the modified key k~ that is written), v (v7: after the value
    residual), logw (log of the per-step decay, <= 0; static decays broadcast): [T, H, N]. u [H, N]: bonus (v5.2/v6
    time_faaaa, v5.1 exp(time_first), v4 time_first in log space). v7 also kk (unit removal key) and a
    (in-context rate) [T, H, N] and r_k [H, N]. wkv [T, H, N]: the captured WKV output (optional, for checks).
    For v4 H is the number of channel groups (see `v4_group_size`).
    """

    version: str
    r: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    logw: torch.Tensor
    u: Optional[torch.Tensor] = None
    r_k: Optional[torch.Tensor] = None
    kk: Optional[torch.Tensor] = None
    a: Optional[torch.Tensor] = None
    wkv: Optional[torch.Tensor] = None
    layer: Optional[int] = None

    def __post_init__(self) -> None:
        self.version = _version(self.version)
        for f in fields(self):
            x = getattr(self, f.name)
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(x))
            if isinstance(x, torch.Tensor):
                setattr(self, f.name, x.detach().to(torch.float32))
        if self.r.dim() != 3:
            raise InputError(f"ScoreInputs.r must be [T, H, N], got shape {tuple(self.r.shape)}")
        shape = tuple(self.r.shape)
        need = ["k", "v", "logw"] + (["kk", "a"] if self.version == "7" else ["u"])
        for name in need:
            x = getattr(self, name)
            if x is None:
                raise InputError(f"ScoreInputs for v{self.version} needs {name}")
        for name in ("k", "v", "logw", "kk", "a", "wkv"):
            x = getattr(self, name)
            if x is not None:
                x = x.expand(shape) if x.dim() == 3 and x.shape != shape and x.shape[0] == 1 else x
                if tuple(x.shape) != shape:
                    raise InputError(f"ScoreInputs.{name} has shape {tuple(x.shape)}, expected {shape}")
                setattr(self, name, x)
        for name in ("u", "r_k"):
            x = getattr(self, name)
            if x is not None and tuple(x.shape) != shape[1:]:
                raise InputError(f"ScoreInputs.{name} has shape {tuple(x.shape)}, expected {shape[1:]}")
        # a decay that underflowed to 0 (log = -inf) would turn differences of cumulative sums into NaN; any decay
        # below the floor is 0 in every float format anyway. (v7: see V7_LOGW_FLOOR.)
        floor = V7_LOGW_FLOOR if self.version == "7" else LOGW_FLOOR
        if bool((self.logw < floor).any()):
            self.logw = self.logw.clamp_min(floor)
        if bool((self.logw > 0).any()) or bool(torch.isnan(self.logw).any()):
            raise InputError("ScoreInputs.logw must be <= 0 (per-step decays in (0, 1]) and not NaN")

    @property
    def T(self) -> int:
        return self.r.shape[0]

    @property
    def H(self) -> int:
        return self.r.shape[1]

    @property
    def N(self) -> int:
        return self.r.shape[2]

    @property
    def device(self) -> torch.device:
        return self.r.device

    def to(self, device) -> "ScoreInputs":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    @classmethod
    def from_arrays(cls, version: str, *, r: ArrayLike, k: ArrayLike, v: ArrayLike, n_head: Optional[int] = None,
                    w: Optional[ArrayLike] = None, logw: Optional[ArrayLike] = None, u: Optional[ArrayLike] = None,
                    kk: Optional[ArrayLike] = None, a: Optional[ArrayLike] = None, r_k: Optional[ArrayLike] = None,
                    wkv: Optional[ArrayLike] = None, layer: Optional[int] = None) -> "ScoreInputs":
        """Build from plain arrays, e.g. a trace file's: [T, C] (split into heads with `n_head`) or [T, H, N].

        Give the decay either as w (per-step decay in (0, 1)) or as logw; both may be static ([C] or [H, N]).
        v7: k is the modified key k~. v4: n_head is ignored (channel groups of `v4_group_size`), u = time_first.
        """
        version = _version(version)
        if (w is None) == (logw is None):
            raise InputError("give exactly one of w (decay) or logw (log-decay)")
        t = lambda x: None if x is None else (torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray)
                                              else x).detach().to(torch.float32)
        r_, k_, v_ = t(r), t(k), t(v)
        if r_.dim() == 3:
            T, H, N = r_.shape
        elif r_.dim() == 2:
            T, C = r_.shape
            if version == "4":
                N = v4_group_size(C)
                H = C // N
            else:
                if not n_head or C % int(n_head):
                    raise InputError(f"n_head={n_head} does not divide the {C} channels")
                H, N = int(n_head), C // int(n_head)
        else:
            raise InputError(f"r must be [T, C] or [T, H, N], got shape {tuple(r_.shape)}")
        lw = torch.log(t(w).clamp_min(1e-45)) if w is not None else t(logw)  # w underflowed to 0: see LOGW_FLOOR

        def heads(x, per_token=True):
            if x is None:
                return None
            if not per_token:
                return x.reshape(H, N)
            if x.dim() == 1 or (x.dim() == 2 and tuple(x.shape) == (H, N) and tuple(x.shape) != (T, H * N)):
                return x.reshape(1, H, N).expand(T, H, N)  # static, e.g. a v4/v5 decay [C] or [H, N]
            return x.reshape(T, H, N)

        return cls(version, heads(r_), heads(k_), heads(v_), heads(lw), heads(t(u), False), heads(t(r_k), False),
                   heads(t(kk)), heads(t(a)), heads(t(wkv)), layer)


def _version(v) -> str:
    s = str(v)
    s = {"5": "5.2", "6.0": "6", "7.0": "7", "4.0": "4", "x052": "5.2", "x060": "6", "x070": "7"}.get(s, s)
    if s not in VERSIONS:
        raise InputError(f"unknown RWKV version {v!r}")
    return s


# ------------------------------------------------------------------------------------------------ capture


def _names_for(version: str, layer: int) -> list[str]:
    p = f"blocks.{layer}.att."
    names = [p + "hook_r", p + "hook_v", p + "hook_wkv"]
    names += [p + "hook_k_tilde", p + "hook_kk", p + "hook_a"] if version == "7" else [p + "hook_k"]
    return names


@torch.no_grad()
def capture_with_logits(model, tokens, layers: Optional[Sequence[int]] = None, *, chunked: bool = True,
                        logits: bool = True) -> tuple[Optional[torch.Tensor], list[ScoreInputs]]:
    """One forward of `model` (a `rwkv_core.model.RWKV`) over one prompt: logits [T, V] (None with logits=False:
    no head over the prompt) and a `ScoreInputs` per requested layer (default all), on the model's device.

    Uses the hook points hook_r, hook_k (v7: hook_k_tilde, hook_kk, hook_a), hook_v, hook_wkv; the decay comes from
    hook_logw (the log-decay the kernel used, including any patch a caller's hook made).
    """
    cfg = model.cfg
    version = cfg.version
    L = cfg.n_layer
    layers = list(range(L)) if layers is None else sorted({int(l) for l in layers})
    if any(l < 0 or l >= L for l in layers):
        raise InputError(f"layers must be in 0..{L - 1}, got {layers}")
    idx = torch.as_tensor(tokens, dtype=torch.long)
    if idx.dim() == 2:
        if idx.shape[0] != 1:
            raise InputError("capture_score_inputs takes one prompt (batch size 1)")
        idx = idx[0]
    if idx.dim() != 1 or idx.numel() == 0:
        raise InputError("tokens must be a non-empty list of ids")
    names = [n for l in layers for n in _names_for(version, l)]
    names += [f"blocks.{l}.att.hook_logw" for l in layers]  # the log-decay the kernel used, patched or not
    out_logits, _, cache = model.run_with_cache(idx, names_filter=names, device=model.device, chunked=chunked,
                                                logits="all" if logits else "none")
    T = idx.numel()
    token_major = {}
    if version == "7":  # what RWKV-7's row and column reads at every step: one [T, L, C] buffer each, see stack_layers
        for name in ("hook_r", "hook_k_tilde", "hook_logw", "hook_kk", "hook_a"):
            first = cache[f"blocks.{layers[0]}.att.{name}"]
            buf = torch.empty(T, len(layers), first.shape[-1], dtype=torch.float32, device=first.device)
            for i, l in enumerate(layers):
                buf[:, i] = cache.pop(f"blocks.{l}.att.{name}")[0]
            token_major[name] = buf.clamp_min_(V7_LOGW_FLOOR) if name == "hook_logw" else buf  # as ScoreInputs would
    out = []
    for i, l in enumerate(layers):
        p = f"blocks.{l}.att."
        att = model.blocks[l].att

        def get(name: str, i=i, p=p) -> torch.Tensor:  # [T, C]
            return token_major[name][:, i] if name in token_major else cache[p + name][0].float()

        C = get("hook_r").shape[-1]
        if version == "4":
            N = v4_group_size(C)
            H = C // N
        else:
            H, N = cfg.n_head, cfg.head_size
        hv = lambda x: x.reshape(T, H, N)
        logw = get("hook_logw")
        u = r_k = kk = a = None
        if version == "7":
            r_k = att.bonus().reshape(H, N)
            kk, a = hv(get("hook_kk")), hv(get("hook_a"))
        else:
            u = att.bonus().reshape(H, N)
        k = get("hook_k_tilde") if version == "7" else get("hook_k")
        out.append(ScoreInputs(version, hv(get("hook_r")), hv(k), hv(get("hook_v")), hv(logw), u=u, r_k=r_k, kk=kk,
                               a=a, wkv=hv(get("hook_wkv")), layer=l))
    return (out_logits[0] if logits else None), out


def capture_score_inputs(model, tokens, layers: Optional[Sequence[int]] = None) -> list[ScoreInputs]:
    """`ScoreInputs` of each requested layer (default all) for one prompt; see `capture_with_logits`."""
    return capture_with_logits(model, tokens, layers, logits=False)[1]


def inputs_from_trace(arrays: dict, cfg, layers: Optional[Sequence[int]] = None) -> list[ScoreInputs]:
    """`ScoreInputs` of the given layers from a trace file's arrays (`rwkv_core.io.trace_file`: r_l{l}, k_l{l},
    v_l{l}, w_l{l} or logw_l{l} [T, C], u_l{l}; v7 ktilde_l{l}, kk_l{l}, a_l{l}, r_k_l{l}), float32 as
    `Trace.float_arrays` gives them, without a model. cfg: ModelConfig."""
    if layers is None:
        layers = sorted({int(k.split("_l")[-1]) for k in arrays if k.startswith("r_l")})
    out = []
    for l in layers:
        g = lambda n: arrays.get(f"{n}_l{l}")  # noqa: E731
        if any(g(n) is None for n in ("r", "k", "v")) or (g("w") is None and g("logw") is None):
            raise InputError(f"the trace lacks r/k/v/w of layer {l}: it cannot give scores")
        decay = {"logw": g("logw")} if g("logw") is not None else {"w": g("w")}  # logw: float16 files (w rounds to 1)
        if cfg.version == "7":
            if any(g(n) is None for n in ("ktilde", "kk", "a")):
                raise InputError(f"the v7 trace lacks ktilde/kk/a of layer {l}")
            out.append(ScoreInputs.from_arrays("7", r=g("r"), k=g("ktilde"), v=g("v"), **decay, kk=g("kk"),
                                               a=g("a"), r_k=g("r_k"), n_head=cfg.n_head, layer=l))
        else:
            out.append(ScoreInputs.from_arrays(cfg.version, r=g("r"), k=g("k"), v=g("v"), **decay, u=g("u"),
                                               n_head=cfg.n_head, layer=l))
    return out


def trace_scores(arrays: dict, cfg, layers: Optional[Sequence[int]] = None, *, diagonal: bool = True,
                 span_variant: str = "state") -> dict[str, np.ndarray]:
    """What `export --scores` adds to a trace: attn_l{l} and span_l{l}, each [H, T, T] float32 (numpy), zero above
    the diagonal, for every layer (v4: H = channel groups, A = group mean)."""
    out = {}
    for si in inputs_from_trace(arrays, cfg, layers):
        out[f"attn_l{si.layer}"] = full_scores_all(si, diagonal=diagonal).cpu().numpy()
        out[f"span_l{si.layer}"] = full_spans_all(si, variant=span_variant).cpu().numpy()
    return out


# ------------------------------------------------------------------------------------------------ shared kernels


EXP_FLOOR = -87.0  # e^-87 ~ 1.6e-38, just above float32's smallest normal number


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp of non-positive exponents (float64 or float32) as float32, exactly 0 below e^-87.

    torch's CPU exp takes a ~100x slower path for float32 arguments below about -87 (underflow), and arithmetic on
    subnormal results is slow as well; clamping first and zeroing afterwards keeps every step on the fast path.
    """
    y = torch.exp(x.float().clamp_min(EXP_FLOOR))
    return y.masked_fill_(x < EXP_FLOOR, 0.0)


@contextlib.contextmanager
def _flush_subnormals():
    """Flush subnormal floats (< 1.2e-38) to zero on the CPU for the duration, then restore the previous mode.

    Pushed keys and decayed products drift into the subnormal range, where every CPU multiply (and BLAS) is tens
    of times slower; values that small are zero for any score. The mode is per thread (the calling one).
    """
    before = (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0
    changed = not before and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def _fast(fn):
    """Decorator: run with subnormals flushed (see `_flush_subnormals`) and without autograd."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _flush_subnormals(), torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _cumsum64(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Cumulative sum along `dim` in float64 (summing along the last, contiguous dim: much faster on CPU)."""
    y = x.movedim(dim, -1).contiguous().double()
    return torch.cumsum(y, -1).movedim(-1, dim)


def _cum_log_decay(logw: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive and exclusive cumulative log-decay along `dim`, float64 (Lambda_t and Lambda_{t-1})."""
    lam = _cumsum64(logw, dim)
    return lam, lam - logw.double()


def _pair_sum(q: Optional[torch.Tensor], key: Optional[torch.Tensor], alpha: torch.Tensor, beta: torch.Tensor,
              chunk: Optional[int] = None, max_elems: int = 1 << 22) -> torch.Tensor:
    """M[j, i] = sum_c q_j[c] key_i[c] exp(alpha_i[c] + beta_j[c]) for i < j, 0 elsewhere: [T, T] float32.

    q, key [T, N] float32 (None = ones); alpha, beta [T, N] float64 with alpha_i + beta_j <= 0 whenever i < j
    (a decay product, or a normalised weight). Tokens are cut into chunks. Between a query chunk J and an earlier
    source chunk I the factor is split in three, each <= 1:
        exp(alpha_i - m_I) * exp(m_I - R_J) * exp(beta_j + R_J),  m_I = max_{i in I} alpha_i, R_J = max_{I < J} m_I,
    so the exponentials cost O(T N) plus O((T / chunk)^2 N), and the cross blocks are matmuls. Inside a chunk the
    exponents are formed pair by pair (float64 sums, then exp in float32). Nothing can overflow.
    """
    T, N = alpha.shape
    dev = alpha.device
    if chunk is None:  # ~sqrt(T)/2: balances the pairwise work inside chunks against the per-pair factors
        chunk = 8 if T <= 512 else (16 if T <= 2048 else 32)
    L = max(1, min(int(chunk), T))
    nC = -(-T // L)
    pad = nC * L - T
    if pad:  # padded sources and queries get exponent -inf: weight 0
        ninf = lambda x: torch.cat([x, x.new_full((pad, N), float("-inf"))], 0)
        zero = lambda x: None if x is None else torch.cat([x, x.new_zeros(pad, N)], 0)
        alpha, beta, q, key = ninf(alpha), ninf(beta), zero(q), zero(key)
    Tp = nC * L
    a3, b3 = alpha.view(nC, L, N), beta.view(nC, L, N)
    m = a3.amax(1)  # [nC, N] per source chunk
    Kt = _exp(a3 - m[:, None])  # [nC, L, N] <= 1
    if key is not None:
        Kt = Kt * key.view(nC, L, N)
    out = torch.zeros(Tp, Tp, dtype=torch.float32, device=dev)
    if nC > 1:
        R = torch.cummax(m, 0).values  # R[J-1] = max over chunks before J
        Qt = _exp(b3[1:] + R[:-1, None])  # [nC-1, L, N] <= 1
        if q is not None:
            Qt = Qt * q.view(nC, L, N)[1:]
        E2 = _exp(m[None, :, :] - R[:-1, None, :])  # [J-1, I, N]; used for I < J only
        for J in range(1, nC):
            Ks = (Kt[:J] * E2[J - 1, :J, None, :]).reshape(J * L, N)
            out[J * L:(J + 1) * L, :J * L] = Qt[J - 1] @ Ks.T
    strict = torch.ones(L, L, dtype=torch.bool, device=dev).tril(-1)[:, :, None]
    step = max(1, max_elems // (L * L * N))
    for g in range(0, nC, step):
        sl = slice(g, g + step)
        E = _exp(b3[sl, :, None, :] + a3[sl, None, :, :]).masked_fill_(~strict, 0.0)  # [g, L(j), L(i), N]
        if key is not None:
            E.mul_(key.view(nC, L, N)[sl, None, :, :])
        if q is None:
            blk = E.sum(-1)
        else:
            G = E.shape[0]
            blk = torch.bmm(E.view(G * L, L, N), q.view(nC, L, N)[sl].reshape(G * L, N, 1)).view(G, L, L)
        for gi in range(blk.shape[0]):
            c0 = (g + gi) * L
            out[c0:c0 + L, c0:c0 + L] = blk[gi]
    return out[:T, :T]


def _check_head(si: ScoreInputs, head: int) -> None:
    if not 0 <= int(head) < si.H:
        raise InputError(f"head must be in 0..{si.H - 1}, got {head}")


def _check_variant(variant: str) -> None:
    if variant not in SPAN_VARIANTS:
        raise InputError(f"span variant must be one of {SPAN_VARIANTS}, got {variant!r}")


def _v4_logs(k: torch.Tensor, logw: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """v4 log-domain pieces, tokens along dim 0 ([T, N] or [T, H, N]), float64: a_i = k_i - Lambda_i,
    lam_ex = Lambda_{t-1}, logZ_j = log of token j's normaliser (past plus bonus e^{u + k_j}),
    lcse_j = logsumexp_{i <= j} a_i (so that exp(a_i - lcse_j) is token i's share of the state after j)."""
    lam, lam_ex = _cum_log_decay(logw, 0)
    a = k.double() - lam
    lcse = torch.logcumsumexp(a.movedim(0, -1).contiguous(), -1).movedim(-1, 0)
    past = lam_ex + torch.cat([torch.full_like(lcse[:1], float("-inf")), lcse[:-1]], 0)
    logZ = torch.logaddexp(past, u.double() + k.double())
    return a, lam_ex, logZ, lcse


# ------------------------------------------------------------------------------------------------ full matrices


@_fast
def window_inputs(si: ScoreInputs, start: int, stop: int) -> ScoreInputs:
    """The inputs of tokens [start, stop) alone. For v5-v7 a score or span between two tokens depends only on the
    tokens from the source to the query (the decays and v7 transitions between them), so the scores of the window
    equal the window of the whole prompt's scores: a page showing a window computes (stop-start)^2, not T^2.
    v4 divides by a sum over every earlier source: its window needs the whole prompt (`window_local` is False)."""
    cut = {name: (getattr(si, name)[start:stop] if getattr(si, name) is not None else None)
           for name in ("r", "k", "v", "logw", "kk", "a", "wkv")}
    return ScoreInputs(si.version, u=si.u, r_k=si.r_k, layer=si.layer, **cut)


def window_local(si: ScoreInputs) -> bool:
    """Whether `window_inputs` gives the window of the whole prompt's scores exactly (v5-v7)."""
    return si.version != "4"


def full_scores(si: ScoreInputs, head: int, *, diagonal: bool = True, per_channel: bool = False) -> torch.Tensor:
    """A[head, j, i] for all query j and source i: [T, T] float32, zero above the diagonal.

    diagonal=False zeroes A[j, j] (the bonus term). per_channel (v4 only): the per-channel weights [N, T, T] of the
    head's channel group (O(T^2 N) memory), for which sum_i A[c, j, i] v_i[c] = wkv_j[c] holds exactly.
    """
    _check_head(si, head)
    h = int(head)
    r, k, lw = si.r[:, h], si.k[:, h], si.logw[:, h]  # [T, N]
    T, N = r.shape
    if si.version == "4":
        a, lam_ex, logZ, _ = _v4_logs(k, lw, si.u[h])
        beta = lam_ex - logZ  # weight of i < j: exp(a_i + beta_j)
        dg = _exp(si.u[h].double() + k.double() - logZ)  # [T, N]
        if per_channel:
            lower = torch.ones(T, T, dtype=torch.bool, device=r.device).tril(-1)
            A = _exp(beta.T[:, :, None] + a.T[:, None, :]).masked_fill_(~lower, 0.0)  # [N, T(j), T(i)]
            if diagonal:
                A = A + torch.diag_embed(dg.T)
            return A
        A = _pair_sum(None, None, a, beta).div_(N)
        if diagonal:
            A.diagonal().add_(dg.mean(-1))
        return A
    if per_channel:
        raise InputError("per_channel scores exist for v4 only (v5-v7 heads mix their channels)")
    if si.version == "7":
        A, _ = _v7_full(r, k, lw, si.kk[:, h], si.a[:, h], scores=True, spans=False)
        if not diagonal:
            A.fill_diagonal_(0.0)
        return A
    lam, lam_ex = _cum_log_decay(lw, 0)
    A = _pair_sum(r, k, -lam, lam_ex)
    if diagonal:
        A.diagonal().add_((r * si.u[h] * k).sum(-1))
    return A


@_fast
def full_spans(si: ScoreInputs, head: int, *, variant: str = "state") -> torch.Tensor:
    """S[head, j, i] for all j >= i: [T, T] float32 (>= 0), zero above the diagonal.

    variant "state" (default, the issue's definition, includes w_j) or "read" (v5/v6: stops at w_{j-1}).
    Squares are summed in float32: spans below ~1e-19 times ||k|| come out as 0.
    """
    _check_head(si, head)
    _check_variant(variant)
    h = int(head)
    k, lw = si.k[:, h], si.logw[:, h]
    T, N = k.shape
    if si.version == "4":
        a, _, _, lcse = _v4_logs(k, lw, si.u[h])
        ref = lcse if variant == "state" else torch.cat([lcse[:1], lcse[:-1]], 0)  # state after j (or j-1)
        S2 = _pair_sum(None, None, 2 * a, -2 * ref)
        S2.diagonal().add_(_exp(2 * (a - lcse)).sum(-1))
        return S2.clamp_min_(0).sqrt_()
    if si.version == "7":
        _, S = _v7_full(si.r[:, h], k, lw, si.kk[:, h], si.a[:, h], scores=False, spans=True)
        return S
    lam, lam_ex = _cum_log_decay(lw, 0)
    S2 = _pair_sum(None, k * k, -2 * lam, 2 * (lam if variant == "state" else lam_ex))
    S2.diagonal().add_((k * k).sum(-1))
    return S2.clamp_min_(0).sqrt_()


def full_scores_all(si: ScoreInputs, *, diagonal: bool = True) -> torch.Tensor:
    """A for every head of the layer: [H, T, T] (what `export --scores` stores as attn_l{l}); O(H T^2) memory."""
    return torch.stack([full_scores(si, h, diagonal=diagonal) for h in range(si.H)])


def full_spans_all(si: ScoreInputs, *, variant: str = "state") -> torch.Tensor:
    """S for every head of the layer: [H, T, T] (span_l{l} of `export --scores`)."""
    return torch.stack([full_spans(si, h, variant=variant) for h in range(si.H)])


# ------------------------------------------------------------------------------------------------ selected token


@_fast
def row_and_column(si_list: Union[ScoreInputs, Sequence[ScoreInputs]], sel: int, *, diagonal: bool = True,
                   spans: Union[bool, str] = True, span_variant: str = "state") -> dict:
    """For the selected token, every (layer, head): what it reads and who reads it, in O(T N) each.

    Returns {"row": A[l, h, sel, :], "col": A[l, h, :, sel]} as [L, H, T] float32 tensors (zeros outside
    i <= sel resp. j >= sel; the diagonal entry A[sel, sel] is in both), with spans=True also "span_row"
    S[l, h, sel, :] and "span_col" S[l, h, :, sel] (spans="col": only "span_col", how long the selected token's
    key lasts; for v7 much cheaper than the span row, which needs O(T N^2) per head), plus "layers" (the inputs'
    layer ids) and "sel". v4-v6: float64 sums of log-decays relative to the selected token, all heads of a layer
    at once. v7: r_sel is pushed backwards and k~_sel forwards through the transitions, a loop over tokens batched
    over all layers and heads; the v7 span row is done in chunks (`_v7_row_chunked`).
    """
    if isinstance(si_list, ScoreInputs):
        si_list = [si_list]
    si_list = list(si_list)
    if not si_list:
        raise InputError("row_and_column needs at least one layer")
    _check_variant(span_variant)
    if spans not in (True, False, "col"):
        raise InputError(f"spans must be True, False or 'col', got {spans!r}")
    v0 = si_list[0]
    for si in si_list[1:]:
        if si.version != v0.version or si.r.shape != v0.r.shape:
            raise InputError("row_and_column needs layers of one model and one prompt (same version and shape)")
    T, H, N = v0.T, v0.H, v0.N
    s = int(sel)
    if not 0 <= s < T:
        raise InputError(f"selected token must be in 0..{T - 1}, got {sel}")
    if v0.version == "7":
        st = {n: stack_layers([getattr(si, n) for si in si_list])  # [T, L, H, N]
              for n in ("r", "k", "logw", "kk", "a")}
        out = _v7_row_col_loop(st["r"], st["k"], st["logw"], st["kk"], st["a"], s, "col" if spans else False)
        if spans is True:
            flat = [st[n].permute(1, 2, 0, 3).reshape(-1, T, N) for n in ("r", "k", "logw", "kk", "a")]
            res = _v7_row_chunked(*flat, s, True)
            out["span_row"] = res["span_row"].reshape(len(si_list), H, T)
        if not diagonal:
            out["row"][..., s] = 0.0
            out["col"][..., s] = 0.0
    else:
        per_layer = [_diag_row_col(si, s, diagonal, spans, span_variant) for si in si_list]
        out = {n: torch.stack([p[n] for p in per_layer]) for n in per_layer[0]}
    out["layers"], out["sel"] = [si.layer for si in si_list], s
    return out


def _diag_row_col(si: ScoreInputs, s: int, diagonal: bool, spans, variant: str) -> dict:
    """v4-v6 row/column of token s for every head of one layer: {name: [H, T]}.

    v5/v6: with C_t = sum_{t' <= t} log w_t' (float64), A[s, i] uses exp(C_{s-1} - C_i) and A[j, s] uses
    exp(C_{j-1} - C_s): differences relative to s, non-positive, precise, bounded.
    """
    T, H = si.T, si.H
    dev = si.device
    k, lw, u = si.k, si.logw, si.u  # [T, H, N], [H, N]
    names = ["row", "col"] + (["span_col"] if spans else []) + (["span_row"] if spans is True else [])
    res = {n: torch.zeros(T, H, device=dev) for n in names}
    state = variant == "state"
    if si.version == "4":
        a, lam_ex, logZ, lcse = _v4_logs(k, lw, u)  # [T, H, N] float64
        beta = lam_ex - logZ
        res["row"][:s] = _exp(a[:s] + beta[s]).mean(-1)
        res["col"][s + 1:] = _exp(a[s] + beta[s + 1:]).mean(-1)
        dg = _exp(u.double() + k[s].double() - logZ[s]).mean(-1)  # [H]
        sq = lambda e: _exp(2 * e).sum(-1).sqrt()
        ref = lcse if state else torch.cat([lcse[:1], lcse[:-1]], 0)
        if spans is True:
            res["span_row"][:s] = sq(a[:s] - ref[s])
        if spans:
            res["span_col"][s + 1:] = sq(a[s] - ref[s + 1:])
            sd = sq(a[s] - lcse[s])
    else:
        r = si.r
        C = _cumsum64(lw, 0)  # [T, H, N]
        ref_row = C[s - 1] if s > 0 else None
        kd = k[:s] * _exp(ref_row - C[:s]) if s > 0 else k[:0]  # k_i prod_{t=i+1}^{s-1} w_t
        res["row"][:s] = (kd * r[s]).sum(-1)
        dec_col = _exp(C[s:T - 1] - C[s])  # [T-s-1]: prod_{t=s+1}^{j-1} w_t, j = s+1..T-1
        res["col"][s + 1:] = (r[s + 1:] * dec_col * k[s]).sum(-1)
        dg = (r[s] * u * k[s]).sum(-1)
        if spans is True:
            kd_s = kd * _exp(lw[s]) if state else kd  # the state after s includes w_s
            res["span_row"][:s] = torch.linalg.vector_norm(kd_s, dim=-1)
        if spans:
            dc = dec_col * _exp(lw[s + 1:]) if state else dec_col  # ... and after j includes w_j
            res["span_col"][s + 1:] = torch.linalg.vector_norm(dc * k[s], dim=-1)
            sd = torch.linalg.vector_norm(k[s], dim=-1)
    res["row"][s] = dg if diagonal else 0.0
    res["col"][s] = dg if diagonal else 0.0
    if spans is True:
        res["span_row"][s] = sd
    if spans:
        res["span_col"][s] = sd
    return {n: t.T.contiguous() for n, t in res.items()}


def _v7_chunk_len(logw: torch.Tensor) -> int:
    rate = float((-logw).max().clamp_min(1e-12))
    return int(max(1, min(16, V7_MAX_CHUNK_EXP // rate)))


def _v7_prep(r, k, logw, kk, a, L: int, pad_front: int = 0) -> dict:
    """Chunk-local pieces of the v7 transition for inputs [B, T, N] cut into chunks of L tokens: [B, nC, L, ...].

    Padding tokens (at the front, `pad_front`, and at the end up to a multiple of L) write nothing, decay nothing
    and remove nothing (G = I). The terms of `wkv.v7_chunk_terms` without values (c the inclusive cumulative
    log-decay inside a chunk, |c| <= 40), among them:
      W_a, U   removals Z[t] = P(t-1) . alpha_t of a state P entering the chunk (Z = W_a P^T) and of the chunk's
               own writes (U[t, i], t > i);
    plus P_in, each in-chunk write k~_i pushed to the chunk's end (k~_i G_{i+1} ... G_e). The chunk's transition
    G_b ... G_e = diag(dec) + W_a^T b_end is implicit.
    """
    B, T, N = r.shape
    pad_end = (-(T + pad_front)) % L

    def padded(x):
        if pad_front or pad_end:
            x = torch.cat([x.new_zeros(B, pad_front, N), x, x.new_zeros(B, pad_end, N)], 1)
        return x.reshape(B, -1, L, N)

    rc, kc, lw, ac, bc = (padded(x) for x in (r, k, logw, -kk, kk * a))  # alpha = -kk, beta = kk * a
    ch = v7_chunk_terms(rc, kc, ac, bc, lw)
    P_in = ch.U.transpose(-1, -2) @ ch.b_end + ch.k_end  # [B, nC, L, N]
    incl = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(0)
    return dict(L=L, nC=rc.shape[1], ec=ch.ec, r_t=ch.r_t, b_i=ch.b_i, k_i=ch.k_i, Q_b=ch.Q_b, Q_k=ch.Q_k,
                W_a=ch.W_a, U=ch.U, b_end=ch.b_end, dec=ch.dec, P_in=P_in, incl=incl)


def _v7_full(r, k, logw, kk, a, *, scores: bool, spans: bool, chunk: Optional[int] = None):
    """v7 A [T, T] and/or S [T, T] of one head in chunks (inputs [T, N]; k = k~).

    The state with one-hot values is the matrix P [sources, N] of every source's key pushed through the
    transitions so far: A[j, i] = P_i(j) . r_j, S[j, i] = ||P_i(j)||. Inside a chunk (see `_v7_prep`) the
    sources before it cost two matmuls (their removals Z = W_a P^T, then the reads), so A costs O(T^2 N) in
    T / chunk Python steps; spans need every P_i(t) = P_i(b-1) K_t, one [b, N] x [N, chunk N] matmul per chunk
    (O(T^2 N^2) flops, but in BLAS).
    """
    T, N = r.shape
    dev = r.device
    L = chunk or _v7_chunk_len(logw)
    pp = _v7_prep(r[None], k[None], logw[None], kk[None], a[None], L)
    pp = {n: (x[0] if isinstance(x, torch.Tensor) and x.dim() >= 3 else x) for n, x in pp.items()}
    nC = pp["nC"]
    Tp = nC * L
    incl = pp["incl"]
    A = torch.zeros(Tp, Tp, dtype=torch.float32, device=dev) if scores else None
    S = torch.zeros(Tp, Tp, dtype=torch.float32, device=dev) if spans else None
    if scores:
        intra = pp["Q_b"] @ pp["U"] + pp["Q_k"]  # [nC, L, L]
    if spans:  # in-chunk sources: P_i(t) = e^{c_t} (k_i e^{-c_i} + sum_{s <= t} U[s, i] b_s), t >= i
        X = pp["k_i"][:, None, :, :] + torch.cumsum(pp["U"][..., None] * pp["b_i"][:, :, None, :], 1)
        intra_s = torch.linalg.vector_norm(X * pp["ec"][:, :, None, :], dim=-1).masked_fill(~incl, 0.0)
        del X
    P = torch.zeros(Tp, N, dtype=torch.float32, device=dev)
    eye = torch.eye(N, dtype=torch.float32, device=dev)
    for ci in range(nC):
        b0 = ci * L
        rows = slice(b0, b0 + L)
        if scores:
            A[rows, rows] = intra[ci]
        if spans:
            S[rows, rows] = intra_s[ci]
        if b0 > 0:
            P_old = P[:b0]  # [b0, N]
            Z = pp["W_a"][ci] @ P_old.T  # [L, b0] removals
            if scores:
                A[rows, :b0] = pp["r_t"][ci] @ P_old.T + pp["Q_b"][ci] @ Z
            if spans:
                # P_i(t) = P_old[i] K_t with K_t = (I + sum_{s <= t} W_a[s]^T b_s) diag(e^{c_t}): one matmul
                K = torch.cumsum(pp["W_a"][ci][:, :, None] * pp["b_i"][ci][:, None, :], 0)  # [L, N, N]
                K = (K + eye) * pp["ec"][ci][:, None, :]
                Y = P_old @ K.permute(1, 0, 2).reshape(N, L * N)  # [b0, L * N]
                S[rows, :b0] = torch.linalg.vector_norm(Y.view(b0, L, N), dim=-1).T
            P[:b0] = P_old * pp["dec"][ci] + Z.T @ pp["b_end"][ci]
        P[rows] = pp["P_in"][ci]
    return (A[:T, :T] if scores else None), (S[:T, :T] if spans else None)


def _v7_row_chunked(r, k, logw, kk, a, s, spans: bool, chunk: Optional[int] = None) -> dict:
    """v7 row A[s, :] (and with `spans` the span row S[s, :]) for B = layers x heads at once, inputs [B, T, N], in
    chunks: {"row": [B, T], "span_row": [B, T]}.

    r_s is pushed backwards, q <- G_b ... G_e q = dec * q + W_a^T (b_end q), one chunk at a time, and
    A[s, i] = (k~_i pushed to its chunk's end) . q. Chunks are aligned so that one ends at s. The span row needs
    the operator M = G_{e+1} ... G_s itself ([B, N, N], O(T N^2) per head): ||k~_i M|| is not a single push.
    """
    B, T, N = r.shape
    dev = r.device
    L = chunk or _v7_chunk_len(logw)
    out = {"row": torch.zeros(B, T, device=dev)}
    # tokens 0..s, padded at the front so that the last chunk ends at s
    pad = (-(s + 1)) % L
    pl = _v7_prep(r[:, :s + 1], k[:, :s + 1], logw[:, :s + 1], kk[:, :s + 1], a[:, :s + 1], L, pad_front=pad)
    row = torch.zeros(B, pl["nC"] * L, device=dev)
    q = r[:, s].clone()  # [B, N] = G_{e+1} ... G_s r_s
    if spans:
        span_row = torch.zeros(B, pl["nC"] * L, device=dev)
        M = torch.eye(N, device=dev).expand(B, N, N).clone()
    for ci in range(pl["nC"] - 1, -1, -1):
        sl = slice(ci * L, (ci + 1) * L)
        P_in = pl["P_in"][:, ci]  # [B, L, N]
        row[:, sl] = torch.bmm(P_in, q[:, :, None])[..., 0]
        W_a, b_end, dec = pl["W_a"][:, ci], pl["b_end"][:, ci], pl["dec"][:, ci]
        if spans:
            span_row[:, sl] = torch.linalg.vector_norm(torch.bmm(P_in, M), dim=-1)
            M = dec[:, :, None] * M + torch.bmm(W_a.transpose(1, 2), torch.bmm(b_end, M))
        q = dec * q + torch.bmm(W_a.transpose(1, 2), torch.bmm(b_end, q[:, :, None]))[..., 0]
    out["row"][:, :s + 1] = row[:, pad:]
    if spans:
        out["span_row"] = torch.zeros(B, T, device=dev)
        out["span_row"][:, :s + 1] = span_row[:, pad:]
    return out


def _v7_row_col_loop(r, k, logw, kk, a, s, spans) -> dict:
    """v7 row and column of token s by the pushes of rwkv-math §7, one token per step, batched over the inner dims
    of the token-major inputs [T, ..., N] (layers, heads); results [..., T]. Row: q <- G_{i+1} q = w q - kk ((a kk)
    . q), A[s, i] = k~_i . q; column: p <- p G_j = w p - (p . kk) (a kk), A[j, s] = p . r_j, span S[j, s] = ||p||;
    span row: the operator M = G_{i+1} ... G_s itself ([..., N, N], O(T N^2)), S[s, i] = ||k~_i M||. spans: False,
    True or "col". Token-major, because each step reads one token of every (layer, head): a contiguous block. The
    whole-prompt products run on the caller's threads, the loops over tokens on `recurrence_threads`.
    """
    w = torch.exp(logw)  # [T, ..., N]; ScoreInputs floors v7's log w at -40: e^-40 is a normal float
    ka = kk * a
    with recurrence_threads(r):
        out = _v7_pushes(r, k, w, kk, ka, s, spans)
    return out


def _v7_pushes(r, k, w, kk, ka, s, spans) -> dict:
    """The serial part of `_v7_row_col_loop`, with w = e^logw and ka = kk * a given: [T, ..., N] each."""
    T, *lead, N = r.shape
    dev = r.device
    q_all = torch.empty(s + 1, *lead, N, device=dev)  # q_i = G_{i+1} ... G_s r_s
    q_all[s] = r[s]
    for i in range(s - 1, -1, -1):
        q = q_all[i + 1]
        dot = (ka[i + 1] * q).sum(-1, keepdim=True)
        torch.mul(w[i + 1], q, out=q_all[i]).addcmul_(kk[i + 1], dot, value=-1.0)
    out = {"row": torch.zeros(*lead, T, device=dev), "col": torch.zeros(*lead, T, device=dev)}
    out["row"][..., :s + 1] = (k[:s + 1] * q_all).sum(-1).movedim(0, -1)
    del q_all
    p_all = torch.empty(T - s, *lead, N, device=dev)  # p_j = k~_s G_{s+1} ... G_j
    p_all[0] = k[s]
    for j in range(s + 1, T):
        p = p_all[j - s - 1]
        dot = (p * kk[j]).sum(-1, keepdim=True)
        torch.mul(w[j], p, out=p_all[j - s]).addcmul_(ka[j], dot, value=-1.0)
    out["col"][..., s:] = (p_all * r[s:]).sum(-1).movedim(0, -1)
    if spans:
        out["span_col"] = torch.zeros(*lead, T, device=dev)
        out["span_col"][..., s:] = torch.linalg.vector_norm(p_all, dim=-1).movedim(0, -1)
    if spans is True:
        span_row = torch.zeros(*lead, T, device=dev)
        span_row[..., s] = torch.linalg.vector_norm(k[s], dim=-1)
        M = torch.eye(N, device=dev).expand(*lead, N, N).clone()  # G_{i+1} ... G_s
        for i in range(s - 1, -1, -1):
            # G M = diag(w) M - kk^T ((a kk) M)
            kaM = (ka[i + 1, ..., :, None] * M).sum(-2, keepdim=True)  # [..., 1, N]
            M = torch.addcmul(w[i + 1, ..., :, None] * M, kk[i + 1, ..., :, None], kaM, value=-1.0)
            span_row[..., i] = torch.linalg.vector_norm((k[i, ..., :, None] * M).sum(-2), dim=-1)
        out["span_row"] = span_row
    return out


def stack_layers(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The layers' [T, ...] tensors as one token-major [T, L, ...]: a view where they are evenly spaced views of one
    buffer (as `capture_with_logits` lays v7 out), else a copy (at the 1.5B shape ~0.3 s and 200 MB per input)."""
    t0 = tensors[0]
    offs = [t.storage_offset() for t in tensors]
    step = offs[1] - offs[0] if len(tensors) > 1 else 1
    if (step > 0 and all(t.untyped_storage().data_ptr() == t0.untyped_storage().data_ptr() for t in tensors)
            and all(t.shape == t0.shape and t.stride() == t0.stride() and t.dtype == t0.dtype for t in tensors)
            and all(o == offs[0] + i * step for i, o in enumerate(offs))):
        size = (t0.shape[0], len(tensors), *t0.shape[1:])
        stride = (t0.stride(0), step, *t0.stride()[1:])
        return t0.as_strided(size, stride, offs[0])
    return torch.stack(list(tensors), 1)


# ------------------------------------------------------------------------------------------------ identities, extras


def wkv_from_scores(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_i A[h, j, i] v_i: the WKV output rebuilt from scores, [T, H, N].

    A: [H, T, T] with v [T, H, N]; or one head [T, T] with v [T, N] (returns [T, N]); or v4 per-channel weights
    [H, N, T, T] (or [N, T, T] with v [T, N]).
    """
    if A.dim() == 2:
        return A @ v.to(A.dtype)
    if A.dim() == 3 and v.dim() == 3:
        return torch.einsum("hji,ihn->jhn", A, v.to(A.dtype))
    if A.dim() == 3 and v.dim() == 2:  # per-channel, one group
        return torch.einsum("nji,in->jn", A, v.to(A.dtype))
    if A.dim() == 4:
        return torch.einsum("hnji,ihn->jhn", A, v.to(A.dtype))
    raise InputError(f"wkv_from_scores: unsupported shapes A {tuple(A.shape)}, v {tuple(v.shape)}")


def topk_predictions(logits: torch.Tensor, k: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k next-token ids [T, k] (long) and probabilities [T, k] (float32, softmax in float32) per position."""
    if logits.dim() == 3:
        if logits.shape[0] != 1:
            raise InputError("topk_predictions takes logits of one prompt ([T, V] or [1, T, V])")
        logits = logits[0]
    if logits.dim() != 2:
        raise InputError(f"logits must be [T, V], got shape {tuple(logits.shape)}")
    k = max(1, min(int(k), logits.shape[-1]))
    probs = torch.softmax(logits.float(), -1)
    p, ids = torch.topk(probs, k, dim=-1)
    return ids, p


def auto_scale(values: ArrayLike, mode: str = "max") -> float:
    """Multiplier for display: "max" maps the largest |value| to 1; "pow10" gives the largest power of ten
    10^p (p integer) with max |value| * 10^p <= 1. 1.0 when everything is zero or not finite."""
    x = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    x = np.abs(x[np.isfinite(x)])
    m = float(x.max()) if x.size else 0.0
    if m <= 0.0:
        return 1.0
    if mode == "max":
        return 1.0 / m
    if mode == "pow10":
        p = -math.ceil(math.log10(m) - 1e-12)
        return float(10.0 ** p)
    raise InputError(f"auto_scale mode must be 'max' or 'pow10', got {mode!r}")


def span_curves(span_col: torch.Tensor, sel: int) -> torch.Tensor:
    """Span against distance d = j - sel from the selected token: [..., T - sel] from a column [..., T]."""
    return span_col[..., int(sel):]


def span_reach(curves: ArrayLike, threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """How far a token's key survives: the first distance d where span(d) < threshold * span(0).

    curves [..., D] (span by distance, from `span_curves`). Returns (reach [...] float, censored [...] bool);
    censored means the span never fell below the threshold within the prompt (reach = D, a lower bound), and
    a zero initial span gives reach 0.
    """
    c = curves.detach().float().cpu().numpy() if isinstance(curves, torch.Tensor) else np.asarray(curves, float)
    D = c.shape[-1]
    below = c < threshold * c[..., :1]
    hit = below.any(-1)
    first = np.where(hit, below.argmax(-1), D).astype(float)
    zero0 = c[..., 0] <= 0
    first = np.where(zero0, 0.0, first)
    return first, (~hit) & (~zero0)


def overview_values(rc: dict, what: str = "row_max_abs", token: Optional[int] = None) -> torch.Tensor:
    """[L, H] summary of `row_and_column` for the overview grid.

    what: "row_max_abs" (max_i |A[sel, i]| over earlier sources, diagonal excluded), "col_max_abs" (max_j
    |A[j, sel]|, j > sel), "at_token" (A[sel, token] for token <= sel, else A[token, sel]), "span_reach" (reach of
    the selected token's key, distance where its span falls below 10%).
    """
    s = rc["sel"]
    if what == "row_max_abs":
        x = rc["row"][..., :s]
        return x.abs().amax(-1) if s > 0 else torch.zeros(rc["row"].shape[:2])
    if what == "col_max_abs":
        x = rc["col"][..., s + 1:]
        return x.abs().amax(-1) if x.shape[-1] else torch.zeros(rc["col"].shape[:2])
    if what == "at_token":
        if token is None:
            raise InputError("overview 'at_token' needs a token")
        t = int(token)
        return rc["row"][..., t] if t <= s else rc["col"][..., t]
    if what == "span_reach":
        if "span_col" not in rc:
            raise InputError("overview 'span_reach' needs row_and_column(..., spans=True)")
        reach, _ = span_reach(span_curves(rc["span_col"], s))
        return torch.as_tensor(reach, dtype=torch.float32)
    raise InputError(f"unknown overview value {what!r}")
