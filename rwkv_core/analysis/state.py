"""What a layer's recurrent state holds, token by token: its size, its effective rank, what it returns for a query,
and (RWKV-7) how well it has learned the key-value pairs it was shown.

An RWKV layer's whole memory is one matrix per head (v4: three vectors per channel). The states are rebuilt from a
layer's captured inputs (`scores.ScoreInputs`: r, k, v, the decays, v7 kk and a) with the serial WKV kernels of
`rwkv_core.model.wkv`, the definition the model's chunked kernels equal; so a trace file's activations give them
without a model. Orientation as the official `rwkv` package stores them: v5/v6 [H, key, value], v7 [H, value, key],
v4 [3, C] (numerator aa, denominator bb, exponent pp).

One pass over the prompt measures every token (`layer_states`) and keeps the state every CHECKPOINT_EVERY tokens;
the state after any token is then the nearest checkpoint plus at most CHECKPOINT_EVERY - 1 serial steps
(`LayerStates.at`), so a click costs milliseconds however long the prompt.

**Effective rank** (participation ratio of the singular values sigma_i of a head's state): (sum sigma_i^2)^2 /
sum sigma_i^4 = ||S||_F^4 / ||S S^T||_F^2, between 1 (one direction) and N (all directions equally); one matrix
product per state, no SVD (an SVD of every state costs ~4 s per 1,000 tokens of a 12-head layer on two cores).

**Online regression (RWKV-7).** The RWKV-7 paper (Goose, arXiv 2503.14456) reads the state as a map from keys to
values learned in context by the delta rule, S_t = S_{t-1} (diag(w_t) - kappa_t^T (a_t * kappa_t)) + v_t^T k~_t: a
step of gradient descent on ||S kappa_t^T - v_t||^2 along the unit removal key kappa_t (`kk`), with in-context
learning rate a_t, plus decay. Its error on the token's own pair, before and after the token's update:

    e_before[t, h] = ||S_{t-1} kappa_t^T - v_t|| / ||v_t||,    e_after[t, h] = ||S_t kappa_t^T - v_t|| / ||v_t||

(per head h; S [value, key]). A pure delta rule step (w = 1, a = 1, k~ = kappa) gives e_after = 0: the pair is
learned exactly; e_before is how well the state already predicted the value before seeing it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from rwkv_core.analysis.scores import ScoreInputs
from rwkv_core.errors import InputError
from rwkv_core.model import wkv
from rwkv_core.model.threads import one_thread

CHECKPOINT_EVERY = 32  # a state kept every this many tokens; `at` replays at most this many minus one steps
MEASURE_BLOCK = 256  # states measured together (bounded memory: 256 x 12 x 64 x 64 float32 = 50 MB)
NEAREST_VALUES = 5  # earlier tokens whose values a read-out is closest to


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[T, H, N] -> [T, C] (v4's channel groups back to channels)."""
    return x.reshape(x.shape[0], -1)


def zero_state(si: ScoreInputs) -> torch.Tensor:
    """The empty state of a layer: [H, N, N], v4 [3, C] (pp at wkv.V4_PP_INIT)."""
    if si.version == "4":
        return wkv.v4_zero_state(1, si.H * si.N)[0]
    return torch.zeros(si.H, si.N, si.N)


def step(si: ScoreInputs, state: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The states after tokens start..stop-1 from `state` (the state after token start - 1), by the serial WKV
    recurrence (`wkv.wkv5_states` / `wkv.wkv7_states`, v4 `wkv.wkv4_serial` token by token): (state after
    stop - 1, the states of every token [H, N, N] or v4 [3, C])."""
    if stop <= start:
        return state, []
    sl = slice(start, stop)
    if si.version == "4":
        states, s = [], state[None]
        for t in range(start, stop):
            rho = -_flat(si.logw[t:t + 1])[0]  # [C] this token's per-step log-decay, negated
            _, s = wkv.wkv4_serial(_flat(si.k[t:t + 1])[None], _flat(si.v[t:t + 1])[None], rho,
                                   _flat(si.u[None])[0], s)
            states.append(s[0])
        return s[0], states
    if si.version == "7":
        _, all_ = wkv.wkv7_states(si.r[None, sl], si.logw[None, sl], si.k[None, sl], si.v[None, sl],
                                  -si.kk[None, sl], (si.kk[sl] * si.a[sl])[None], state[None])
    else:
        _, all_ = wkv.wkv5_states(si.r[None, sl], si.k[None, sl], si.v[None, sl], si.logw[None, sl], si.u, state[None])
    states = list(all_[0].unbind(0))  # [H, N, N] each
    return states[-1], states


def norm_and_rank(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norm and effective rank (participation ratio of the singular values: ||S||_F^4 / ||S S^T||_F^2,
    1..N, 0 for a zero state) of states [..., N, N], float64, from one Gram matrix per state. The Gram matrix is
    formed and squared in float32 (float64 batches of small products cost several times more on a CPU), which keeps
    ~1e-6 of relative precision."""
    s = states.float()
    gram = s @ s.transpose(-1, -2)  # [..., N, N]
    fro2 = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1).double()
    g2 = gram.square().sum((-2, -1)).double()
    rank = torch.where(g2 > 0, fro2 * fro2 / torch.where(g2 > 0, g2, 1.0), torch.zeros_like(g2))
    return fro2.clamp_min(0).sqrt(), rank


