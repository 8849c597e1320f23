"""The WKV recurrences of every RWKV generation, serially (the RNN, one token at a time) and chunked (parallel).

Both forms compute the same numbers; the serial one is the plainly correct reference, the chunked one is what a
whole prompt runs through: every product inside a chunk is parallel, and only the state crosses chunk borders.
Decay factors are formed as exp(sum of log-decays between two tokens), always with a non-positive exponent, so
nothing overflows however strong the decay (no exp of an unbounded cumulative sum).

Shapes: B batch, T tokens, H heads, N head size, C channels. Everything here is float32 (or float64 in tests).
State layouts are those of the official implementation:
  v4    [B, 3, C]       (aa, bb, pp): numerator, denominator, log-scale;
  v5/v6 [B, H, N, N]    [key, value]: decay scales rows;
  v7    [B, H, N, N]    [value, key]: decay scales columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

V4_PP_INIT = -1e30  # the log-scale of the empty past (weight 0)
FACTOR_SPAN = 60.0  # a chunk whose total log-decay stays above -60 may split its decay factors (e^60 ~ 1e26 < fp32 max)
STATES_BLOCK = 16  # tokens per call of a states kernel (`wkv5_states`, `wkv7_states`) under a state hook at every token


# ---------------------------------------------------------------- shared states
#
# Every kernel accepts an incoming state with fewer rows than the inputs: Bs rows for B = G * Bs input rows, row b
# starting from state row b % Bs (G groups of rows that share their starting states: causal tracing runs many
# restored cells from the same corrupted states). The chunked kernels then read each state once, and with
# `need_state=False` (the caller discards the state after the segment) they skip forming it: for a short segment
# with shared states that is most of a kernel's memory traffic. With `need_state=False` a kernel may return None
# as the state.


def _chunk_len(chunk: int, T: int, need_state: bool) -> int:
    """Chunk length: `chunk`, the tokens zero-padded to whole chunks, so that a run cut at a hook position computes
    the tokens before the cut bit for bit as the uncut run does; a segment whose state is discarded (nothing
    continues from it: tracing's restored cells) and shorter than a chunk is one unpadded chunk instead."""
    return max(1, T) if (not need_state and T < chunk) else chunk


def _rows(state: torch.Tensor, B: int) -> torch.Tensor:
    """The state materialised for B input rows (row b gets state row b % Bs)."""
    Bs = state.shape[0]
    if Bs == B:
        return state
    if Bs == 0 or B % Bs:
        raise ValueError(f"a state of {Bs} rows cannot start {B} input rows (a multiple is needed)")
    return state.repeat(B // Bs, *([1] * (state.dim() - 1)))


def _shared_mm(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, N] @ m [Bs, H, N, M] with row b using m[b % Bs]: one matmul per shared matrix."""
    B, Bs = x.shape[0], m.shape[0]
    if B == Bs:
        return x @ m
    if Bs == 0 or B % Bs:
        raise ValueError(f"a state of {Bs} rows cannot start {B} input rows (a multiple is needed)")
    G, (H, L, N) = B // Bs, x.shape[1:]
    xs = x.reshape(G, Bs, H, L, N).permute(1, 2, 0, 3, 4).reshape(Bs, H, G * L, N)
    return (xs @ m).reshape(Bs, H, G, L, -1).permute(2, 0, 1, 3, 4).reshape(B, H, L, -1)


# ---------------------------------------------------------------- v4 (per channel, normalised)


def v4_zero_state(B: int, C: int, device=None, dtype=torch.float32) -> torch.Tensor:
    s = torch.zeros(B, 3, C, device=device, dtype=dtype)
    s[:, 2] = V4_PP_INIT
    return s


def wkv4_serial(k: torch.Tensor, v: torch.Tensor, rho: torch.Tensor, u: torch.Tensor, state: torch.Tensor,
                need_state: bool = True):
    """RWKV-4 wkv, token by token, with the official stable (aa, bb, pp) recurrence.

    k, v [B, T, C]; rho = exp(time_decay) [C] (> 0, per-step log-decay is -rho); u = time_first [C];
    state [B, 3, C]. Returns wkv [B, T, C] and the new state.
    """
    state = _rows(state, k.shape[0])
    aa, bb, pp = state[:, 0], state[:, 1], state[:, 2]
    out = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        ww = u + kt
        q = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - q), torch.exp(ww - q)
        out.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        ww = pp - rho
        q = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - q), torch.exp(kt - q)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, q
    return torch.stack(out, 1), torch.stack([aa, bb, pp], 1)


def wkv4_chunked(k, v, rho, u, state, chunk: int = 32, need_state: bool = True):
    """RWKV-4 wkv over chunks: inside a chunk every (query, source) weight at once, max-shifted in log space."""
    B, T, C = k.shape
    state = _rows(state, B)
    aa, bb, pp = state[:, 0], state[:, 1], state[:, 2]
    outs = []
    for s in range(0, T, chunk):
        kc, vc = k[:, s:s + chunk], v[:, s:s + chunk]  # [B, L, C]
        L = kc.shape[1]
        t = torch.arange(L, device=k.device, dtype=k.dtype)
        gap = (t[:, None] - 1 - t[None, :])  # [L(t), L(i)]: t-1-i
        logit = kc[:, None, :, :] - gap[None, :, :, None] * rho  # [B, L, L, C]: k_i - (t-1-i) rho
        diag = torch.eye(L, dtype=torch.bool, device=k.device)[None, :, :, None]
        logit = torch.where(diag, (u + kc)[:, :, None, :].expand_as(logit), logit)
        upper = torch.ones(L, L, dtype=torch.bool, device=k.device).triu(1)[None, :, :, None]
        logit = logit.masked_fill(upper, float("-inf"))
        past = pp[:, None, :] - t[None, :, None] * rho  # [B, L, C]: weight of the incoming state at token t
        m = torch.maximum(logit.amax(2), past)
        e = torch.exp(logit - m[:, :, None, :])
        ep = torch.exp(past - m)
        num = (e * vc[:, None, :, :]).sum(2) + ep * aa[:, None, :]
        den = e.sum(2) + ep * bb[:, None, :]
        outs.append(num / den)
        # state after the chunk's last token: sum_i e^{k_i - (L-1-i) rho} v_i + e^{pp - L rho} aa
        last = kc - (L - 1 - t)[None, :, None] * rho  # [B, L, C]
        carry = pp - L * rho  # [B, C]
        q = torch.maximum(last.amax(1), carry)
        el, ec = torch.exp(last - q[:, None]), torch.exp(carry - q)
        aa = (el * vc).sum(1) + ec * aa
        bb = el.sum(1) + ec * bb
        pp = q
    return torch.cat(outs, 1), torch.stack([aa, bb, pp], 1)


# ---------------------------------------------------------------- v5 / v6 (diagonal decay, read then decay)


def _wkv5_steps(r, k, v, logw, u, state) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The v5/v6 recurrence one token at a time: (y_t [B, H, N], S_t [B, H, N, N]) for every token."""
    state = _rows(state, r.shape[0])
    w = torch.exp(logw)
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, N, N]
        y = torch.einsum("bhk,bhkv->bhv", r[:, t], state + u[:, :, None] * kv)
        state = w[:, t, :, :, None] * state + kv
        yield y, state


def wkv5_serial(r, k, v, logw, u, state, need_state: bool = True):
    """v5.x/v6 WKV token by token: y_t = r_t (diag(u) k_t^T v_t + S_{t-1}); S_t = diag(w_t) S_{t-1} + k_t^T v_t.

    r, k, v, logw [B, T, H, N] (logw = log of the per-step decay, <= 0); u [H, N]; state [B, H, N, N] (key, value).
    """
    ys = []
    for y, state in _wkv5_steps(r, k, v, logw, u, state):
        ys.append(y)
    return torch.stack(ys, 1), _rows(state, r.shape[0])


def wkv5_states(r, k, v, logw, u, state):
    """`wkv5_serial` of a short segment that also returns the state after every token: y [B, L, H, N] and states
    [B, L, H, N, N] (key, value). For a state hook at every token, `STATES_BLOCK` tokens at a time."""
    ys, states = zip(*_wkv5_steps(r, k, v, logw, u, state))
    return torch.stack(ys, 1), torch.stack(states, 1)


def _to_chunks(x: torch.Tensor, L: int) -> torch.Tensor:
    """[B, T, H, N] -> [B, H, nC, L, N], zero-padded at the end."""
    B, T, H, N = x.shape
    pad = (-T) % L
    if pad:
        x = torch.cat([x, x.new_zeros(B, pad, H, N)], 1)
    return x.view(B, -1, L, H, N).permute(0, 3, 1, 2, 4)


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    B, H, nC, L, N = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, nC * L, H, N)[:, :T]


