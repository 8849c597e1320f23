"""The RWKV model, v4 to v7, as PyTorch modules whose parameter names are the official checkpoint names.

One forward pass runs a whole prompt (sequence mode, chunked WKV) or, through `forward_rnn`, one token at a time
with the state carried explicitly (RNN mode); both give the same numbers. Hook points named as in TransformerLens
(`blocks.{l}.att.hook_r`, `blocks.{l}.hook_resid_post`, ...) let callers capture or replace any intermediate,
including the recurrent state after chosen tokens, which is what patching, ablation and tracing are built on.

Conventions: B batch, T tokens, C channels, H heads, N head size, F FFN width, V vocabulary, L layers.
Matrices may be stored in bf16/fp16; every vector parameter, every decay and every state stays in float32.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from rwkv_core.model import wkv
from rwkv_core.model.config import ModelConfig
from rwkv_core.model.hooks import HookFn, HookPoint, name_hook_points
from rwkv_core.model.threads import recurrence_threads

V7_DECAY_SCALE = math.exp(-0.5)  # v7: log w = -e^-0.5 * sigmoid(d)
# storage types of the weight matrices by the names the command line and the dashboard offer (`RWKV.to_device`)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Tokens = Union[Sequence[int], torch.Tensor]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]


def lin(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ W^T in the weight's dtype, result in float32 (the residual stream stays float32)."""
    return F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype)).float()