def v4_content_norm(states: torch.Tensor, H: int) -> torch.Tensor:
    """v4: the norm of aa / bb over each of H channel groups, states [..., 3, C] -> [..., H], float64."""
    s = states.double()
    content = s[..., 0, :] / s[..., 1, :]
    content = torch.nan_to_num(content)  # the empty state: 0 / 0
    return torch.linalg.vector_norm(content.reshape(*content.shape[:-1], H, -1), dim=-1)


def regression_errors(before: torch.Tensor, after: torch.Tensor, kk: torch.Tensor,
                      v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-7's online-regression errors of a block of tokens (module docstring): states before and after each
    token [P, H, N(value), N(key)], the unit removal keys kk and values v [P, H, N]; (e_before, e_after) [P, H]
    float64 (NaN where ||v_t|| = 0)."""
    kk, v64 = kk.float(), v.double()
    nv = torch.linalg.vector_norm(v64, dim=-1)
    nv = torch.where(nv > 0, nv, torch.full_like(nv, float("nan")))
    read = lambda S: (S.float() @ kk[..., None])[..., 0].double()  # noqa: E731  [P, H, N(value)]
    return (torch.linalg.vector_norm(read(before) - v64, dim=-1) / nv,
            torch.linalg.vector_norm(read(after) - v64, dim=-1) / nv)


@dataclass
class LayerStates:
    """One layer's state over a prompt: measured at every token, rebuildable after any token.

    frobenius [T, H] (v4: the norm of aa / bb per channel group), eff_rank [T, H] (NaN for v4), v7 err_before and
    err_after [T, H] (else None), all float64; checkpoints: the state after tokens CHECKPOINT_EVERY - 1,
    2 CHECKPOINT_EVERY - 1, ... (float32)."""

    inputs: ScoreInputs
    frobenius: np.ndarray
    eff_rank: np.ndarray
    err_before: Optional[np.ndarray] = None
    err_after: Optional[np.ndarray] = None
    checkpoints: list = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.inputs.version

    @property
    def T(self) -> int:
        return self.inputs.T

    def at(self, t: int) -> torch.Tensor:
        """The state after token t: [H, N, N] (v5/v6 [key, value], v7 [value, key]) or v4 [3, C], float32."""
        if not 0 <= int(t) < self.T:
            raise InputError(f"token {t} is outside the prompt (0..{self.T - 1})")
        t = int(t)
        c = (t + 1) // CHECKPOINT_EVERY  # checkpoints before or at t
        start, s = (c * CHECKPOINT_EVERY, self.checkpoints[c - 1]) if c else (0, zero_state(self.inputs))
        if start > t:
            return s.clone()
        with one_thread():
            return step(self.inputs, s, start, t + 1)[0]

    def at_positions(self, positions: Sequence[int]) -> torch.Tensor:
        """The states after each of `positions`: [P, H, N, N] or v4 [P, 3, C]."""
        return torch.stack([self.at(p) for p in positions])


@torch.no_grad()
def layer_states(si: ScoreInputs) -> LayerStates:
    """Every token's state of one layer, measured in blocks of MEASURE_BLOCK tokens (only checkpoints are kept). The
    serial recurrence runs on one thread, the measures of each block (batched products of [P, H, N, N]) on the
    caller's threads: 0.077 -> 0.043 s per block of 256 v7 states of 12 x 64 x 64 on two threads (2-core CPU)."""
    T, H = si.T, si.H
    fro, erank = np.full((T, H), np.nan), np.full((T, H), np.nan)
    v7 = si.version == "7"
    e_b, e_a = (np.full((T, H), np.nan), np.full((T, H), np.nan)) if v7 else (None, None)
    checkpoints: list[torch.Tensor] = []
    state = zero_state(si)
    for start in range(0, T, MEASURE_BLOCK):
        stop = min(T, start + MEASURE_BLOCK)
        before = state
        with one_thread():
            state, states = step(si, state, start, stop)
        block = torch.stack(states)  # [P, H, N, N] or [P, 3, C]
        if si.version == "4":
            fro[start:stop] = v4_content_norm(block, H).numpy()
        else:
            f, r = norm_and_rank(block)
            fro[start:stop], erank[start:stop] = f.numpy(), r.numpy()
        if v7:
            prev = torch.cat([before[None], block[:-1]])
            b, a = regression_errors(prev, block, si.kk[start:stop], si.v[start:stop])
            e_b[start:stop], e_a[start:stop] = b.numpy(), a.numpy()
        for t in range(start, stop):
            if (t + 1) % CHECKPOINT_EVERY == 0:
                checkpoints.append(states[t - start].clone())
    return LayerStates(si, fro, erank, e_b, e_a, checkpoints)


# ------------------------------------------------------------------------------------------------ queries


QUERY_KINDS = ("receptance", "key")


def query_vector(si: ScoreInputs, token: int, kind: str) -> torch.Tensor:
    """The query a user picks: token `token`'s receptance r, or its key (v7: the unit removal key kappa, the
    direction the state learns along; v5/v6: k). [H, N]"""
    if kind not in QUERY_KINDS:
        raise InputError(f"query must be one of {QUERY_KINDS}, not {kind!r}")
    if not 0 <= int(token) < si.T:
        raise InputError(f"query token {token} is outside the prompt (0..{si.T - 1})")
    if kind == "receptance":
        return si.r[int(token)]
    return si.kk[int(token)] if si.version == "7" else si.k[int(token)]


def read_out(state: torch.Tensor, q: torch.Tensor, version: str) -> torch.Tensor:
    """What a state returns for a query q [H, N]: v5/v6 q S ([key, value] -> value), v7 S q^T ([value, key] ->
    value): [H, N] float64. (The model's own read adds the bonus, and v7 reads after the update; this is the
    state's content alone.)"""
    if version == "4":
        raise InputError("RWKV-4 has no state matrix to query: its state is per channel (aa / bb is its read-out)")
    eq = "hvk,hk->hv" if version == "7" else "hkv,hk->hv"
    return torch.einsum(eq, state.double(), q.double())


def nearest_values(out: torch.Tensor, v: torch.Tensor, upto: int, n: int = NEAREST_VALUES) -> tuple[np.ndarray, ...]:
    """The earlier values a read-out is closest to, per head: out [H, N], v [T, H, N]; among tokens 0..upto, the n
    with the largest cosine similarity. Returns (tokens [H, n] int64, cosines [H, n] float64)."""
    vv = v[: int(upto) + 1].double()  # [t, H, N]
    cos = torch.einsum("thn,hn->ht", vv, out) / (
        torch.linalg.vector_norm(vv, dim=-1).T * torch.linalg.vector_norm(out, dim=-1)[:, None]).clamp_min(1e-30)
    n = min(n, cos.shape[1])
    top = torch.topk(cos, n, dim=1)
    return top.indices.numpy().astype(np.int64), top.values.numpy()


# ------------------------------------------------------------------------------------------------ trace file


def parse_positions(text: str, T: int) -> list[int]:
    """"3,17" -> [3, 17]; each must be a token of the prompt (0..T-1)."""
    try:
        pos = [int(p) for p in str(text).replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise InputError(f"--state-positions must be token positions separated by commas (e.g. 3,17), not {text!r}") \
            from None
    bad = [p for p in pos if not 0 <= p < T]
    if bad:
        raise InputError(f"state position {bad[0]} is outside the prompt of {T} tokens (0..{T - 1})")
    if not pos:
        raise InputError("--state-positions is empty: give token positions such as 3,17")
    return pos


def trace_state_keys(inputs: Sequence[ScoreInputs], positions: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
    """What `export --state` adds to a trace: state_l{l} after the last token ([H, N, N] v5/v6 [key, value], v7
    [value, key]; v4 [3, C]), or with positions one per position ([P, ...]), float32, for each layer's inputs."""
    out = {}
    for si in inputs:
        T = si.T
        pos = [T - 1] if positions is None else list(positions)
        states = _states_at(si, pos)
        out[f"state_l{si.layer}"] = (states[0] if positions is None else states).numpy().astype(np.float32)
    return out


def _states_at(si: ScoreInputs, positions: Sequence[int]) -> torch.Tensor:
    """The states after sorted-or-not `positions`, in one serial pass up to the last of them: [P, ...]."""
    order = sorted(set(int(p) for p in positions))
    found, state, t0 = {}, zero_state(si), 0
    for p in order:
        state, _ = step(si, state, t0, p + 1)
        found[p], t0 = state.clone(), p + 1
    return torch.stack([found[int(p)] for p in positions])