def wkv5_chunked(r, k, v, logw, u, state, chunk: int = 16, max_elems: int = 1 << 25, need_state: bool = True):
    """v5.x/v6 WKV over chunks; equal to `wkv5_serial`. Padding tokens carry k = 0 and log-decay 0 (no effect)."""
    B, T, H, N = r.shape
    L = _chunk_len(chunk, T, need_state)
    logw = logw.clamp(min=-1e4)  # a decay of exactly 0 (log -inf) would make inf - inf below; e^-1e4 is 0 too
    rc, kc, vc, lw = (_to_chunks(x, L) for x in (r, k, v, logw))  # [B, H, nC, L, N]
    c = torch.cumsum(lw, 3)  # inclusive log-decay within the chunk
    ce = c - lw  # exclusive
    nC = rc.shape[2]
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)  # i < t
    # intra-chunk scores A[t, i] = sum_n r_t k_i exp(ce_t - c_i), i < t. A chunk whose decay stays within
    # e^-FACTOR_SPAN in every channel splits the factor, e^(ce_t - c_i) = e^ce_t * e^-c_i (one matrix product, no
    # overflow); a chunk with stronger decays forms every pairwise factor, each exponent <= 0. Decided per (row,
    # head, chunk) from that chunk alone, so a run cut inside a prompt decides its chunks as the whole run does.
    strong = -c[:, :, :, -1, :].amin(-1) > FACTOR_SPAN  # [B, H, nC]: the chunk's most negative total log-decay
    split = torch.where(strong[..., None, None], 0.0, -c)  # strong chunks: a finite placeholder, replaced below
    A = (rc * torch.exp(ce)) @ (kc * torch.exp(split)).transpose(-1, -2)  # [B, H, nC, L(t), L(i)]
    A = A.masked_fill(~strict, 0.0)
    if bool(strong.any()):
        idx = strong.nonzero(as_tuple=True)
        step = max(1, max_elems // max(1, L * L * N))  # strong chunks per group, to bound memory
        parts = []
        for g in range(0, len(idx[0]), step):
            sel = tuple(ix[g:g + step] for ix in idx)
            e = ce[sel][:, :, None, :] - c[sel][:, None, :, :]  # [S, L(t), L(i), N], <= 0 where i < t
            e = torch.exp(e.masked_fill(~strict[:, :, None], float("-inf")))  # out of place: autograd (training)
            parts.append(((e * kc[sel][:, None, :, :]) @ rc[sel][:, :, :, None]).squeeze(-1))  # [S, L, L]
        A = A.index_put(idx, torch.cat(parts))  # out of place: autograd
    y = A @ vc
    y = y + (rc * u[None, :, None, None, :] * kc).sum(-1, keepdim=True) * vc  # bonus (diagonal)
    if nC == 1 and not need_state:  # one read of the (possibly shared) incoming state, no state formed
        y[:, :, 0] += _shared_mm(rc[:, :, 0] * torch.exp(ce[:, :, 0]), state)
        return _from_chunks(y, T), None
    state = _rows(state, B)
    # inter-chunk: the state entering each chunk (a cheap elementwise scan), then one batched read
    c_last = c[:, :, :, -1:, :]  # [B, H, nC, 1, N]
    kv = (kc * torch.exp(c_last - c)).transpose(-1, -2) @ vc  # [B, H, nC, N, N]: each chunk's writes at its end
    dec = torch.exp(c_last[:, :, :, 0, :, None])  # [B, H, nC, N, 1]
    starts = []
    for j in range(nC):
        starts.append(state)
        state = dec[:, :, j] * state + kv[:, :, j]
    y = y + (rc * torch.exp(ce)) @ torch.stack(starts, 2)
    return _from_chunks(y, T), state


# ---------------------------------------------------------------- v7 (diagonal decay plus rank-1 removal, update then read)


def _wkv7_steps(r, logw, k, v, alpha, beta, state) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The v7 recurrence one token at a time: (y_t [B, H, N], S_t [B, H, N, N]) for every token."""
    state = _rows(state, r.shape[0])
    w = torch.exp(logw)
    for t in range(r.shape[1]):
        sa = torch.einsum("bhvk,bhk->bhv", state, alpha[:, t])  # [B, H, N]: S alpha^T
        state = (state * w[:, t, :, None, :] + sa[..., None] * beta[:, t, :, None, :]
                 + v[:, t, :, :, None] * k[:, t, :, None, :])
        yield torch.einsum("bhvk,bhk->bhv", state, r[:, t]), state


def wkv7_serial(r, logw, k, v, alpha, beta, state, need_state: bool = True):
    """v7 WKV token by token: S_t = S_{t-1} (diag(w_t) + alpha_t^T beta_t) + v_t^T k_t;  y_t = S_t r_t^T.

    r, logw, k (the modified key k~), v, alpha (= -kk), beta (= kk * a): [B, T, H, N]; state [B, H, N, N] (value, key).
    """
    ys = []
    for y, state in _wkv7_steps(r, logw, k, v, alpha, beta, state):
        ys.append(y)
    return torch.stack(ys, 1), _rows(state, r.shape[0])


def wkv7_states(r, logw, k, v, alpha, beta, state):
    """`wkv7_serial` of a short segment that also returns the state after every token: y [B, L, H, N] and states
    [B, L, H, N, N] (value, key). For a state hook at every token, `STATES_BLOCK` tokens at a time (token by token
    is faster here than the chunked algebra, whose per-token states cost a cumulative sum of outer products)."""
    ys, states = zip(*_wkv7_steps(r, logw, k, v, alpha, beta, state))
    return torch.stack(ys, 1), torch.stack(states, 1)


V7_MAX_CHUNK_EXP = 40.0  # v7 chunks are cut so that the chunk-local decay exponents stay within e^{+-40}


def v7_chunk_fits(logw: torch.Tensor, L: int) -> bool:
    """Whether chunks of L tokens keep every chunk-local decay exponent of `logw` within e^{+-V7_MAX_CHUNK_EXP}
    (always for v7 models, whose per-step log-decay is >= -e^-0.5, at L <= 16)."""
    return not float(-logw.detach().min()) * L > V7_MAX_CHUNK_EXP


@dataclass
class V7ChunkTerms:
    """The chunk-local algebra of the v7 transition, for inputs cut into chunks of L tokens: [..., L, N].

    With c the inclusive cumulative log-decay inside a chunk and G_t = diag(w_t) + alpha_t^T beta_t, the state is
    linear in its writes, so everything inside a chunk is a diagonal-decay linear attention once the removals
    Z_t = S_{t-1} alpha_t^T are known; they solve the unit lower-triangular system (I - M_b) Z = ... . Decay
    factors are split as e^{c_t} * e^{-c_i} (see `v7_chunk_fits`). Shared by the WKV kernel, the training
    kernel (`rwkv_core.demo.train`) and the v7 scores and spans (`rwkv_core.analysis.scores`).
    """

    ec: torch.Tensor  # [..., L, N] e^{c_t}
    r_t: torch.Tensor  # [..., L, N] r_t e^{c_t}
    b_i: torch.Tensor  # [..., L, N] beta_i e^{-c_i}
    k_i: torch.Tensor  # [..., L, N] k_i e^{-c_i}
    Q_b: torch.Tensor  # [..., L(t), L(i)] reads of the removal directions, i <= t
    Q_k: torch.Tensor  # [..., L(t), L(i)] reads of the writes, i <= t
    W_a: torch.Tensor  # [..., L, N(key)] removals of the state entering the chunk: Z = W_a S^T + U
    U: torch.Tensor  # [..., L, M] removals of the chunk's own writes (M = value width, or L without values)
    b_end: torch.Tensor  # [..., L, N] beta_i decayed to the chunk's end
    k_end: torch.Tensor  # [..., L, N] k_i decayed to the chunk's end
    dec: torch.Tensor  # [..., N] the chunk's whole decay e^{c_last}


def v7_chunk_terms(rc: torch.Tensor, kc: torch.Tensor, ac: torch.Tensor, bc: torch.Tensor, lw: torch.Tensor,
                   vc: Optional[torch.Tensor] = None) -> V7ChunkTerms:
    """`V7ChunkTerms` of chunked r, k (the key written, k~), alpha, beta and log-decays [..., L, N].

    With values vc [..., L, N] the chunk's own removals U are those of the values (what the WKV output needs);
    without, U [..., L(t), L(i)] is the removal of every single write (what scores and spans need).
    """
    L = rc.shape[-2]
    c = torch.cumsum(lw, -2)  # [..., L, N] inclusive
    ce = c - lw  # exclusive
    ec = torch.exp(c)
    a_t = ac * torch.exp(ce)  # alpha_t e^{ce_t}
    r_t = rc * ec  # r_t e^{c_t}
    inv = torch.exp(-c)
    b_i, k_i = bc * inv, kc * inv  # beta_i e^{-c_i}, k_i e^{-c_i}
    strict = torch.ones(L, L, dtype=torch.bool, device=rc.device).tril(-1)
    incl = torch.ones(L, L, dtype=torch.bool, device=rc.device).tril(0)
    M_b = (a_t @ b_i.transpose(-1, -2)).masked_fill(~strict, 0.0)  # [..., L(t), L(i)]
    M_k = (a_t @ k_i.transpose(-1, -2)).masked_fill(~strict, 0.0)
    Q_b = (r_t @ b_i.transpose(-1, -2)).masked_fill(~incl, 0.0)
    Q_k = (r_t @ k_i.transpose(-1, -2)).masked_fill(~incl, 0.0)
    sys_ = torch.eye(L, dtype=rc.dtype, device=rc.device) - M_b
    W_a = torch.linalg.solve_triangular(sys_, a_t, upper=False, unitriangular=True)  # [..., L, N(key)]
    U = torch.linalg.solve_triangular(sys_, M_k if vc is None else M_k @ vc, upper=False, unitriangular=True)
    c_last = c[..., -1:, :]  # [..., 1, N]
    keep = torch.exp(c_last - c)
    return V7ChunkTerms(ec=ec, r_t=r_t, b_i=b_i, k_i=k_i, Q_b=Q_b, Q_k=Q_k, W_a=W_a, U=U, b_end=bc * keep,
                        k_end=kc * keep, dec=torch.exp(c_last[..., 0, :]))


def wkv7_chunked(r, logw, k, v, alpha, beta, state, chunk: int = 16, need_state: bool = True):
    """v7 WKV over chunks; equal to `wkv7_serial`.

    Inside a chunk the removed values z_t = S_{t-1} alpha_t^T solve a unit lower-triangular system (the state is
    linear in its writes), after which everything is a diagonal-decay linear attention (`v7_chunk_terms`).
    Decay factors are split as exp(c_t) * exp(-c_i): v7's per-step log-decay is >= -e^-0.5, so within 16 tokens
    they stay below e^10. A decay outside that range (not a v7 model) falls back to the serial form.
    """
    B, T, H, N = r.shape
    L = _chunk_len(chunk, T, need_state)
    if T <= 1 or not v7_chunk_fits(logw, L):
        return wkv7_serial(r, logw, k, v, alpha, beta, state)
    rc, kc, vc, ac, bc, lw = (_to_chunks(x, L) for x in (r, k, v, alpha, beta, logw))  # [B, H, nC, L, N]
    ch = v7_chunk_terms(rc, kc, ac, bc, lw, vc)
    y_local = ch.Q_k @ vc  # the part independent of the incoming state, except through Z
    nC = rc.shape[2]
    y = torch.empty_like(vc)
    for j in range(nC):
        S_T = state.transpose(-1, -2)  # [B or Bs, H, key, value]
        Z = _shared_mm(ch.W_a[:, :, j], S_T) + ch.U[:, :, j]  # [B, H, L, value]
        y[:, :, j] = _shared_mm(ch.r_t[:, :, j], S_T) + ch.Q_b[:, :, j] @ Z + y_local[:, :, j]
        if j + 1 < nC or need_state:
            state = (_rows(state, B) * ch.dec[:, :, j, None, :] + Z.transpose(-1, -2) @ ch.b_end[:, :, j]
                     + vc[:, :, j].transpose(-1, -2) @ ch.k_end[:, :, j])
    return _from_chunks(y, T), (state if need_state else None)