def mm(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x @ M for LoRA matrices stored [in, out], result in float32."""
    return (x.to(m.dtype) @ m).float()


# ------------------------------------------------------------------------------------------------ state


@dataclass
class RWKVState:
    """The recurrent state of every layer, batched.

    att_shift [L, B, C]: ln1 output of the last token (time-mix token shift);
    wkv [L, B, H, N, N] ([key, value] for v5/v6, [value, key] for v7) or [L, B, 3, C] for v4 (aa, bb, pp);
    ffn_shift [L, B, C]: ln2 output of the last token (channel-mix token shift).
    """

    att_shift: torch.Tensor
    wkv: torch.Tensor
    ffn_shift: torch.Tensor

    def clone(self) -> "RWKVState":
        return RWKVState(self.att_shift.clone(), self.wkv.clone(), self.ffn_shift.clone())

    def to(self, device) -> "RWKVState":
        return RWKVState(self.att_shift.to(device), self.wkv.to(device), self.ffn_shift.to(device))

    def select(self, index) -> "RWKVState":
        """Batch rows `index` (int, slice or index tensor), keeping the batch axis."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return RWKVState(self.att_shift[:, index], self.wkv[:, index], self.ffn_shift[:, index])

    def expand(self, B: int) -> "RWKVState":
        """Repeat a batch-1 state B times."""
        rep = lambda t: t.expand(t.shape[0], B, *t.shape[2:]).clone()
        return RWKVState(rep(self.att_shift), rep(self.wkv), rep(self.ffn_shift))

    @property
    def batch_size(self) -> int:
        return self.att_shift.shape[1]


# ------------------------------------------------------------------------------------------------ helpers


def token_shift(x: torch.Tensor, prev: torch.Tensor, hook: HookPoint, positions: Sequence[int]):
    """Previous token's input for every token, and the shift state after the last token.

    x [B, T, C]; prev [B, C] (state before token 0). The state after token p is x[:, p]; `hook` may replace it
    (state hook, `hook.pos = p`), which changes what token p + 1 sees.
    """
    xx = torch.cat([prev[:, None], x[:, :-1]], 1)  # [B, T, C]
    last = x[:, -1]
    if hook.active:
        T = x.shape[1]
        for p in positions:
            new = hook(x[:, p], pos=p)
            if p + 1 < T:
                xx[:, p + 1] = new
            else:
                last = new
    return xx, last


def run_wkv_segments(fn: Callable, seq_inputs: Sequence[torch.Tensor], state: torch.Tensor, hook: HookPoint,
                     positions: Sequence[int], need_state: bool = True, states_fn: Optional[Callable] = None):
    """Run a WKV function over the tokens, stopping after each position in `positions` to let `hook` see or replace
    the state. fn(*inputs_slice, state, need_state=...) -> (y, state); inputs are [B, T, ...]. With need_state
    False the state after the last token may come back as None (see `wkv`: the caller discards it).

    Where the hook asks for the state after most tokens and the version has a states kernel (`states_fn`:
    fn(*inputs_slice, state) -> (y, states after every token)), the tokens run `wkv.STATES_BLOCK` at a time through
    it instead of one call per token."""
    T = seq_inputs[0].shape[1]
    cuts = sorted(set(p for p in positions if 0 <= p < T)) if hook.active else []
    with recurrence_threads(seq_inputs[0]):
        if states_fn is not None and len(cuts) * 8 > T:
            return _run_wkv_blocks(states_fn, seq_inputs, state, hook, set(cuts))
        return _run_wkv_cuts(fn, seq_inputs, state, hook, cuts, need_state)


def _run_wkv_cuts(fn: Callable, seq_inputs: Sequence[torch.Tensor], state: torch.Tensor, hook: HookPoint,
                  cuts: list[int], need_state: bool):
    """`run_wkv_segments` for a state hook at a few tokens (or none): one call per segment between them."""
    T = seq_inputs[0].shape[1]
    ys, start = [], 0
    for p in cuts + [T - 1]:
        if p < start:
            continue
        y, state = fn(*(t[:, start:p + 1] for t in seq_inputs), state, need_state=need_state or p in cuts)
        ys.append(y)
        if p in cuts:
            state = hook(state, pos=p)
        start = p + 1
    return torch.cat(ys, 1), state


def _run_wkv_blocks(states_fn: Callable, seq_inputs: Sequence[torch.Tensor], state: torch.Tensor, hook: HookPoint,
                    cuts: set[int]):
    """`run_wkv_segments` for a state hook at most tokens: blocks of up to `wkv.STATES_BLOCK` tokens, each giving the
    state after every token; the hook sees each asked-for one, and where it returns another tensor (a replaced
    state) the block is cut there and the next one starts from it. After a replacement the blocks start at one
    token and double while the hook leaves the states alone (a hook replacing at every token costs no more than
    one call per token)."""
    T = seq_inputs[0].shape[1]
    ys, start, block = [], 0, wkv.STATES_BLOCK
    while start < T:
        stop = min(start + block, T)
        y, states = states_fn(*(t[:, start:stop] for t in seq_inputs), state)  # states: [B, L, *state shape]
        end, state = stop, states[:, -1]
        block = min(2 * block, wkv.STATES_BLOCK)
        for p in sorted(c for c in cuts if start <= c < stop):
            seen = states[:, p - start]
            out = hook(seen, pos=p)
            if out is not seen:
                end, state, block = p + 1, out, 1
                break
        ys.append(y[:, :end - start])
        start = end
    return torch.cat(ys, 1), state


def time_mix_bonus(params: Mapping[str, torch.Tensor], cfg: ModelConfig, prefix: str = "",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The bonus a token's own write gets when that token reads it, from the time-mix parameters by official name
    (`prefix` + name: "blocks.{l}.att." for a checkpoint's tensors, "" for a time-mix module's own parameters):
    v4 `time_first` [C] (log space), v5.1 exp(`time_first`) per head as [H, N], v5.2/v6 `time_faaaa` [H, N], v7
    `r_k` [H, N] (v7 adds its bonus after ln_x). The one definition the model, traces, scores and decay tables use.
    """
    get = lambda name: params[prefix + name].to(dtype)  # noqa: E731
    if cfg.version == "7":
        return get("r_k")
    if cfg.version == "4":
        return get("time_first")
    if cfg.version == "5.1":
        return torch.exp(get("time_first").reshape(cfg.n_head))[:, None].expand(cfg.n_head, cfg.head_size)
    return get("time_faaaa")


def group_norm(x: torch.Tensor, H: int, weight, bias, eps: float) -> torch.Tensor:
    """ln_x: GroupNorm with H groups over the channels of each token. x [B, T, C]."""
    B, T, C = x.shape
    return F.group_norm(x.reshape(B * T, C), H, weight, bias, eps).view(B, T, C)


def _vec(C: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, 1, C))


def _linear(i: int, o: int) -> nn.Linear:
    return nn.Linear(i, o, bias=False)


# ------------------------------------------------------------------------------------------------ time-mix


class TimeMix(nn.Module):
    """Common hook points of every time-mix ("attention") block."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.cfg, self.layer_id = cfg, layer_id
        self.hook_r = HookPoint()  # [B, T, C] receptance
        self.hook_k = HookPoint()  # [B, T, C] key (v7: before the a-dependent modification)
        self.hook_v = HookPoint()  # [B, T, C] value (v7: after the value residual)
        self.hook_w = HookPoint()  # [B, T, C] per-step decay in (0, 1)
        self.hook_logw = HookPoint()  # [B, T, C] log of the decay, exactly what the WKV kernel uses (<= 0)
        self.hook_wkv = HookPoint()  # [B, T, C] WKV output before ln_x and the gate (v4: wkv)
        self.hook_out = HookPoint()  # [B, T, C] the block's output, after the output projection
        self.hook_shift = HookPoint()  # [B, C] token-shift state after token `pos`
        self.hook_state = HookPoint()  # [B, H, N, N] (v4: [B, 3, C]) WKV state after token `pos`

    def _decay_hook(self, logw: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """Let hook_w see (and patch) the per-step decay w = exp(logw) and hook_logw the log-decay the kernel then
        uses, both as [B, T, C]. w is converted back to a log only if a hook replaced it (w can underflow to 0
        where the log-decay is still finite)."""
        if not (self.hook_w.active or self.hook_logw.active):
            return logw
        C, tail = self.cfg.dim_att, logw.shape[2:]
        if self.hook_w.active:
            w = torch.exp(logw).expand(B, T, *tail).reshape(B, T, C)
            patched = self.hook_w(w)
            if patched is not w:
                logw = torch.log(patched).view(B, T, *tail)
        if self.hook_logw.active:
            full = logw.expand(B, T, *tail).reshape(B, T, C)
            patched = self.hook_logw(full)
            if patched is not full:
                logw = patched.view(B, T, *tail)
        return logw

    def bonus(self) -> torch.Tensor:
        """This layer's bonus, float32 (see `time_mix_bonus`)."""
        return time_mix_bonus(self._parameters, self.cfg)

    def use_chunked(self, chunked: bool, positions: Sequence[int], T: int) -> bool:
        """Chunks pay off only if the state is not stopped at most tokens (a state hook at every token)."""
        return chunked and not (self.hook_state.active and len(positions) * 8 > T)


class TimeMixV4(TimeMix):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        C = cfg.n_embd
        self.time_decay = nn.Parameter(torch.zeros(C))  # [C]
        self.time_first = nn.Parameter(torch.zeros(C))  # [C]
        self.time_mix_k, self.time_mix_v, self.time_mix_r = _vec(C), _vec(C), _vec(C)
        self.key, self.value, self.receptance, self.output = (_linear(C, C) for _ in range(4))

    def forward(self, x, shift, state, v_first, positions, chunked: bool, need_state: bool = True):
        B, T, C = x.shape
        xx, shift = token_shift(x, shift, self.hook_shift, positions)
        mix = lambda m: x * m + xx * (1 - m)
        r = self.hook_r(torch.sigmoid(lin(mix(self.time_mix_r), self.receptance.weight)))
        k = self.hook_k(lin(mix(self.time_mix_k), self.key.weight))
        v = self.hook_v(lin(mix(self.time_mix_v), self.value.weight))
        rho = torch.exp(self.time_decay.float())  # [C] per-step log-decay is -rho
        rho_bt = -self._decay_hook(-rho.expand(B, T, C), B, T)
        u = self.bonus()
        if not torch.equal(rho_bt, rho.expand(B, T, C)):  # a hook patched the decay per token
            kern = lambda k_, v_, rho_, s, need_state: _wkv4_per_token(k_, v_, rho_, u, s)
            y, state = run_wkv_segments(kern, (k, v, rho_bt), state, self.hook_state, positions, need_state)
        else:
            kern = wkv.wkv4_chunked if self.use_chunked(chunked, positions, T) else wkv.wkv4_serial
            y, state = run_wkv_segments(lambda k_, v_, s, need_state: kern(k_, v_, rho, u, s, need_state=need_state),
                                        (k, v), state, self.hook_state, positions, need_state)
        y = self.hook_wkv(y)
        out = self.hook_out(lin(r * y, self.output.weight))
        return out, shift, state, v_first


def _wkv4_per_token(k, v, rho_bt, u, state):
    """v4 recurrence with a per-token decay rate [B, T, C] (only used when a hook patches the decay)."""
    ys = []
    for t in range(k.shape[1]):
        y, state = wkv.wkv4_serial(k[:, t:t + 1], v[:, t:t + 1], rho_bt[:, t], u, state)
        ys.append(y)
    return torch.cat(ys, 1), state


def _wkv5_run(r, k, v, logw, u, state, hook: HookPoint, positions, chunked: bool, H: int, N: int,
              need_state: bool = True):
    """Heads view of v5/v6 inputs [B, T, C] -> WKV output [B, T, C] and the new state [B, H, N, N]."""
    B, T, C = r.shape
    kern = wkv.wkv5_chunked if chunked else wkv.wkv5_serial
    heads = lambda t: t.reshape(B, T, H, N)
    y, state = run_wkv_segments(lambda r_, k_, v_, w_, s, need_state: kern(r_, k_, v_, w_, u, s, need_state=need_state),
                                (heads(r), heads(k), heads(v), logw), state, hook, positions, need_state,
                                states_fn=lambda r_, k_, v_, w_, s: wkv.wkv5_states(r_, k_, v_, w_, u, s))
    return y.reshape(B, T, C), state


class TimeMixV5(TimeMix):
    """v5.1 (rwkv.cpp label: gate-less RWKV-5 preview, one decay per head) and v5.2 (x052)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.gated = cfg.version == "5.2"
        if self.gated:
            self.time_decay = nn.Parameter(torch.zeros(H, N))  # [H, N]
            self.time_faaaa = nn.Parameter(torch.zeros(H, N))  # [H, N] bonus u
            self.time_mix_g = _vec(C)
        else:
            self.time_decay = nn.Parameter(torch.zeros(H))  # [H]
            self.time_first = nn.Parameter(torch.zeros(H))  # [H]; the bonus is exp(time_first)
        self.time_mix_k, self.time_mix_v, self.time_mix_r = _vec(C), _vec(C), _vec(C)
        self.receptance, self.key, self.value = (_linear(C, cfg.dim_att) for _ in range(3))
        self.output = _linear(cfg.dim_att, C)
        if self.gated:
            self.gate = _linear(C, cfg.dim_att)
            self.hook_g = HookPoint()  # [B, T, C] gate silu(W_g x_g)
        self.ln_x = nn.GroupNorm(H, cfg.dim_att, eps=cfg.ln_x_eps)

    def decay_and_bonus(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Static per-step log-decay [H, N] (<= 0) and the bonus u [H, N], float32."""
        H, N = self.cfg.n_head, self.cfg.head_size
        if self.gated:
            return -torch.exp(self.time_decay.float()), self.bonus()
        return -torch.exp(self.time_decay.float())[:, None].expand(H, N), self.bonus()

    def forward(self, x, shift, state, v_first, positions, chunked: bool, need_state: bool = True):
        B, T, C = x.shape
        H, N = self.cfg.n_head, self.cfg.head_size
        xx, shift = token_shift(x, shift, self.hook_shift, positions)
        mix = lambda m: x * m + xx * (1 - m)
        r = self.hook_r(lin(mix(self.time_mix_r), self.receptance.weight))
        k = self.hook_k(lin(mix(self.time_mix_k), self.key.weight))
        v = self.hook_v(lin(mix(self.time_mix_v), self.value.weight))
        logw, u = self.decay_and_bonus()
        logw = self._decay_hook(logw.expand(B, T, H, N), B, T)
        y, state = _wkv5_run(r, k, v, logw, u, state, self.hook_state, positions,
                             self.use_chunked(chunked, positions, T), H, N, need_state)
        y = group_norm(self.hook_wkv(y), H, self.ln_x.weight, self.ln_x.bias, self.cfg.ln_x_eps)
        if self.gated:
            y = y * self.hook_g(F.silu(lin(mix(self.time_mix_g), self.gate.weight)))
        return self.hook_out(lin(y, self.output.weight)), shift, state, v_first


class TimeMixV6(TimeMix):
    """v6 (x060): data-dependent token shift (ddlerp) and data-dependent decay."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        Dm, Dd = cfg.lora["maa"], cfg.lora["decay"]
        self.time_maa_x, self.time_maa_w, self.time_maa_k = _vec(C), _vec(C), _vec(C)
        self.time_maa_v, self.time_maa_r, self.time_maa_g = _vec(C), _vec(C), _vec(C)
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * Dm))  # [C, 5 Dm]
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, Dm, C))  # [5, Dm, C], order w, k, v, r, g
        self.time_decay = nn.Parameter(torch.zeros(1, 1, cfg.dim_att))  # [1, 1, C]
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, Dd))  # [C, Dd]
        self.time_decay_w2 = nn.Parameter(torch.zeros(Dd, cfg.dim_att))  # [Dd, C]
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))  # [H, N] bonus u
        self.receptance, self.key, self.value, self.gate = (_linear(C, cfg.dim_att) for _ in range(4))
        self.output = _linear(cfg.dim_att, C)
        self.ln_x = nn.GroupNorm(H, cfg.dim_att, eps=cfg.ln_x_eps)
        self.hook_g = HookPoint()  # [B, T, C] gate silu(W_g x_g)
        self.hook_xw = HookPoint()  # [B, T, C] x_w, the input of the decay LoRA (what makes the decay data-dependent)

    def log_decay(self, xw: torch.Tensor) -> torch.Tensor:
        """log w_t = -exp(time_decay + tanh(xw W1) W2): [B, T, C], float32."""
        d = self.time_decay.float() + mm(torch.tanh(mm(xw, self.time_decay_w1)), self.time_decay_w2)
        return -torch.exp(d)

    def forward(self, x, shift, state, v_first, positions, chunked: bool, need_state: bool = True):
        B, T, C = x.shape
        H, N = self.cfg.n_head, self.cfg.head_size
        xx, shift = token_shift(x, shift, self.hook_shift, positions)
        dx = xx - x  # [B, T, C]
        z = torch.tanh(mm(x + dx * self.time_maa_x, self.time_maa_w1))  # [B, T, 5 Dm]
        z = z.view(B * T, 5, -1).transpose(0, 1)  # [5, B T, Dm]
        m = torch.bmm(z.to(self.time_maa_w2.dtype), self.time_maa_w2).float().view(5, B, T, C)
        xw, xk, xv, xr, xg = (x + dx * (maa + m[i]) for i, maa in enumerate(
            (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)))
        r = self.hook_r(lin(xr, self.receptance.weight))
        k = self.hook_k(lin(xk, self.key.weight))
        v = self.hook_v(lin(xv, self.value.weight))
        g = self.hook_g(F.silu(lin(xg, self.gate.weight)))
        logw = self._decay_hook(self.log_decay(self.hook_xw(xw)).view(B, T, H, N), B, T)
        y, state = _wkv5_run(r, k, v, logw, self.bonus(), state, self.hook_state, positions,
                             self.use_chunked(chunked, positions, T), H, N, need_state)
        y = group_norm(self.hook_wkv(y), H, self.ln_x.weight, self.ln_x.bias, self.cfg.ln_x_eps) * g
        return self.hook_out(lin(y, self.output.weight)), shift, state, v_first


class TimeMixV7(TimeMix):
    """v7 (x070): generalised delta rule with in-context learning rate a, value residual and r_k bonus."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        # a kernel equal to `wkv.wkv7_chunked` that this block uses instead (training sets one whose backward is
        # cheaper); None = `wkv.wkv7_chunked`. Per model, so other models in the process are untouched.
        self.wkv7_chunked: Optional[Callable] = None
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        lo = cfg.lora
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, _vec(C))
        self.w1, self.w2 = nn.Parameter(torch.zeros(C, lo["w"])), nn.Parameter(torch.zeros(lo["w"], C))
        self.a1, self.a2 = nn.Parameter(torch.zeros(C, lo["a"])), nn.Parameter(torch.zeros(lo["a"], C))
        if layer_id > 0:  # layer 0 sets v_first and has no value residual
            self.v0 = _vec(C)
            self.v1, self.v2 = nn.Parameter(torch.zeros(C, lo["v"])), nn.Parameter(torch.zeros(lo["v"], C))
            self.hook_v_first = HookPoint()  # [B, T, C] layer 0's value, entering this layer
            self.hook_v_mix = HookPoint()  # [B, T, C] sigmoid(v0 + x_v v1 v2): how much of v_first is taken
        self.g1, self.g2 = nn.Parameter(torch.zeros(C, lo["g"])), nn.Parameter(torch.zeros(lo["g"], C))
        self.r_k = nn.Parameter(torch.zeros(H, N))  # [H, N]
        self.receptance, self.key, self.value, self.output = (_linear(C, C) for _ in range(4))
        self.ln_x = nn.GroupNorm(H, C, eps=cfg.ln_x_eps)
        self.hook_a = HookPoint()  # [B, T, C] in-context learning rate a in (0, 1)
        self.hook_kk = HookPoint()  # [B, T, C] removal key kk (unit norm per head)
        self.hook_k_tilde = HookPoint()  # [B, T, C] the key written to the state, k * (1 + (a - 1) k_a)
        self.hook_g = HookPoint()  # [B, T, C] output gate
        self.hook_xw = HookPoint()  # [B, T, C] x_w, the input of the decay LoRA (what makes the decay data-dependent)

    def log_decay(self, xw: torch.Tensor) -> torch.Tensor:
        """log w_t = -e^-0.5 sigmoid(w0 + tanh(xw w1) w2): [B, T, C], float32, in (-0.607, 0)."""
        return -V7_DECAY_SCALE * torch.sigmoid(self.w0.float() + mm(torch.tanh(mm(xw, self.w1)), self.w2))

    def forward(self, x, shift, state, v_first, positions, chunked: bool, need_state: bool = True):
        B, T, C = x.shape
        H, N = self.cfg.n_head, self.cfg.head_size
        xx, shift = token_shift(x, shift, self.hook_shift, positions)
        dx = xx - x
        xr, xw, xk, xv, xa, xg = (x + dx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r = self.hook_r(lin(xr, self.receptance.weight))
        logw = self._decay_hook(self.log_decay(self.hook_xw(xw)), B, T)
        k = self.hook_k(lin(xk, self.key.weight))
        v = lin(xv, self.value.weight)
        a = self.hook_a(torch.sigmoid(self.a0.float() + mm(mm(xa, self.a1), self.a2)))
        g = self.hook_g(mm(torch.sigmoid(mm(xg, self.g1)), self.g2))
        kk = self.hook_kk(F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C))
        k = self.hook_k_tilde(k * (1 + (a - 1) * self.k_a))
        if self.layer_id > 0:
            v_first = self.hook_v_first(v_first)
            v = v + (v_first - v) * self.hook_v_mix(torch.sigmoid(self.v0.float() + mm(mm(xv, self.v1), self.v2)))
        v = self.hook_v(v)
        if self.layer_id == 0:
            v_first = v
        kern = (self.wkv7_chunked or wkv.wkv7_chunked) if self.use_chunked(chunked, positions, T) else wkv.wkv7_serial
        heads = lambda t: t.reshape(B, T, H, N)
        y, state = run_wkv_segments(kern, (heads(r), heads(logw), heads(k), heads(v), heads(-kk), heads(kk * a)),
                                    state, self.hook_state, positions, need_state, states_fn=wkv.wkv7_states)
        y = self.hook_wkv(y.reshape(B, T, C))
        y = group_norm(y, H, self.ln_x.weight, self.ln_x.bias, self.cfg.ln_x_eps)
        bonus = (r * k * self.bonus().view(C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
        y = y + bonus.view(B, T, C)
        return self.hook_out(lin(y * g, self.output.weight)), shift, state, v_first


# ------------------------------------------------------------------------------------------------ channel-mix


class ChannelMix(nn.Module):
    """Channel-mix ("FFN"): v4/v5 lerp token shift, v6 maa, v7 without receptance."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        C, Fd = cfg.n_embd, cfg.dim_ffn
        self.version = cfg.version
        if cfg.version in ("4", "5.1", "5.2"):
            self.time_mix_k, self.time_mix_r = _vec(C), _vec(C)
        elif cfg.version == "6":
            self.time_maa_k, self.time_maa_r = _vec(C), _vec(C)
        else:
            self.x_k = _vec(C)
        self.key = _linear(C, Fd)
        if cfg.version != "7":
            self.receptance = _linear(C, C)
            self.hook_r = HookPoint()  # [B, T, C] sigmoid receptance
        self.value = _linear(Fd, C)
        self.hook_k = HookPoint()  # [B, T, F] relu(W_k x_k)^2
        self.hook_out = HookPoint()  # [B, T, C]
        self.hook_shift = HookPoint()  # [B, C] token-shift state after token `pos`

    def forward(self, x, shift, positions):
        xx, shift = token_shift(x, shift, self.hook_shift, positions)
        if self.version == "7":
            xk = x + (xx - x) * self.x_k
        elif self.version == "6":
            xk, xr = x + (xx - x) * self.time_maa_k, x + (xx - x) * self.time_maa_r
        else:
            xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
            xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k = self.hook_k(torch.relu(lin(xk, self.key.weight)) ** 2)
        out = lin(k, self.value.weight)
        if self.version != "7":
            out = self.hook_r(torch.sigmoid(lin(xr, self.receptance.weight))) * out
        return self.hook_out(out), shift


# ------------------------------------------------------------------------------------------------ block and model

TIME_MIX = {"4": TimeMixV4, "5.1": TimeMixV5, "5.2": TimeMixV5, "6": TimeMixV6, "7": TimeMixV7}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        if layer_id == 0 and cfg.has_ln0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = TIME_MIX[cfg.version](cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)
        if cfg.resid_bias:
            self.resid_bias = nn.Parameter(torch.zeros(C))  # [C] constant added after the time-mix
        self.hook_resid_pre = HookPoint()  # [B, T, C] block input (block 0: after ln0)
        self.hook_resid_mid = HookPoint()  # [B, T, C] after the time-mix
        self.hook_resid_post = HookPoint()  # [B, T, C] after the channel-mix: the block's output

    def forward(self, x, att_shift, wkv_state, ffn_shift, v_first, positions, chunked: bool, need_state: bool = True):
        """One block on x [B, T, C]. The WKV state may have fewer rows than x (shared by groups of rows, see
        `wkv`); need_state=False: the caller discards the WKV state after the last token (it may be None)."""
        if hasattr(self, "ln0"):
            x = F.layer_norm(x, x.shape[-1:], self.ln0.weight.float(), self.ln0.bias.float())
        x = self.hook_resid_pre(x)
        h, att_shift, wkv_state, v_first = self.att(_ln(self.ln1, x), att_shift, wkv_state, v_first, positions, chunked,
                                                    need_state)
        x = x + h
        if hasattr(self, "resid_bias"):
            x = x + self.resid_bias.float()
        x = self.hook_resid_mid(x)
        h, ffn_shift = self.ffn(_ln(self.ln2, x), ffn_shift, positions)
        x = self.hook_resid_post(x + h)
        return x, att_shift, wkv_state, ffn_shift, v_first


def _ln(mod: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], mod.weight.float(), mod.bias.float(), mod.eps)


class ActivationCache(dict):
    """Captured tensors by hook name. State hooks are stacked over `state_positions`: [B, P, ...]."""

    state_positions: tuple[int, ...] = ()


class SkipInit(TorchFunctionMode):
    """Within this mode `torch.nn.init` functions do nothing, for modules whose tensors are replaced right away.

    Built on the meta device, `nn.Linear`/`nn.Embedding` still run their random init through PyTorch's Python
    reference kernels, whose first use imports torch._dynamo: over a second of every `export` and `info` process.
    A function mode is thread-local, so a model built meanwhile elsewhere (a training thread) is initialised as usual.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


class RWKV(nn.Module):
    """An RWKV language model of any generation; `state_dict()` keys equal the official checkpoint keys."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.head_bias)
        self.hook_embed = HookPoint()  # [B, T, C] embedding rows
        self.hook_points = name_hook_points(self)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], *, device="cpu",
                        dtype: torch.dtype = torch.float32) -> "RWKV":
        """Build on the meta device, then take the given tensors: no throw-away random init, no double memory."""
        with torch.device("meta"), SkipInit():
            model = cls(cfg)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.hook_points = name_hook_points(model)
        model.to_device(device, dtype)
        return model.requires_grad_(False)  # an inference engine; training turns gradients back on

    def to_device(self, device="cpu", dtype: torch.dtype = torch.float32) -> "RWKV":
        """Move to `device`; matrices take `dtype`, vectors (decays, mixes, norms) stay float32."""
        for mod in self.modules():
            for name, p in list(mod.named_parameters(recurse=False)):
                is_matrix = p.dim() >= 2 and min(p.shape[-2:]) > 1 and not name.startswith(("time_", "r_k"))
                is_matrix = is_matrix or name.startswith(("time_maa_w", "time_decay_w"))
                target = dtype if is_matrix else torch.float32
                setattr(mod, name, nn.Parameter(p.detach().to(device=device, dtype=target), requires_grad=p.requires_grad))
        self.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def zero_state(self, B: int = 1) -> RWKVState:
        cfg, dev = self.cfg, self.device
        L, C = cfg.n_layer, cfg.n_embd
        if cfg.version == "4":
            s = wkv.v4_zero_state(B, C, device=dev)[None].repeat(L, 1, 1, 1)
        else:
            s = torch.zeros(L, B, cfg.n_head, cfg.head_size, cfg.head_size, device=dev)
        z = torch.zeros(L, B, C, device=dev)
        return RWKVState(z, s, z.clone())

    # ------------------------------------------------------------------ forward

    def _tokens(self, tokens: Tokens) -> torch.Tensor:
        t = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.shape[1] == 0:
            raise ValueError("tokens must be a non-empty [T] or [B, T] sequence of ids")
        if int(t.min()) < 0 or int(t.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id out of range 0..{self.cfg.vocab_size - 1}")
        return t

    def forward(self, tokens: Tokens, state: Optional[RWKVState] = None, *, state_positions: Sequence[int] = (),
                chunked: bool = True, logits: str = "all") -> tuple[torch.Tensor, RWKVState]:
        """Run the prompt in sequence mode. Returns logits [B, T, V] (or [B, 1, V] with logits="last", None with
        logits="none") and the state after the last token. `state_positions` are the tokens after which the state
        hook points fire."""
        idx = self._tokens(tokens)
        B, T = idx.shape
        if state is None:
            state = self.zero_state(B)
        positions = tuple(int(p) for p in state_positions)
        x = self.hook_embed(F.embedding(idx, self.emb.weight).float())  # [B, T, C]
        v_first = None
        att_s, wkv_s, ffn_s = [], [], []
        for i, block in enumerate(self.blocks):
            x, a, s, f, v_first = block(x, state.att_shift[i], state.wkv[i], state.ffn_shift[i], v_first,
                                        positions, chunked)
            att_s.append(a), wkv_s.append(s), ffn_s.append(f)
        new_state = RWKVState(torch.stack(att_s), torch.stack(wkv_s), torch.stack(ffn_s))
        if logits == "none":
            return None, new_state
        if logits == "last":
            x = x[:, -1:]
        return self.unembed(x), new_state

    def run_block(self, layer: int, resid_pre: torch.Tensor, v_first: Optional[torch.Tensor] = None, *,
                  state_positions: Sequence[int] = (), chunked: bool = True) -> torch.Tensor:
        """Block `layer` alone, from the zero state, on its input [B, T, C] as `blocks.{layer}.hook_resid_pre`
        recorded it (RWKV-7 also needs v_first [B, T, C], layer 0's value, `blocks.0.att.hook_v`): its output
        [B, T, C], the hooks firing as in a forward. A pass that kept every block's input reruns any one layer
        without the layers below it. Layer 0 starts from the embedding (ln0 comes before its hook): run the model."""
        if not 0 < layer < self.cfg.n_layer:
            raise ValueError(f"run_block takes a layer in 1..{self.cfg.n_layer - 1}; layer 0 starts from the embedding")
        if self.cfg.version == "7" and v_first is None:
            raise ValueError("an RWKV-7 block past layer 0 needs v_first (layer 0's value)")
        x = resid_pre.to(self.device, torch.float32)
        x = x[None] if x.dim() == 2 else x
        vf = None if v_first is None else v_first.to(self.device, torch.float32)
        vf = vf[None] if vf is not None and vf.dim() == 2 else vf
        zero = self.zero_state(x.shape[0])
        positions = tuple(int(p) for p in state_positions)
        out = self.blocks[layer](x, zero.att_shift[layer], zero.wkv[layer], zero.ffn_shift[layer], vf, positions,
                                 chunked)
        return out[0]

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from a residual stream [..., C]: head(ln_out(resid)) (the logit lens at any layer)."""
        return lin(_ln(self.ln_out, resid), self.head.weight, self.head.bias)

    @torch.no_grad()
    def greedy(self, tokens: Sequence[int], n: int = 1) -> list[int]:
        """The prompt's greedy continuation: its n most likely next tokens, each chosen after the one before (one
        sequence pass unembedding only the last token, then one-token steps from the state)."""
        logits, state = self(list(tokens), logits="last")  # [1, 1, V]
        out = [int(logits[0, -1].argmax())]
        while len(out) < n:
            logits, state = self([out[-1]], state, logits="last")
            out.append(int(logits[0, -1].argmax()))
        return out

    def forward_rnn(self, tokens: Tokens, state: Optional[RWKVState] = None) -> tuple[torch.Tensor, RWKVState]:
        """RNN mode: one token at a time through the whole network, the state carried explicitly."""
        idx = self._tokens(tokens)
        state = state if state is not None else self.zero_state(idx.shape[0])
        outs = []
        for t in range(idx.shape[1]):
            lg, state = self.forward(idx[:, t:t + 1], state, chunked=False)
            outs.append(lg)
        return torch.cat(outs, 1), state

    # ------------------------------------------------------------------ hooks

    def hook_names(self) -> list[str]:
        return list(self.hook_points)

    def _select(self, names_filter: NamesFilter) -> list[str]:
        names = self.hook_names()
        if names_filter is None:
            return names
        if isinstance(names_filter, str):
            if names_filter in self.hook_points:  # an exact name (the common case): no pattern matching
                return [names_filter]
            rx = re.compile(names_filter)
            return [n for n in names if n == names_filter or rx.fullmatch(n)]
        if callable(names_filter):
            return [n for n in names if names_filter(n)]
        wanted = list(names_filter)
        unknown = [n for n in wanted if n not in self.hook_points]
        if unknown:
            raise KeyError(f"unknown hook point(s): {unknown[:5]}")
        return wanted

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[Union[str, Callable[[str], bool]], HookFn]]) -> Iterator["RWKV"]:
        """Attach hooks for the duration of the block; always removed afterwards, even on error."""
        attached = []
        try:
            for name, fn in fwd_hooks:
                for n in self._select(name if callable(name) or isinstance(name, str) else list(name)):
                    self.hook_points[n].add(fn)
                    attached.append((self.hook_points[n], fn))
            yield self
        finally:
            for hp, fn in attached:
                hp.remove(fn)

    def run_with_hooks(self, tokens: Tokens, fwd_hooks: Sequence[tuple], state: Optional[RWKVState] = None,
                       **kwargs) -> tuple[torch.Tensor, RWKVState]:
        """Forward with hooks that may read or replace tensors: [(name or filter, fn(tensor, hook))]."""
        with self.hooks(fwd_hooks):
            return self.forward(tokens, state, **kwargs)

    @torch.no_grad()
    def run_with_cache(self, tokens: Tokens, names_filter: NamesFilter = None, state: Optional[RWKVState] = None,
                       *, layers: Optional[Iterable[int]] = None, device: Union[str, torch.device, None] = "cpu",
                       state_positions: Sequence[int] = (), **kwargs) -> tuple[torch.Tensor, RWKVState, ActivationCache]:
        """Forward that records the selected hook points (optionally only in `layers`), stored on `device`."""
        names = self._select(names_filter)
        if layers is not None:
            keep = {f"blocks.{int(l)}." for l in layers}
            names = [n for n in names if not n.startswith("blocks.") or any(n.startswith(p) for p in keep)]
        cache = ActivationCache()
        cache.state_positions = tuple(int(p) for p in state_positions)
        store = (lambda t: t.detach().to(device)) if device is not None else (lambda t: t.detach())

        def record(t: torch.Tensor, hook: HookPoint) -> None:
            if hook.pos is None:
                cache[hook.name] = store(t)
            else:
                cache.setdefault(hook.name, []).append(store(t))

        logits, new_state = self.run_with_hooks(tokens, [(n, record) for n in names], state,
                                                state_positions=state_positions, **kwargs)
        for n, v in list(cache.items()):
            if isinstance(v, list):
                cache[n] = torch.stack(v, 1)  # [B, P, ...]
        return logits, new_state, cache
