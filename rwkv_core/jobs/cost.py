"""What a heavy job will cost before it starts: its time, from this model's measured speed on its device, and its
peak memory, from the shapes; and how to run it within a memory budget (smaller batches of cells) or the one line
that says what to change when nothing fits.

Time model of a causal trace (the fast path, `rwkv_core.analysis.tracing.fast`): every cell at token t >= the
subject's first token runs its noise-sample rows through the layers above the one it restores over the tokens from
t to the end; the work is counted in row-token-layers and priced by `Speed.block_s`, plus one batched one-token
step per prompt token for the corrupted states (`Speed.step_s`), the unembedding of every cell's rows
(`Speed.head_s`), and the clean and corrupted runs. A subset of rows (`tokens`) costs the sum of its rows' work:
each row's cells are its own. Attribution patching (`atp_trace_seconds`, `estimate_atp_trace`): one forward with
gradients and one backward, plus the state's token-by-token pass, the noise samples in groups of rows that fit the
budget. Memory model: the weights, the cached runs
(`tracing.setup_bytes`), the corrupted states of two positions, and one batch of cells.
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.analysis.patching.attribution import atp_fixed_bytes, atp_group_rows, atp_row_bytes
from rwkv_core.errors import InputError

GB = 2**30
MIN_BATCH_BYTES = 16 * 2**20  # below this a batch of cells is mostly overhead


PARALLEL_EFFICIENCY = 0.7  # what each further CPU thread adds to a forward's speed (measured on 2 cores: 1.7x)


@dataclass(frozen=True)
class Speed:
    """Measured seconds of this model on its device: per row-token-layer of a batched sequence forward, per layer of
    a batched one-token step, per row of the unembedding."""

    block_s: float
    step_s: float
    head_s: float
    device: str

    def with_threads(self, threads: int) -> "Speed":
        """On a CPU the speed is measured with one thread (another process busy on a core makes a many-thread
        timing meaningless): the speed of a worker with `threads` threads."""
        if not self.device.startswith("cpu") or threads <= 1:
            return self
        f = 1.0 / (1.0 + PARALLEL_EFFICIENCY * (threads - 1))
        return Speed(self.block_s * f, self.step_s * f, self.head_s * f, self.device)


_SPEED: "weakref.WeakKeyDictionary[Any, dict[int, Speed]]" = weakref.WeakKeyDictionary()


def _timed(fn, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def measure_speed(model, rows: int = 4, tokens: int = 16) -> Speed:
    """Time a forward of `rows` x `tokens` random tokens (once, after a short warm-up), a one-token step and the
    unembedding (best of two), once per model and batch size; on a CPU with one thread (see `Speed.with_threads`).
    The Causal tracing page shows the cost before its first render ends: 16 tokens give the time per row, token and
    layer within 10 % of 64 tokens' at a quarter of the time (0.1B shape, 8 rows: 0.30 against 0.28 ms)."""
    cached = _SPEED.setdefault(model, {})
    if rows in cached:
        return cached[rows]
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, cfg.vocab_size, (rows, tokens), generator=gen).to(model.device)
    x = torch.randn(rows * 8, cfg.n_embd, generator=gen).to(model.device)
    threads = torch.get_num_threads()
    on_cpu = str(model.device).startswith("cpu")
    if on_cpu:
        torch.set_num_threads(1)
    try:
        model(seq[:, :4], logits="none")  # warm-up
        block_s = _timed(lambda: model(seq, logits="none"), repeats=1) / (rows * tokens * cfg.n_layer)
        step_s = _timed(lambda: model(seq[:, :1], logits="none")) / cfg.n_layer
        head_s = _timed(lambda: model.unembed(x)) / (rows * 8)
    finally:
        if on_cpu:
            torch.set_num_threads(threads)
    speed = Speed(block_s, step_s, head_s, str(model.device))
    cached[rows] = speed
    return speed


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ causal tracing


