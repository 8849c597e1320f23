"""The logit lens: the next-token distribution read off the residual stream after every layer.

The model reads its prediction off the last block's output as logits = head(ln_out(x)). The logit lens applies the
same read-out to the residual stream at every stage s: stage 0 is the embedding after ln0 (the input of block 0,
`blocks.0.hook_resid_pre`), stage l + 1 the output of block l (`blocks.{l}.hook_resid_post`); the last stage is the
model's own logits. For every stage and token it keeps only what the views and the trace file need, so a 65,536-token
vocabulary never has to be held as [T, L + 1, V] (1,024 x 13 x 65,536 float32 = 3.5 GB): the log-probability and
rank of one wanted token per position (the actual next token, or a target the user names) and the ten most likely
tokens with their log-probabilities. The logits are formed stage by stage, LENS_CHUNK positions at a time.

Conventions: T tokens, S = L + 1 stages, K = LENS_TOPK, V vocabulary. Rank 0 is the most likely token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from rwkv_core.errors import InputError

LENS_TOPK = 10  # the most likely tokens kept per (token, stage): what the heat map's hover shows
LENS_CHUNK = 256  # positions unembedded at once: bounds the [chunk, V] logits temporary (64 MB at V = 65,536)
READ_ROWS = 8  # rows of logits the normaliser, rank and top-k go over together (kept in cache between passes)
NO_TARGET = -1  # the wanted token id where there is none (the last position, in next-token mode)


def stage_names(n_layer: int) -> list[str]:
    """Names of the lens stages, in order: "embed" (after ln0), then "0" .. "L-1" (after each block)."""
    return ["embed"] + [str(l) for l in range(n_layer)]


def stage_hooks(n_layer: int) -> list[str]:
    """The hook point whose tensor each stage reads (`stage_names`' order)."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layer)]


def next_token_targets(tokens: Sequence[int]) -> np.ndarray:
    """The wanted token at every position in next-token mode: token t + 1, NO_TARGET at the last position. [T]"""
    t = np.asarray(tokens, dtype=np.int64)
    return np.concatenate([t[1:], np.array([NO_TARGET], dtype=np.int64)])


@dataclass
class LogitLens:
    """The lens of one prompt: per token t and stage s (stages as `stage_names`).

    wanted [T]: the token scored at each position (NO_TARGET: none); logp [T, S] float32 its log-probability (NaN
    where none); rank [T, S] int64 its rank (-1 where none); top_ids [T, S, K] int64 and top_logp [T, S, K] float32
    the K most likely tokens and their log-probabilities (log-softmax over the whole vocabulary)."""

    stages: list[str]
    wanted: np.ndarray
    logp: np.ndarray
    rank: np.ndarray
    top_ids: np.ndarray
    top_logp: np.ndarray

    @property
    def T(self) -> int:
        return self.logp.shape[0]

    @property
    def computed(self) -> np.ndarray:
        """[T] bool: the positions read out (`logit_lens(positions=...)` leaves the others empty)."""
        return self.top_ids[:, -1, 0] >= 0

    def rows(self, start: int, stop: int) -> "LogitLens":
        """A lens of positions start..stop-1 only (a copy): what a cache keeps of a read-out window."""
        sl = slice(start, stop)
        return LogitLens(list(self.stages), self.wanted[sl].copy(), self.logp[sl].copy(), self.rank[sl].copy(),
                         self.top_ids[sl].copy(), self.top_logp[sl].copy())

    def merge(self, other: "LogitLens", at: int = 0) -> "LogitLens":
        """This lens with the rows `other` has read out (the same prompt and target) filled in; `other`'s row 0 is
        this lens's row `at` (`rows`)."""
        m = np.flatnonzero(other.computed)
        for name in ("logp", "rank", "top_ids", "top_logp"):
            getattr(self, name)[m + at] = getattr(other, name)[m]
        return self

    def answer_forms(self) -> np.ndarray:
        """`answer_stage` of this lens: [T] stage index per token."""
        return answer_stage(self.top_ids[:, :, 0])


def answer_stage(top1: np.ndarray) -> np.ndarray:
    """Where the answer forms: for every token, the first stage from which the final stage's top-1 token stays the
    top-1 at every later stage. top1 [T, S] (the top-1 id at every stage); returns [T] int64 stage indices (S - 1
    when only the last stage predicts it)."""
    top1 = np.asarray(top1)
    same = top1 == top1[:, -1:]  # [T, S]
    # the suffix of stages that all agree: the first stage after the last disagreement
    disagree = ~same
    S = top1.shape[1]
    last_bad = np.where(disagree.any(1), S - 1 - np.argmax(disagree[:, ::-1], axis=1), -1)
    return (last_bad + 1).astype(np.int64)


def _wanted_ids(tokens: Sequence[int], target: Optional[int], vocab_size: int) -> np.ndarray:
    if target is None:
        return next_token_targets(tokens)
    if not 0 <= int(target) < vocab_size:
        raise InputError(f"target token id {target} is outside the vocabulary 0..{vocab_size - 1}")
    return np.full(len(tokens), int(target), dtype=np.int64)


def _read_rows(logits: torch.Tensor, want: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Log-probability and rank of `want` [n] (NO_TARGET: none) and the top-k of logits [n, V], which it overwrites:
    (logp [n], rank [n], top ids [n, k], top log-probabilities [n, k])."""
    has = want >= 0
    w_logit = logits.gather(1, want.clamp_min(0)[:, None])  # [n, 1]
    n_above = torch.count_nonzero(logits > w_logit, dim=1)
    top = torch.topk(logits, k, dim=1)
    m = top.values[:, :1]  # the row maximum
    lse = m[:, 0] + torch.log(logits.sub_(m).exp_().sum(1))  # in place: the logits are not used again
    logp = torch.where(has, w_logit[:, 0] - lse, torch.full_like(lse, float("nan")))
    rank = torch.where(has, n_above, torch.full_like(n_above, -1))
    return logp, rank, top.indices, top.values - lse[:, None]


@torch.no_grad()
def read_stage(unembed: Callable[[torch.Tensor], torch.Tensor], resid: torch.Tensor, wanted: torch.Tensor,
               k: int = LENS_TOPK, chunk: int = LENS_CHUNK) -> tuple[torch.Tensor, ...]:
    """One stage of the lens: the residual stream resid [T, C] read out with `unembed` (head after ln_out), chunk
    by chunk. wanted [T] int64 (NO_TARGET: none). Returns logp [T], rank [T], top_ids [T, k], top_logp [T, k].

    Each chunk's logits [chunk, V] come from one matrix product; the normaliser, rank and top-k then go over
    READ_ROWS rows at a time, whose logits stay in the CPU's cache across those passes (2 MB at V = 65,536): on
    one core that halved their cost against passes over the whole 64 MB chunk."""
    T = resid.shape[0]
    out = (torch.empty(T), torch.empty(T, dtype=torch.int64), torch.empty((T, k), dtype=torch.int64),
           torch.empty((T, k)))
    for s in range(0, T, chunk):
        logits = unembed(resid[s:s + chunk]).float()  # [n, V]
        want = wanted[s:s + chunk].to(logits.device)
        for r in range(0, logits.shape[0], READ_ROWS):
            for dst, val in zip(out, _read_rows(logits[r:r + READ_ROWS], want[r:r + READ_ROWS], k)):
                dst[s + r:s + r + val.shape[0]] = val.cpu()
    return out


def capture_residuals(model, tokens: Sequence[int]) -> torch.Tensor:
    """The residual stream at every lens stage of one prompt: [S, T, C] float32, on the model's device (one forward
    pass without logits)."""
    names = stage_hooks(model.cfg.n_layer)
    _, _, cache = model.run_with_cache(list(tokens), names_filter=names, device=None, logits="none")
    return torch.stack([cache[n][0].float() for n in names])


@torch.no_grad()
def logit_lens(model, tokens: Sequence[int], *, target: Optional[int] = None, k: int = LENS_TOPK,
               resid: Optional[torch.Tensor] = None, positions: Optional[range] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> LogitLens:
    """The logit lens of `tokens` on `model` (a `rwkv_core.model.RWKV`): every stage read out as the model reads its
    last one, `model.unembed` = head(ln_out(x)). target None scores the actual next token at every position; a
    token id scores that token everywhere. resid [S, T, C] reuses a capture (`capture_residuals`); positions (a
    range of token positions) reads out only those rows, the others left empty (`LogitLens.computed`): the head's
    product over a 65,536-word vocabulary is most of the lens's cost, and a page shows a window of tokens.
    progress(done, total) is called after the capture and after every stage."""
    tokens = [int(t) for t in tokens]
    cfg = model.cfg
    T = len(tokens)
    wanted = _wanted_ids(tokens, target, cfg.vocab_size)
    rows = range(T) if positions is None else range(max(0, positions.start), min(T, positions.stop))
    S = cfg.n_layer + 1
    if resid is None:
        resid = capture_residuals(model, tokens)
    if progress is not None:
        progress(1, S + 1)
    w = torch.from_numpy(wanted[rows.start:rows.stop])
    parts = []
    for s in range(S):
        parts.append(read_stage(model.unembed, resid[s, rows.start:rows.stop], w, k))
        if progress is not None:
            progress(s + 2, S + 1)
    logp, rank, ids, tlp = (torch.stack(x, 1).numpy() for x in zip(*parts))
    if len(rows) == T:
        return LogitLens(stage_names(cfg.n_layer), wanted, logp.astype(np.float32), rank, ids, tlp.astype(np.float32))
    out = empty_lens(stage_names(cfg.n_layer), wanted, k)
    out.logp[rows.start:rows.stop], out.rank[rows.start:rows.stop] = logp, rank
    out.top_ids[rows.start:rows.stop], out.top_logp[rows.start:rows.stop] = ids, tlp
    return out


def empty_lens(stages: list[str], wanted: np.ndarray, k: int = LENS_TOPK) -> LogitLens:
    """A lens with no row read out yet: logp and top_logp NaN, rank and top_ids -1 (`LogitLens.computed` False)."""
    T, S = len(wanted), len(stages)
    return LogitLens(list(stages), np.asarray(wanted, dtype=np.int64), np.full((T, S), np.nan, np.float32),
                     np.full((T, S), -1, np.int64), np.full((T, S, k), -1, np.int64),
                     np.full((T, S, k), np.nan, np.float32))


# ------------------------------------------------------------------------------------------------ trace file


def trace_lens_keys(lens: LogitLens, layers: Sequence[int], *, embed: bool = True) -> dict[str, np.ndarray]:
    """What `export --lens` adds to a trace (next-token mode): for every exported layer l, lens_logp_l{l} [T] float32
    (the log-probability at position t of token t + 1, NaN at the last position), lens_rank_l{l} [T] int64 (its
    rank, -1 at the last position) and lens_top_l{l} [T, 10] int64 (the ten most likely tokens); with `embed` the
    same for the embedding after ln0 as lens_logp_embed, lens_rank_embed, lens_top_embed."""
    out: dict[str, np.ndarray] = {}
    picks = ([("embed", 0)] if embed else []) + [(f"l{int(l)}", int(l) + 1) for l in layers]
    for name, s in picks:
        out[f"lens_logp_{name}"] = lens.logp[:, s].astype(np.float32)
        out[f"lens_rank_{name}"] = lens.rank[:, s].astype(np.int64)
        out[f"lens_top_{name}"] = lens.top_ids[:, s].astype(np.int64)
    return out


@dataclass
class StoredLens:
    """The lens as a trace file keeps it: next-token log-probabilities, ranks and top-10 ids of the exported stages
    (no top-10 probabilities: the file keeps ids only)."""

    stages: list[str]  # stage names as `stage_names` ("embed", "0", ...), those the file holds
    logp: np.ndarray  # [T, S'] float32
    rank: Optional[np.ndarray]  # [T, S'] int64, or None where the file has no ranks
    top_ids: np.ndarray  # [T, S', K] int64


def lens_from_trace(arrays: dict, layers: Sequence[int]) -> Optional[StoredLens]:
    """The lens stored in a trace's arrays (`trace_lens_keys`), or None where the file holds none."""
    picks = ([("embed", "embed")] if "lens_logp_embed" in arrays else []) + [
        (str(l), f"l{l}") for l in layers if f"lens_logp_l{l}" in arrays]
    if not picks:
        return None
    logp = np.stack([np.asarray(arrays[f"lens_logp_{k}"], dtype=np.float32) for _, k in picks], 1)
    ranks = [arrays.get(f"lens_rank_{k}") for _, k in picks]
    rank = None if any(r is None for r in ranks) else np.stack([np.asarray(r, dtype=np.int64) for r in ranks], 1)
    top = np.stack([np.asarray(arrays[f"lens_top_{k}"], dtype=np.int64) for _, k in picks], 1)
    return StoredLens([s for s, _ in picks], logp, rank, top)
