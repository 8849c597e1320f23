"""Time decay of RWKV v4-v7: static and per-token decays, half-lives, retention and the size of the recurrent state.

What the decay page and `python -m rwkv_core decay` show, computed without Streamlit (tracing-and-decay §4-§5,
rwkv-math §4, §6, §9, §11).

Notation. lambda = the per-step decay in (0, 1) that multiplies the WKV state; d = its "logit", the raw number
that the decay is computed from:
  v4, v5.1, v5.2   d = `att.time_decay` (v5.1: one per head, repeated over the head's channels)   static
  v6               d_t = `time_decay` + tanh(x_w W_d1) W_d2                                      per token
  v7               d_t = `w0` + tanh(x_w w1) w2                                                  per token
  lambda = exp(-exp(d)) for v4-v6 and exp(-e^-0.5 sigmoid(d)) for v7.
The *static* decay of v6/v7 is the data-independent part (d = `time_decay`, resp. `w0`).
Derived: rate rho = -ln lambda; half-life h = ln 2 / rho tokens. Everything is kept as log lambda and log10 h,
computed from d in float64 (log10 h = log10 ln2 - d log10 e for v4-v6), so a decay within 1e-12 of 1 still has a
finite half-life and a decay that underflows to 0 still has a finite, tiny one.

Timing (who decays token i's write before token t reads it; rwkv-math §4, §7):
  v4, v5, v6   token t reads S_{t-1} (plus its own write through the bonus u), so the write of token i < t is
               read at t scaled by prod_{j=i+1}^{t-1} lambda_j; token i reads its own write only through u.
  v7           token t updates first, then reads S_t: the scale is prod_{j=i+1}^{t} lambda_j (the diagonal part
               only: the full v7 transfer also has the rank-1 removal term), and token i reads its write at 1.

Heads. v4 has no heads; here it counts as one head holding all C channels (head 0). Channel numbers are global
(0 .. C-1); channel c belongs to head c // N.

State size. v5-v7: per head the Frobenius norm and the largest |entry| of the N x N WKV state after each token.
v4 keeps per channel aa, bb, pp with numerator = aa e^pp and denominator = bb e^pp; their ratio aa / bb is the
decay-weighted average of past values, the quantity the state holds (the scale e^pp cancels). For v4 the page shows
the norm and the largest |entry| of aa / bb over all C channels (one "head").

Arrays are numpy float64; shapes in comments: L layers, T tokens, C channels, H heads, N head size.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from rwkv_core.model.config import ModelConfig
from rwkv_core.model.rwkv import V7_DECAY_SCALE, time_mix_bonus

LN2 = math.log(2.0)
LOG10_LN2 = math.log10(LN2)
LOG10_E = math.log10(math.e)
V7_MIN_DECAY = math.exp(-V7_DECAY_SCALE)  # ~0.545: v7's decay floor
V7_MIN_HALF_LIFE = LN2 / V7_DECAY_SCALE  # ~1.14 tokens
DYNAMIC_VERSIONS = ("6", "7")  # versions whose decay depends on the input
STATIC_CSV_COLUMNS = ("layer", "head", "channel", "decay", "half_life")

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------ formulas


def is_dynamic(version: str) -> bool:
    """True for v6/v7, whose decay changes from token to token."""
    return str(version) in DYNAMIC_VERSIONS


def reads_after_update(version: str) -> bool:
    """v7 writes before it reads (its own decay applies); v4-v6 read the previous state."""
    return str(version) == "7"


def heads_of(cfg: ModelConfig) -> tuple[int, int]:
    """(H, N) with v4 taken as one head of all C channels."""
    if cfg.version == "4":
        return 1, cfg.dim_att
    return cfg.n_head, cfg.head_size


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log sigmoid(x) = -softplus(-x), stable for any x."""
    return -np.logaddexp(0.0, -x)


def log_decay_from_logit(d: np.ndarray, version: str) -> np.ndarray:
    """log lambda (<= 0) from the decay logit d: -exp(d) for v4-v6, -e^-0.5 sigmoid(d) for v7."""
    d = np.asarray(d, dtype=np.float64)
    if str(version) == "7":
        return -V7_DECAY_SCALE * np.exp(_log_sigmoid(d))
    with np.errstate(over="ignore"):
        return -np.exp(d)