def trace_work(cfg, T: int, K: int, subject_start: int, n: int, specs: Sequence[TR.TraceSpec],
               tokens: Optional[Sequence[int]] = None) -> dict[str, int]:
    """The fast path's work for these grids: cells, row-token-layers of the cell batches, one-token steps and
    unembedded rows (see the module docstring). `tokens`: the rows of a subset trace (None: every row); each row's
    work is its own, so the work of a subset is the sum of its rows' (cells: len(tokens) x L per grid), and the
    corrupted states advance up to the last row only."""
    L, S = cfg.n_layer, T + K - 1
    rows = np.arange(T) if tokens is None else np.asarray(sorted({int(x) for x in tokens}), dtype=np.int64)
    t = rows[rows >= subject_start]  # the tokens whose cells run
    units = 0
    steps = 0
    cells_run = 0
    for sp in specs:
        for l in range(L):
            if sp.kind == "block" and sp.mode == "state":
                seg = S - t - 1
                units += int(np.sum(np.maximum(seg, 0) * (L - l)))
                cells_run += int(np.sum(seg > 0))
                continue
            if sp.kind == "block":
                layers = L - l - 1
                units += int(np.sum((S - t) * layers))
                if sp.mode == "both":
                    units += int(np.sum(S - t - 1))
            else:
                first = TR.window_layers(l, L, sp.window)[0]
                join = first + 1 if sp.kind == "ffn" else first
                units += int(np.sum((S - t) * (L - join)))
            cells_run += len(t)
        # the corrupted states advance once per token up to the last row run, shared by every grid
        steps = max(steps, int(t[-1]) + 1 if len(t) else 0)
    return {"cells": len(specs) * len(rows) * L, "cells_run": cells_run, "row_units": units * n, "steps": steps,
            "head_rows": cells_run * n * K}


def trace_seconds(cfg, T: int, K: int, subject_start: int, n: int, specs: Sequence[TR.TraceSpec],
                  speed: Speed, tokens: Optional[Sequence[int]] = None) -> float:
    """Estimated seconds of prepare_trace plus trace_grids (of the rows `tokens` only, if given) at this model's
    measured speed."""
    w = trace_work(cfg, T, K, subject_start, n, specs, tokens)
    S = T + K - 1
    prepare = (1 + n) * S * cfg.n_layer * speed.block_s + (1 + n) * K * speed.head_s
    return (prepare + w["row_units"] * speed.block_s + w["steps"] * cfg.n_layer * speed.step_s
            + w["head_rows"] * speed.head_s)


@dataclass(frozen=True)
class JobCost:
    """A job's estimate: cells, seconds, peak bytes (weights + cached runs + one batch of cells), and the batch
    budget it runs with; `refusal` is the one line when no batch fits the memory budget."""

    cells: int
    seconds: float
    peak_bytes: int
    weights_bytes: int
    cache_bytes: int
    batch_bytes: int
    budget_bytes: int
    refusal: Optional[str] = None

    @property
    def fits(self) -> bool:
        return self.refusal is None


def _trace_memory(cfg, weights: int, T: int, K: int, n: int, subject_tokens: int = 0) -> tuple[int, int]:
    """(bytes of the cached runs and corrupted states, bytes one cell needs at the longest segment)."""
    S = T + K - 1
    cache = (TR.setup_bytes(cfg, T, K, n, subject_tokens=subject_tokens)
             + 3 * cfg.n_layer * n * TR.state_bytes(cfg))
    one_cell = n * (S * TR.row_token_bytes(cfg) + 3 * TR.state_bytes(cfg)) + n * K * cfg.vocab_size * 12
    return cache, one_cell


def estimate_trace(model, T: int, K: int, subject_start: int, n: int, specs: Sequence[TR.TraceSpec],
                   budget_bytes: int, speed: Optional[Speed] = None,
                   max_batch_bytes: int = TR.DEFAULT_MEMORY_BUDGET, subject_tokens: int = 0,
                   threads: int = 1, tokens: Optional[Sequence[int]] = None) -> JobCost:
    """Time and memory of tracing these grids (the rows `tokens` only, if given) on a worker with `threads` CPU
    threads, and the batch budget that keeps the job within `budget_bytes`; a refusal line (what to change) when
    even one cell at a time does not fit (a subset needs the same caches and batches as the full grid)."""
    cfg = model.cfg
    speed = (speed or measure_speed(model, rows=max(1, min(n, 8)))).with_threads(threads)
    weights = weight_bytes(model)
    cache, one_cell = _trace_memory(cfg, weights, T, K, n, subject_tokens)
    room = budget_bytes - weights - cache
    batch = int(min(max_batch_bytes, room, cfg.n_layer * one_cell))  # a batch holds at most one token's L cells
    work = trace_work(cfg, T, K, subject_start, n, specs, tokens)
    seconds = trace_seconds(cfg, T, K, subject_start, n, specs, speed, tokens)
    refusal = None
    if room < max(one_cell, MIN_BATCH_BYTES):
        refusal = trace_refusal(cfg, weights, T, K, n, budget_bytes)
        batch = one_cell
    peak = weights + cache + max(batch, one_cell)
    return JobCost(work["cells"], seconds, peak, weights, cache, batch, budget_bytes, refusal)


def atp_trace_seconds(cfg, T: int, K: int, n: int, specs: Sequence[TR.TraceSpec], speed: Speed,
                      state_groups: int = 1) -> float:
    """Estimated seconds of prepare_trace plus attribution patching of these grids (`atp_trace`): one forward of
    the n corrupted rows with gradients and one backward (about 3 forwards; in groups of rows the same row work),
    the clean time-mix / channel-mix outputs for att / ffn grids (one pass of each layer over the sequence), and
    for state restores each layer's clean states after every token (about 2 passes, shared by the groups) and its
    corrupted rows run one token at a time with gradients (S one-token steps, forward and backward: about 3), once
    per group of `state_groups` (a one-token step costs about the same for a few rows as for one)."""
    L, S = cfg.n_layer, T + K - 1
    prepare = (1 + n) * S * L * speed.block_s + (1 + n) * K * speed.head_s
    seconds = prepare + 3 * (n * S * L * speed.block_s + n * K * speed.head_s)
    kinds = {sp.kind for sp in specs}
    seconds += sum(L * S * speed.block_s for k in ("att", "ffn") if k in kinds)
    if _atp_state(specs):
        seconds += L * (2 * S * speed.block_s + 3 * S * speed.step_s * max(1, state_groups))
    return seconds


def _atp_state(specs: Sequence[TR.TraceSpec]) -> bool:
    return any(sp.kind == "block" and sp.mode in ("state", "both") for sp in specs)


def atp_memory(cfg, T: int, K: int, n: int, specs: Sequence[TR.TraceSpec],
               subject_tokens: int = 0) -> tuple[int, int, int, int]:
    """Bytes of attribution patching a trace, (cached runs, what atp_trace holds whatever its groups, one row of
    the forward and backward, one row of the state pass): `TR.setup_bytes`, `atp_fixed_bytes`, `atp_row_bytes`."""
    S = T + K - 1
    kinds, state = tuple({sp.kind for sp in specs}), _atp_state(specs)
    cache = TR.setup_bytes(cfg, T, K, n, subject_tokens=subject_tokens)
    main_row, state_row = atp_row_bytes(cfg, S, kinds, state)
    return cache, atp_fixed_bytes(cfg, T, S, n, kinds, state), main_row, state_row