def log10_half_life_from_logit(d: np.ndarray, version: str) -> np.ndarray:
    """log10 of the half-life ln2 / rho, straight from d, so it never overflows.

    v4-v6: rho = e^d, log10 h = log10 ln2 - d log10 e. v7: rho = e^-0.5 sigmoid(d),
    log10 h = log10 ln2 + 0.5 log10 e + softplus(-d) log10 e.
    """
    d = np.asarray(d, dtype=np.float64)
    if str(version) == "7":
        return LOG10_LN2 + (0.5 - _log_sigmoid(d)) * LOG10_E
    return LOG10_LN2 - d * LOG10_E


def rate(log_decay: np.ndarray) -> np.ndarray:
    """rho = -ln lambda (per token); from log lambda, never from lambda (which rounds to 1)."""
    return 0.0 - np.asarray(log_decay, dtype=np.float64)  # 0 - x: no -0.0, so rho = 0 gives h = +inf


def half_life(log_decay: np.ndarray) -> np.ndarray:
    """Half-life ln 2 / rho in tokens (inf where rho = 0)."""
    rho = rate(log_decay)
    with np.errstate(divide="ignore"):
        return LN2 / rho


# ------------------------------------------------------------------------------------------------ static decays


@dataclass
class StaticDecay:
    """Static per-step decay of every layer and channel (v6/v7: the data-independent part).

    logit, log_decay, log10_half_life: [L, C] float64.
    """

    version: str
    n_head: int
    head_size: int
    logit: np.ndarray  # [L, C] d: time_decay (v4-v6) or w0 (v7)
    log_decay: np.ndarray  # [L, C] log lambda <= 0
    log10_half_life: np.ndarray  # [L, C]

    @property
    def decay(self) -> np.ndarray:
        """lambda [L, C] in (0, 1]."""
        return np.exp(self.log_decay)

    @property
    def rate(self) -> np.ndarray:
        return rate(self.log_decay)

    @property
    def half_life(self) -> np.ndarray:
        """[L, C] tokens (from log10 h, so finite wherever d is)."""
        return np.power(10.0, self.log10_half_life)

    def head_of_channel(self) -> np.ndarray:
        """[C] head index of every channel."""
        return np.arange(self.logit.shape[1]) // self.head_size

    def by_head(self, values: np.ndarray) -> np.ndarray:
        """[L, C] -> [L, H, N]."""
        return np.asarray(values).reshape(self.logit.shape[0], self.n_head, self.head_size)

    def table(self) -> pd.DataFrame:
        """One row per (layer, channel): layer, head, channel, decay, half_life (the CLI's CSV)."""
        L, C = self.logit.shape
        return pd.DataFrame({
            "layer": np.repeat(np.arange(L), C),
            "head": np.tile(self.head_of_channel(), L),
            "channel": np.tile(np.arange(C), L),
            "decay": self.decay.reshape(-1),
            "half_life": self.half_life.reshape(-1),
        }, columns=list(STATIC_CSV_COLUMNS))


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def static_logit(state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> np.ndarray:
    """The raw decay parameter of every layer as [L, C] float64 (v5.1's per-head value repeated N times)."""
    H, N = heads_of(cfg)
    rows = []
    for layer in range(cfg.n_layer):
        p = f"blocks.{layer}.att."
        if cfg.version == "7":
            d = _f64(state_dict[p + "w0"]).reshape(-1)
        elif cfg.version == "5.1":
            d = np.repeat(_f64(state_dict[p + "time_decay"]).reshape(H), N)
        else:  # v4 [C], v5.2 [H, N], v6 [1, 1, C]
            d = _f64(state_dict[p + "time_decay"]).reshape(-1)
        rows.append(d)
    return np.stack(rows)  # [L, C]


def _params_and_config(source) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Official-name tensors and config of a Checkpoint, a checkpoint path, an RWKV model or a (state_dict, cfg)."""
    from rwkv_core.io.checkpoint import Checkpoint, load_checkpoint

    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source)
    if isinstance(source, Checkpoint):
        return source.state_dict, source.config
    if isinstance(source, tuple):
        return source
    # an RWKV module: its parameters carry the official names; vectors (decays) are float32
    return dict(source.named_parameters()), source.cfg


def static_decay(source) -> StaticDecay:
    """Static decays of a checkpoint: `source` is a `Checkpoint`, a checkpoint path, an `RWKV` model or a
    (state_dict, ModelConfig) pair. Computed in float64 from the raw parameters."""
    sd, cfg = _params_and_config(source)
    H, N = heads_of(cfg)
    d = static_logit(sd, cfg)
    return StaticDecay(cfg.version, H, N, d, log_decay_from_logit(d, cfg.version),
                       log10_half_life_from_logit(d, cfg.version))


def static_bonus(source) -> np.ndarray:
    """The bonus of the current token, [L, C]: v4 `time_first` (log space), v5.1 exp(`time_first`) per head,
    v5.2/v6 `time_faaaa`, v7 `r_k`. Same `source` kinds as `static_decay`."""
    sd, cfg = _params_and_config(source)
    return np.stack([_f64(time_mix_bonus(sd, cfg, f"blocks.{layer}.att.", torch.float64)).reshape(-1)
                     for layer in range(cfg.n_layer)])  # [L, C]


# ------------------------------------------------------------------------------------------------ per-token decays


@dataclass
class TokenDecay:
    """Per-token decays of a prompt: what the forward pass multiplied the state by at each token.

    Holds the decay logit d_t, [L, T, C] float64 (v4/v5: the static values repeated over tokens); log lambda and
    log10 h are derived on access, so only one [L, T, C] array is kept. `layers` lists the model layers the
    first axis holds (ask `token_decays` for the layers you show: a big model's all-layer array is large).
    """

    version: str
    n_head: int
    head_size: int
    tokens: list[int]
    layers: list[int]
    logit: np.ndarray  # [L, T, C]

    @property
    def log_decay(self) -> np.ndarray:
        """log lambda_t [L, T, C] (<= 0)."""
        return log_decay_from_logit(self.logit, self.version)

    @property
    def log10_half_life(self) -> np.ndarray:
        """[L, T, C], straight from d (no overflow)."""
        return log10_half_life_from_logit(self.logit, self.version)

    @property
    def decay(self) -> np.ndarray:
        return np.exp(self.log_decay)

    @property
    def half_life(self) -> np.ndarray:
        return np.power(10.0, self.log10_half_life)

    def index(self, layer: int) -> int:
        """Position of model layer `layer` on the first axis."""
        return self.layers.index(int(layer))

    def select(self, layer: int, tokens: slice = slice(None), channels: slice = slice(None)) -> "TokenDecay":
        """One layer's decays cut to some tokens and channels, [1, T', C'], with this class's formulas: what a view
        shows, without deriving log lambda or h for the whole [L, T, C]."""
        li = self.index(layer)
        return type(self)(self.version, self.n_head, self.head_size, self.tokens[tokens], [int(layer)],
                          self.logit[li:li + 1, tokens, channels])

    def head_median_log10_half_life(self, layer: int) -> np.ndarray:
        """[T, H]: per token and head, the median over the head's channels of log10 h_t."""
        x = log10_half_life_from_logit(self.logit[self.index(layer)], self.version)  # [T, C]
        T = x.shape[0]
        return np.median(x.reshape(T, self.n_head, self.head_size), axis=-1)


def _lora64(x: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """tanh(x @ m1) @ m2 in float64, x rounded to the matrices' dtype first as the model does."""
    x = x.to(m1.dtype).double()
    h = torch.tanh(x @ m1.double())
    return h.to(m2.dtype).double() @ m2.double()


def decay_logit_from_xw(att, xw: torch.Tensor, version: str) -> torch.Tensor:
    """The per-token decay logit d_t [.., C] in float64 for the x_w given (v6: time_decay + LoRA, v7: w0 + LoRA)."""
    if version == "6":
        return att.time_decay.double().reshape(-1) + _lora64(xw, att.time_decay_w1, att.time_decay_w2)
    if version == "7":
        return att.w0.double().reshape(-1) + _lora64(xw, att.w1, att.w2)
    raise ValueError(f"RWKV v{version} has no data-dependent decay")


@torch.no_grad()
def decay_lora_inputs(model, tokens: Sequence[int], layers: Optional[Iterable[int]] = None) -> dict[int, torch.Tensor]:
    """The x_w each chosen layer feeds to its decay LoRA (hook_xw), {layer: [T, C]} as the model computed it (its
    device and dtype), from one forward pass (v6/v7). The smallest capture that gives a layer's per-token decays:
    the decay page keeps it for every layer, so that showing another layer needs no second forward pass."""
    cfg = model.cfg
    if not is_dynamic(cfg.version):
        raise ValueError(f"RWKV v{cfg.version} has no data-dependent decay")
    layers = list(range(cfg.n_layer)) if layers is None else [int(l) for l in layers]
    names = [f"blocks.{l}.att.hook_xw" for l in layers]
    _, _, cache = model.run_with_cache([int(t) for t in tokens], names_filter=names, device=None,
                                        logits="none")
    return {l: cache[n][0] for l, n in zip(layers, names)}


@torch.no_grad()
def token_decays_from_inputs(model, tokens: Sequence[int], lora_inputs: dict[int, torch.Tensor]) -> TokenDecay:
    """Per-token decays of the layers in `lora_inputs` ({layer: x_w [T, C]}, see `decay_lora_inputs`): d_t in
    float64 from those inputs and each layer's own parameters (v6/v7)."""
    cfg = model.cfg
    H, N = heads_of(cfg)
    layers = [int(l) for l in lora_inputs]
    d = np.stack([decay_logit_from_xw(model.blocks[l].att, lora_inputs[l], cfg.version).cpu().numpy()
                  for l in layers])  # [L, T, C]
    return TokenDecay(cfg.version, H, N, [int(t) for t in tokens], layers, d)


@torch.no_grad()
def token_decays(model, tokens: Sequence[int], layers: Optional[Iterable[int]] = None) -> TokenDecay:
    """Per-token decays of a prompt for every (chosen) layer: the w_t of the forward pass (hook_w), as log w_t.

    v6/v7: one forward pass records the x_w each layer feeds to its decay LoRA (hook_xw); d_t is then evaluated in
    float64 from those inputs and the layer's own parameters, so exp(log_decay) equals the w_t the model used (to
    fp32 rounding) while decays near 1 keep their precision. v4/v5: the static decay, repeated over the tokens.
    """
    cfg = model.cfg
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("token_decays needs at least one token")
    layers = list(range(cfg.n_layer)) if layers is None else [int(l) for l in layers]
    if is_dynamic(cfg.version):
        return token_decays_from_inputs(model, tokens, decay_lora_inputs(model, tokens, layers))
    H, N = heads_of(cfg)
    d = static_logit(dict(model.named_parameters()), cfg)[layers]  # [L, C]
    return TokenDecay(cfg.version, H, N, tokens, layers, np.repeat(d[:, None, :], len(tokens), axis=1))  # [L, T, C]


# ------------------------------------------------------------------------------------------------ summaries


TRACE_W_MIN, TRACE_W_MAX = 1e-38, 1.0 - 1e-7  # a trace's w (float32) is clipped into this range before the logs


class TraceTokenDecay(TokenDecay):
    """Per-token decays read from a trace's w: `logit` holds ln rho = ln(-ln w) (w clipped into [TRACE_W_MIN, TRACE_W_MAX]),
    whatever the version, so log lambda = -e^logit and log10 h = log10 ln2 - logit log10 e (the v4-v6 formulas).
    `version` still says who reads when (retention)."""

    @property
    def log_decay(self) -> np.ndarray:
        return -np.exp(self.logit)

    @property
    def log10_half_life(self) -> np.ndarray:
        return LOG10_LN2 - self.logit * LOG10_E

    def head_median_log10_half_life(self, layer: int) -> np.ndarray:
        x = LOG10_LN2 - self.logit[self.index(layer)] * LOG10_E  # [T, C]
        return np.median(x.reshape(x.shape[0], self.n_head, self.head_size), axis=-1)


def trace_token_decays(w: Optional[np.ndarray], cfg, tokens: Sequence[int], layer: int, *,
                       logw: Optional[np.ndarray] = None) -> TraceTokenDecay:
    """Per-token decays of one layer from a trace's w_l{layer} [T, C] (per-step decays, clipped into [TRACE_W_MIN,
    TRACE_W_MAX]) or, given instead, its logw_l{layer} = ln w [T, C] (float16 files: the rate -ln w clipped into
    the same range, so both give the same numbers where both hold them)."""
    if logw is None:
        rate = -np.log(np.clip(np.asarray(w, dtype=np.float64), TRACE_W_MIN, TRACE_W_MAX))
    else:
        rate = np.clip(-np.asarray(logw, dtype=np.float64), -math.log(TRACE_W_MAX), -math.log(TRACE_W_MIN))
    H, N = heads_of(cfg)
    return TraceTokenDecay(cfg.version, H, N, [int(t) for t in tokens], [int(layer)], np.log(rate)[None])  # [1, T, C]


def head_summary(log10_half_life: np.ndarray, n_head: int, context_length: int,
                 layers: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """Per (layer, head): median and max half-life over the head's channels and the count of "long-memory"
    channels whose half-life exceeds `context_length` tokens. log10_half_life [L, C]."""
    x = np.asarray(log10_half_life, dtype=np.float64)
    L, C = x.shape
    N = C // n_head
    by_head = x.reshape(L, n_head, N)
    layers = list(range(L)) if layers is None else list(layers)
    rows = []
    for i, layer in enumerate(layers):
        for h in range(n_head):
            v = by_head[i, h]
            rows.append({
                "layer": layer, "head": h,
                "median_half_life": float(10.0 ** np.median(v)),
                "max_half_life": float(10.0 ** v.max()),
                "min_half_life": float(10.0 ** v.min()),
                "n_long": int((v > math.log10(context_length)).sum()) if context_length > 0 else N,
                "n_channels": N,
            })
    return pd.DataFrame(rows)


def token_averaged_log10_half_life(token_decay: TokenDecay) -> np.ndarray:
    """[L, C]: log10 of the half-life of the mean rate over the prompt (the geometric mean of lambda_t)."""
    mean_rate = rate(token_decay.log_decay).mean(axis=1)  # [L, C]
    with np.errstate(divide="ignore"):
        return LOG10_LN2 - np.log10(mean_rate)


def token_head_summary(token_decay: TokenDecay, layer: int, context_length: Optional[int] = None) -> pd.DataFrame:
    """Per head of one layer, over the prompt: the median over channels of the token-averaged half-life (mean
    rate, i.e. geometric-mean lambda), the p5 / p50 / p95 over tokens of the per-token median half-life, the
    token where it is smallest (the head forgets most there) and the count of channels whose token-averaged
    half-life exceeds `context_length` (default: the prompt length)."""
    T = len(token_decay.tokens)
    context_length = T if context_length is None else context_length
    H, N = token_decay.n_head, token_decay.head_size
    li = token_decay.index(layer)
    avg = token_averaged_log10_half_life(token_decay)[li].reshape(H, N)  # [H, N]
    med = token_decay.head_median_log10_half_life(layer)  # [T, H]
    p5, p50, p95 = np.percentile(med, [5, 50, 95], axis=0)  # [H] each
    rows = []
    for h in range(H):
        t_min = int(np.argmin(med[:, h]))
        rows.append({
            "layer": int(layer), "head": h,
            "avg_half_life": float(10.0 ** np.median(avg[h])),
            "p5_half_life": float(10.0 ** p5[h]), "p50_half_life": float(10.0 ** p50[h]),
            "p95_half_life": float(10.0 ** p95[h]),
            "min_half_life": float(10.0 ** med[t_min, h]), "min_at_token": t_min,
            "n_long": int((avg[h] > math.log10(context_length)).sum()) if context_length > 0 else N,
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ retention


def log_retention(log_decay: np.ndarray, source: int, version: str) -> np.ndarray:
    """log R_{i->t} for source token i = `source` and every reading token t, per channel. log_decay [T, C].

    v4-v6: R = prod_{j=i+1}^{t-1} lambda_j, defined for t > i (t = i + 1 gives 1).
    v7:    R = prod_{j=i+1}^{t} lambda_j, defined for t >= i (t = i gives 1; diagonal part only).
    Undefined entries (t before the first read through the state) are NaN. Summed in float64.
    """
    x = np.asarray(log_decay, dtype=np.float64)
    T = x.shape[0]
    if not 0 <= source < T:
        raise ValueError(f"source token {source} outside the prompt of {T} tokens")
    out = np.full(x.shape, np.nan)
    if reads_after_update(version):
        out[source] = 0.0
        out[source + 1:] = np.cumsum(x[source + 1:], axis=0)  # t: sum_{j=i+1}^{t}
    elif source + 1 < T:
        out[source + 1] = 0.0
        out[source + 2:] = np.cumsum(x[source + 1:T - 1], axis=0)  # t: sum_{j=i+1}^{t-1}
    return out


def retention(log_decay: np.ndarray, source: int, version: str) -> np.ndarray:
    """R_{i->t} in [0, 1] (NaN where undefined); see `log_retention`. [T, C]."""
    return np.exp(log_retention(log_decay, source, version))


def first_read(source: int, version: str) -> int:
    """The first token that reads token `source`'s write through the state (v7: itself; v4-v6: the next)."""
    return source if reads_after_update(version) else source + 1


def retention_by_head(retained: np.ndarray, n_head: int, agg: str = "median") -> np.ndarray:
    """[T, C] -> [T, H]: the retention of each head's channels aggregated by "median", "mean", "max" or "min"."""
    x = np.asarray(retained, dtype=np.float64)
    T, C = x.shape
    x = x.reshape(T, n_head, C // n_head)
    fn = {"median": np.median, "mean": np.mean, "max": np.max, "min": np.min}[agg]
    return fn(x, axis=-1)  # NaN rows stay NaN


def token_decay_table(token_decay: TokenDecay, layer: int, source: int) -> pd.DataFrame:
    """One row per (token, channel) of one layer: layer, token, head, channel, decay, half_life and the retention of
    token `source`'s write (column `retention_from_{source}`). T * C rows: the decay page builds it only when its
    download button is clicked."""
    one = token_decay.select(layer)  # [1, T, C]
    T, C = one.logit.shape[1:]
    log_decay = one.log_decay[0]  # [T, C]
    return pd.DataFrame({
        "layer": int(layer), "token": np.repeat(np.arange(T), C), "head": np.tile(np.arange(C) // one.head_size, T),
        "channel": np.tile(np.arange(C), T), "decay": np.exp(log_decay).reshape(-1),
        "half_life": one.half_life[0].reshape(-1),
        f"retention_from_{source}": retention(log_decay, source, one.version).reshape(-1)})


# ------------------------------------------------------------------------------------------------ state size


@dataclass
class StateSizes:
    """Size of the WKV state after every token: frobenius and max_abs [L, T, H] (v4: of aa / bb, one head)."""

    version: str
    layers: list[int]
    frobenius: np.ndarray  # [L, T, H]
    max_abs: np.ndarray  # [L, T, H]

    def index(self, layer: int) -> int:
        return self.layers.index(int(layer))

    def table(self) -> pd.DataFrame:
        """One row per (layer, token, head): layer, token, head, frobenius, max_abs (L * T * H rows)."""
        L, T, H = self.frobenius.shape
        return pd.DataFrame({"layer": np.repeat(self.layers, T * H), "token": np.tile(np.repeat(np.arange(T), H), L),
                             "head": np.tile(np.arange(H), T * L),
                             "frobenius": self.frobenius.reshape(-1), "max_abs": self.max_abs.reshape(-1)})


def state_size(wkv_state: torch.Tensor, version: str) -> tuple[np.ndarray, np.ndarray]:
    """Frobenius norm and max |entry| per head of WKV states [..., H, N, N] (v4: [..., 3, C] -> of aa / bb over
    the C channels, one head). Returns two float64 arrays [..., H]. The norm sums in float64; the largest entry is
    exact in the state's own dtype (no float64 copy of a block of states)."""
    s = wkv_state.detach()
    if version == "4":
        s = s.double()
        content = (s[..., 0, :] / s[..., 1, :])[..., None, :]  # [..., 1, C] aa / bb
        return (torch.linalg.vector_norm(content, dim=-1).cpu().numpy(),
                content.abs().amax(-1).cpu().numpy())
    peak = torch.maximum(s.amax(dim=(-2, -1)), -s.amin(dim=(-2, -1)))
    return (torch.linalg.vector_norm(s, dim=(-2, -1), dtype=torch.float64).cpu().numpy(),
            peak.double().cpu().numpy())


@dataclass
class DecayPass:
    """What one forward pass over a prompt gives the decay views: the decay LoRA inputs of every layer (v6/v7; empty
    for v4/v5), as `decay_lora_inputs` returns them, and the state sizes of the measured layers; where the pass ran
    every layer (v6/v7) also each block's input, so that another layer's state sizes cost that block alone (the
    inputs and x_w are 2 L T C floats: 400 MB at the 1.5B shape and 1,031 tokens)."""

    lora_inputs: dict[int, torch.Tensor]  # {layer: x_w [T, C]}
    state_sizes: StateSizes
    resid_pre: dict[int, torch.Tensor] = field(default_factory=dict)  # {layer >= 1: the block's input [T, C]}
    v_first: Optional[torch.Tensor] = None  # [T, C] RWKV-7: layer 0's value, which every later layer mixes in

    def state_sizes_of(self, model, layer: int) -> Optional[StateSizes]:
        """The state sizes of `layer`: measured by this pass, or from the layer's kept input by running that one
        block (None where this pass kept no input for it: see `state_sizes`)."""
        if layer in self.state_sizes.layers:
            i = self.state_sizes.index(layer)
            ss = self.state_sizes
            return StateSizes(ss.version, [layer], ss.frobenius[i:i + 1], ss.max_abs[i:i + 1])
        if layer not in self.resid_pre:
            return None
        x = self.resid_pre[layer]
        T = x.shape[0]
        meter = _StateMeter(model.cfg.version, [layer], T, heads_of(model.cfg)[0], stop_after=True)
        with torch.no_grad(), model.hooks([(f"blocks.{layer}.att.hook_state", meter)]):
            try:
                model.run_block(layer, x, self.v_first, state_positions=range(T))
            except _Measured:
                pass
        meter.flush(0)
        return StateSizes(model.cfg.version, [layer], meter.frobenius, meter.max_abs)


class _Measured(Exception):
    """Raised by the state hook once the last measured layer has seen every token: the rest of the forward pass
    would compute nothing that is asked for."""


class _StateMeter:
    """State hook that fills [L, T, H] state sizes: it keeps the states of up to `block` tokens per layer and measures
    them together (one bulk norm per block instead of a few small tensor operations per token). With `stop_after`
    it ends the forward pass (raises `_Measured`) when the last measured layer is done."""

    def __init__(self, version: str, layers: list[int], T: int, H: int, stop_after: bool, block: int = 64):
        self.version, self.T, self.block = version, T, block
        self.slot = {f"blocks.{l}.att.hook_state": i for i, l in enumerate(layers)}
        self.last = f"blocks.{max(layers)}.att.hook_state" if stop_after and layers else None
        self.frobenius = np.full((len(layers), T, H), np.nan)
        self.max_abs = np.full((len(layers), T, H), np.nan)
        self.pending: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in range(len(layers))}

    def __call__(self, state: torch.Tensor, hook) -> None:
        i = self.slot[hook.name]
        self.pending[i].append((hook.pos, state[0].clone()))  # [H, N, N] (v4: [3, C])
        if len(self.pending[i]) == self.block or hook.pos == self.T - 1:
            self.flush(i)
        if hook.pos == self.T - 1 and hook.name == self.last:
            raise _Measured

    def flush(self, i: int) -> None:
        if not self.pending[i]:
            return
        pos = [p for p, _ in self.pending[i]]
        f, m = state_size(torch.stack([s for _, s in self.pending[i]]), self.version)  # [P, H] each
        self.frobenius[i, pos], self.max_abs[i, pos] = f, m
        self.pending[i] = []


def _decay_forward(model, tokens: Sequence[int], state_layers: list[int], lora_inputs: bool) -> DecayPass:
    """One forward pass measuring the state after every token in `state_layers` (their WKV runs token by token, the
    other layers keep the chunked kernel) and, with `lora_inputs`, recording the x_w of every layer; without, the
    pass ends after the last measured layer."""
    cfg = model.cfg
    tokens = [int(t) for t in tokens]
    T = len(tokens)
    meter = _StateMeter(cfg.version, state_layers, T, heads_of(cfg)[0], stop_after=not lora_inputs)
    xw: dict[int, torch.Tensor] = {}

    resid: dict[int, torch.Tensor] = {}
    v_first: list[torch.Tensor] = []

    def record(x: torch.Tensor, hook) -> None:
        xw[int(hook.name.split(".")[1])] = x[0].detach()  # [T, C]

    def record_resid(x: torch.Tensor, hook) -> None:
        resid[int(hook.name.split(".")[1])] = x[0].detach()  # [T, C]

    hooks = [(f"blocks.{l}.att.hook_state", meter) for l in state_layers]
    if lora_inputs:  # the pass runs every layer: keep each block's input, so that a layer's state is one block's run
        hooks += [(f"blocks.{l}.att.hook_xw", record) for l in range(cfg.n_layer)]
        hooks += [(f"blocks.{l}.hook_resid_pre", record_resid) for l in range(1, cfg.n_layer)]
        if cfg.version == "7":
            hooks.append(("blocks.0.att.hook_v", lambda x, hook: v_first.append(x[0].detach())))
    try:
        model.run_with_hooks(tokens, hooks, state_positions=range(T), logits="none")
    except _Measured:
        pass
    for i in meter.pending:
        meter.flush(i)
    return DecayPass({l: xw[l] for l in sorted(xw)}, StateSizes(cfg.version, state_layers, meter.frobenius,
                                                                 meter.max_abs), resid, v_first[0] if v_first else None)


@torch.no_grad()
def decay_pass(model, tokens: Sequence[int], state_layers: Optional[Iterable[int]] = None) -> DecayPass:
    """Everything per token the decay page needs, from one forward pass: (v6/v7) the x_w of every layer, which
    `token_decays_from_inputs` turns into that layer's per-token decays, and the state sizes of `state_layers`
    (default all). A measured layer runs its WKV token by token (~0.3 s per layer at 1,031 tokens and width 768 on
    a 2-core CPU): measure the layers shown. x_w of the layers above a measured one equals `decay_lora_inputs`'s to
    float32 rounding (the chunked kernel sums in another order)."""
    cfg = model.cfg
    state_layers = list(range(cfg.n_layer)) if state_layers is None else [int(l) for l in state_layers]
    return _decay_forward(model, tokens, state_layers, is_dynamic(cfg.version))


@torch.no_grad()
def state_sizes(model, tokens: Sequence[int], layers: Optional[Iterable[int]] = None) -> StateSizes:
    """State size after every token of the prompt, measured on the fly through the state hook (nothing big
    is cached, so long prompts are fine); the forward pass ends after the last measured layer. See `state_size`
    for what is measured."""
    layers = list(range(model.cfg.n_layer)) if layers is None else [int(l) for l in layers]
    return _decay_forward(model, tokens, layers, lora_inputs=False).state_sizes


# ------------------------------------------------------------------------------------------------ CSV


def write_static_csv(checkpoint_path: PathLike, out_csv: PathLike) -> int:
    """Write the static decay table of a checkpoint (columns layer, head, channel, decay, half_life; one row per
    layer and channel, L*C rows; v4: head 0) to `out_csv` (a path or a text file such as sys.stdout); returns the
    number of rows. Floats at full precision. `python -m rwkv_core decay` writes it."""
    table = static_decay(checkpoint_path).table()
    table.to_csv(out_csv, index=False, float_format="%.17g")
    return len(table)