def estimate_atp_trace(model, T: int, K: int, n: int, specs: Sequence[TR.TraceSpec], budget_bytes: int,
                       speed: Optional[Speed] = None, subject_tokens: int = 0, threads: int = 1) -> JobCost:
    """Time and memory of attribution patching these grids on a worker with `threads` CPU threads, its noise
    samples in groups of rows that keep the peak within `budget_bytes` (`atp_trace`'s memory_budget is the
    JobCost's batch_bytes): the weights, the cached runs, what atp_trace holds whatever its groups
    (`atp_fixed_bytes`) and the largest group (`atp_row_bytes` a row). A refusal line, saying what to change, only
    when even one row at a time does not fit. Measured (bench/bench_atp_groups.py: 12 x 768, T = 1,031, 10 samples,
    8 GB, 2 threads, a busy machine): peak 7.17 GB estimated, 7.18 GB measured; 887 s estimated, 1,447 s wall."""
    cfg = model.cfg
    speed = (speed or measure_speed(model, rows=max(1, min(n, 8)))).with_threads(threads)
    weights = weight_bytes(model)
    S = T + K - 1
    kinds, state = tuple({sp.kind for sp in specs}), _atp_state(specs)
    cache, fixed, main_row, state_row = atp_memory(cfg, T, K, n, specs, subject_tokens)
    room = budget_bytes - weights - cache - fixed
    main_g, state_g = atp_group_rows(cfg, S, n, max(0, room), kinds, state)
    group = max(main_g * main_row, state_g * state_row)  # the largest group: atp_trace's budget
    refusal = None
    if room < max(main_row, state_row):
        refusal = atp_refusal(cfg, weights, T, K, n, specs, budget_bytes, subject_tokens)
    peak = weights + cache + fixed + group
    cells = len(specs) * T * cfg.n_layer
    seconds = atp_trace_seconds(cfg, T, K, n, specs, speed, state_groups=-(-n // state_g))
    return JobCost(cells, seconds, peak, weights, cache + fixed, group, budget_bytes, refusal)


def atp_refusal(cfg, weights: int, T: int, K: int, n: int, specs: Sequence[TR.TraceSpec], budget_bytes: int,
                subject_tokens: int = 0) -> str:
    """The one line for attribution patching that does not fit even one noise sample at a time: what it needs,
    the budget, and the largest sample count and prompt length that would fit."""

    def need(T_: int, n_: int) -> int:
        cache, fixed, main_row, state_row = atp_memory(cfg, T_, K, n_, specs, subject_tokens)
        return weights + cache + fixed + max(main_row, state_row)

    _c, _f, main_row, state_row = atp_memory(cfg, T, K, n, specs, subject_tokens)
    options = _what_fits(T, n, lambda T_, n_: need(T_, n_) <= budget_bytes, weights < budget_bytes)
    return (f"attribution patching of this trace needs about {need(T, n) / GB:.1f} GB even one noise sample at a "
            f"time (weights {weights / GB:.1f}, one row's backward pass {max(main_row, state_row) / GB:.1f}) and the "
            f"job memory budget is {budget_bytes / GB:.1f} GB: " + options)


def trace_refusal(cfg, weights: int, T: int, K: int, n: int, budget_bytes: int) -> str:
    """The one line for a trace that does not fit: what it needs, the budget, and the largest sample count and
    prompt length that would fit."""

    def fits(T_: int, n_: int) -> bool:
        cache, one = _trace_memory(cfg, weights, T_, K, n_)
        return weights + cache + max(one, MIN_BATCH_BYTES) <= budget_bytes

    cache, one = _trace_memory(cfg, weights, T, K, n)
    need = weights + cache + max(one, MIN_BATCH_BYTES)
    return (f"this trace needs about {need / GB:.1f} GB (weights {weights / GB:.1f}, cached runs {cache / GB:.1f}) and "
            f"the job memory budget is {budget_bytes / GB:.1f} GB: " + _what_fits(T, n, fits, weights < budget_bytes))


def _what_fits(T: int, n: int, fits, weights_fit: bool) -> str:
    """What to change, as the end of a refusal line: the largest sample count below n and the longest prompt below
    T that `fits(T, n)`, and the budget or the model."""
    options = []
    n_fit = next((k for k in range(n - 1, 0, -1) if fits(T, k)), 0)
    if n_fit:
        options.append(f"use at most {n_fit} noise sample{'s' if n_fit > 1 else ''}")
    lo, hi = 0, T - 1  # the longest prompt that fits with these samples
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid, n):
            lo = mid
        else:
            hi = mid - 1
    if lo >= 1:
        options.append(f"a prompt of at most {lo} tokens")
    options.append("raise RWKV_INSPECTOR_JOB_MEMORY_GB" if weights_fit else "a smaller model or bf16 weights")
    return ", or ".join(options)


def check_trace_fits(cost: JobCost) -> None:
    """InputError with the refusal line when the job does not fit."""
    if cost.refusal:
        raise InputError(cost.refusal)


def ablation_seconds(cfg, S: int, K: int, n: int, replacement: str, speed: Speed) -> float:
    """One row group per layer through the whole sequence (n rows for the corrupted run's values)."""
    g = n if replacement == "corrupt" else 1
    return cfg.n_layer * g * S * cfg.n_layer * speed.block_s + cfg.n_layer * g * K * speed.head_s


# ------------------------------------------------------------------------------------------------ budgets


def available_memory_bytes(device: str = "cpu") -> int:
    """Memory a job could use now: the GPU's free memory, or this machine's available memory (MemAvailable)."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


# ------------------------------------------------------------------------------------------------ forward captures


def capture_bytes(cfg, T: int, n_layers: int) -> int:
    """Bytes of one forward with the score views' capture (`scores.capture_with_logits`): per captured layer r, k,
    v, the log-decay and the WKV output (v7 also kk and a) [T, C] float32, the logits [T, V], and one block's
    activations while it runs; v7 also one input's token-major [T, L, C] buffer while it is filled from the
    per-layer tensors."""
    v7 = str(cfg.version).startswith("7")
    per_layer = (8 if v7 else 5) * T * cfg.n_embd * 4
    return n_layers * per_layer + T * cfg.vocab_size * 4 + T * TR.row_token_bytes(cfg)


def capture_refusal(cfg, T: int, n_layers: int, budget_bytes: int) -> Optional[str]:
    """None when the capture fits the budget, else the one line: what it needs and the longest prompt that fits."""
    need = capture_bytes(cfg, T, n_layers)
    if need <= budget_bytes:
        return None
    per_token = capture_bytes(cfg, 1, n_layers)
    fit = int(budget_bytes // max(1, per_token))
    return (f"capturing {n_layers} layer{'s' if n_layers != 1 else ''} of this {T:,}-token prompt needs about "
            f"{need / GB:.1f} GB and the server's capture budget is {budget_bytes / GB:.1f} GB: use a prompt of at "
            f"most {fit:,} tokens, or raise RWKV_INSPECTOR_CAPTURE_MEMORY_GB")
