"""Causal tracing, the fast path: the cached clean and corrupted runs reused, both runs' states advanced token
by token, and the cells of a grid batched layer by layer within a memory budget (`_FastTracer`); `trace_grids`
fills every grid by this path or by the reference one, and `trace` is one grid in one call."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from rwkv_core.analysis.tracing.reference import reference_cell
from rwkv_core.analysis.tracing.results import METRICS, TraceResult, TraceSpec, _empty_grids, _fill, _finish
from rwkv_core.analysis.tracing.subset import check_tokens
from rwkv_core.analysis.tracing.setup import (DEFAULT_MEMORY_BUDGET, StopFn, TraceSetup, _rep, _stop_check,
                                              prepare_trace, row_token_bytes, run_block, state_bytes, window_layers)
from rwkv_core.errors import InputError
from rwkv_core.io.tokenizer import Tokenizer

ProgressFn = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------ fast path


@dataclass
class _Cell:
    """One cell's rows in a fast batch: they join the batch at layer `join` with input x [n, Tseg, C]."""

    layer: int
    join: int
    x: Optional[torch.Tensor]
    vf: Optional[torch.Tensor] = None  # [n, Tseg, C] v7 v_first for the layers from `join` on
    state: Optional[tuple] = None  # state of layer `join` at the segment start (replaces the corrupted one)
    patch: frozenset = frozenset()  # layers whose att/ffn output at the segment's first token is restored


class _FastTracer:
    """The fast path: cached clean/corrupted runs, their states advanced token by token, cells batched."""

    def __init__(self, setup: TraceSetup, memory_budget: int):
        self.s = setup
        self.model = setup.model
        cfg = self.model.cfg
        self.L, self.C, self.n = cfg.n_layer, cfg.n_embd, setup.n
        self.v7 = cfg.version == "7"
        # layer inputs of the corrupted run: xin[i] for i < L is block i's input (block 0: after ln0 and the
        # noise), xin[L] the last block's output
        self.xin = setup.corrupt_cache["resid"]  # [L+1, n, S, C]
        per_row_token = row_token_bytes(cfg)
        self.per_row = lambda Tseg: per_row_token * max(Tseg, 1) + 3 * state_bytes(cfg)
        self.budget = memory_budget
        # both runs' states after token t, advanced as the grid moves along the tokens; with them the corrupted
        # residual after the time-mix (ffn cells) and the clean module outputs (att/ffn restores) at t
        self.corrupt_walk = setup.walk("corrupt", ("resid_mid",), self._block)
        self.clean_walk = setup.walk("clean", ("att_out", "ffn_out"), self._block)

    # -------------------------------------------------------------- states

    def _block(self, i: int, x, state: tuple, vf, hooks: Sequence = (), need_state: bool = True):
        """Block i on x [B, Tseg, C] (`run_block`): every block the fast path runs goes through here."""
        return run_block(self.model, i, x, state, vf, hooks, need_state)

    def corrupt_states_after(self, p: int) -> list[tuple]:
        """The corrupted run's state of every layer after token p (p = -1: the zero state), advanced one token at a
        time from the cached layer inputs (`RunWalk`), so that each layer's state is consistent with the cached
        activations."""
        return self.corrupt_walk.states_after(p)

    def clean_state(self, l: int, t: int) -> tuple:
        """The clean run's state of layer l after token t for n rows (advanced like the corrupted one)."""
        a, s, f = self.clean_walk.states_after(t)[l]
        n = self.n
        return a.expand(n, -1).clone(), s, f.expand(n, -1).clone()  # WKV: one row, shared

    # -------------------------------------------------------------- cells

    def cells(self, spec: TraceSpec, t: int) -> tuple[int, list[_Cell]]:
        """Segment start and the cells of token t (x filled in lazily by `_materialise`)."""
        L = self.L
        if spec.kind == "block":
            if spec.mode == "state":
                return t + 1, [_Cell(l, l, None) for l in range(L)]
            return t, [_Cell(l, l + 1, None) for l in range(L)]
        cells = []
        for l in range(L):
            win = window_layers(l, L, spec.window)
            if spec.kind == "ffn":  # layer win[0] differs from the corrupted run only in its output at token t
                cells.append(_Cell(l, win[0] + 1, None, patch=frozenset(win[1:])))
            else:
                cells.append(_Cell(l, win[0], None, patch=frozenset(win)))
        return t, cells

    def _materialise(self, spec: TraceSpec, t: int, seg0: int, cell: _Cell) -> None:
        s, n, l = self.s, self.n, cell.layer
        clc = s.clean_cache
        vfc = s.corrupt_cache.get("v_first")
        clean_vf_restore = self.v7 and spec.kind == "block" and spec.restore_v_first
        if spec.kind == "block" and spec.mode == "state":
            cell.x = self.xin[l][:, seg0:]
            cell.state = self.clean_state(l, t)
            cell.vf = vfc[:, seg0:] if (self.v7 and l > 0) else None
            return
        if spec.kind == "block":
            top = clc["resid"][l + 1, t].expand(n, 1, -1)  # [n, 1, C] the clean residual after block l at t
            vf = None
            if self.v7:
                vf_t = clc["v_first"][t].expand(n, 1, -1) if clean_vf_restore else vfc[:, t:t + 1]
                vf = torch.cat([vf_t, vfc[:, t + 1:]], 1)
            if spec.mode == "resid" or t + 1 >= s.S:
                rest = self.xin[l + 1][:, t + 1:]
            else:  # both: layer l runs tokens t+1.. from its clean state after t
                vf_side = vfc[:, t + 1:] if (self.v7 and l > 0) else None
                rest, _, vf_out = self._block(l, self.xin[l][:, t + 1:], self.clean_state(l, t), vf_side,
                                              need_state=False)
                if self.v7 and l == 0:
                    vf = torch.cat([vf[:, :1], vf_out], 1)
            cell.x = torch.cat([top, rest], 1)
            cell.vf = vf
            return
        a = cell.join
        cell.x = self.xin[a][:, t:]
        if spec.kind == "ffn":  # the layer below: corrupted until its channel-mix output at t, then the clean one
            cell.x = cell.x.clone()
            cell.x[:, 0] = (self.corrupt_walk.values_at(t)["resid_mid"][a - 1]  # [n, C] + [1, C]
                            + self.clean_walk.values_at(t)["ffn_out"][a - 1])
        cell.vf = vfc[:, t:] if (self.v7 and a > 0) else None

    def run_cells(self, spec: TraceSpec, t: int, seg0: int, cells: list[_Cell], base: list[tuple]) -> torch.Tensor:
        """Stream the cells' rows up the layers; returns logits at the answer positions [len(cells) * n, K, V].

        Rows come in groups of n (one per noise sample). Window cells that join at the same layer have the same
        input and share one group until their windows differ (a group forks, rows copied, at the first layer
        where some of its cells restore and others do not); every block cell has its own group.
        """
        s, n, L = self.s, self.n, self.L
        Tseg = s.S - seg0
        ans_pos = s.answer_positions
        by_join: dict[int, list[_Cell]] = {}
        for c in cells:
            by_join.setdefault(c.join, []).append(c)
        x = vf = None
        groups: list[list[_Cell]] = []
        if Tseg > 0:
            for i in range(L + 1):
                joining = by_join.get(i, [])
                if joining:
                    new = [[c] for c in joining] if spec.kind == "block" else [joining]
                    for g in new:
                        self._materialise(spec, t, seg0, g[0])
                    x = torch.cat(([x] if x is not None else []) + [g[0].x for g in new], 0)
                    if self.v7 and i > 0:
                        vf = torch.cat(([vf] if vf is not None else []) + [g[0].vf for g in new], 0)
                    for g in new:
                        g[0].x = g[0].vf = None
                    groups += new
                if i == L or x is None:
                    continue
                split, src = [], []
                for j, g in enumerate(groups):
                    for part in ([c for c in g if i not in c.patch], [c for c in g if i in c.patch]):
                        if part:
                            split.append(part)
                            src.append(j)
                if len(split) != len(groups):  # fork: copy the shared rows
                    idx = torch.tensor([j * n + r for j in src for r in range(n)], device=x.device)
                    x = x[idx]
                    vf = vf[idx] if vf is not None else None
                groups = split
                if any(g[0].join == i and g[0].state is not None for g in groups):
                    st = [_rep(part, len(groups)) for part in base[i]]
                else:  # every group starts from the corrupted WKV state: shared, not copied (see `wkv`)
                    st = [_rep(base[i][0], len(groups)), base[i][1], _rep(base[i][2], len(groups))]
                for j, g in enumerate(groups):
                    c = g[0]
                    if c.join == i and c.state is not None:
                        for part, val in zip(st, c.state):
                            part[j * n:(j + 1) * n] = val
                        c.state = None
                patch = None
                rows = [j * n + r for j, g in enumerate(groups) if i in g[0].patch for r in range(n)]
                if rows:
                    name = f"blocks.{i}.{spec.kind}.hook_out"
                    clean_out = self.clean_walk.values_at(t)[f"{spec.kind}_out"][i]  # [1, C]
                    idx = torch.tensor(rows, device=x.device)

                    def restore_out(o, hook, idx=idx, clean_out=clean_out):
                        o = o.clone()
                        o[idx, 0] = clean_out
                        return o

                    patch = (name, restore_out)
                x, _, vf = self._block(i, x, st, vf, [patch] if patch else [], need_state=False)
        # logits at the answer positions: computed ones from the segment, earlier ones from the corrupted run
        order = {id(c): j for j, g in enumerate(groups) for c in g}
        rel = [p - seg0 for p in ans_pos if p >= seg0]
        pre = [q for q, p in enumerate(ans_pos) if p < seg0]
        out = torch.empty(len(cells) * n, len(ans_pos), self.model.cfg.vocab_size, device=self.model.device)
        lg = self.model.unembed(x[:, rel]) if (rel and x is not None) else None
        for ci, c in enumerate(cells):
            dst = slice(ci * n, (ci + 1) * n)
            if pre:
                out[dst, :len(pre)] = s.corrupt_cache["logits"][:, pre]
            if rel:
                j = order[id(c)]
                out[dst, len(pre):] = lg[j * n:(j + 1) * n]
        return out


def _run_cells_splitting(tracer: _FastTracer, setup: TraceSetup, spec: TraceSpec, t: int, seg0: int, batch: list,
                         base) -> list[tuple]:
    """(cell, metrics) for a batch of cells; on a GPU out of memory the batch is split in halves and retried, so a
    shared GPU under pressure slows a trace down instead of failing it. A single cell that does not fit is an error."""
    try:
        logits = tracer.run_cells(spec, t, seg0, batch, base)
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch) == 1:
            raise InputError("the GPU ran out of memory even for one traced cell: use a shorter prompt, fewer "
                             "noise samples or bf16 weights") from None
        half = len(batch) // 2
        return (_run_cells_splitting(tracer, setup, spec, t, seg0, batch[:half], base)
                + _run_cells_splitting(tracer, setup, spec, t, seg0, batch[half:], base))
    return list(zip(batch, setup.metrics_from_logits(logits, setup.n)))


def _cells_per_batch(tracer: _FastTracer, Tseg: int, L: int) -> int:
    return max(1, min(L, tracer.budget // max(1, tracer.per_row(Tseg) * tracer.n)))


@torch.no_grad()
def trace_grids(setup: TraceSetup, specs: Sequence[TraceSpec], *, metric: str = "prob", method: str = "fast",
                progress: Optional[ProgressFn] = None, should_stop: StopFn = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, skip_unaffected: bool = True,
                tokens: Optional[Sequence[int]] = None) -> list[TraceResult]:
    """Every (token, layer) cell of each spec, or the cells of the rows `tokens` only (prompt positions; the other
    rows stay NaN, the result is still `complete`, and `settings["tokens"]` lists the rows computed; None: every
    row); one TraceResult per spec, sharing the cached runs.

    method "fast" (batched, prefix reuse) or "reference" (one full forward pass per cell, ROME style).
    progress(done, total) is called after every batch (cells); should_stop is checked between batches.
    memory_budget: bytes of activations per fast batch. skip_unaffected: cells at tokens before the subject are
    the corrupted run exactly (nothing differs before the subject) and are filled without a forward pass.
    With `tokens` the fast path still advances both runs' states through every token up to the last row (one
    token step per layer, cheap) but runs cells only at the rows listed: the cost is that of those rows.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if method not in ("fast", "reference"):
        raise InputError(f"unknown method {method!r}; expected 'fast' or 'reference'")
    L, T = setup.model.cfg.n_layer, setup.T
    specs = [sp.check(L) for sp in specs]
    subset = check_tokens(tokens, T)
    rows = list(range(T)) if subset is None else subset
    stop = _stop_check(should_stop)
    grids = [_empty_grids(T, L) for _ in specs]
    total, done = len(specs) * len(rows) * L, 0
    start = time.perf_counter()
    stopped = False
    s0 = setup.subject[0]

    def report(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)

    if method == "fast":
        tracer = _FastTracer(setup, memory_budget)
        for t in rows:
            if stopped:
                break
            for si, spec in enumerate(specs):
                if stop():
                    stopped = True
                    break
                if skip_unaffected and t < s0:
                    for l in range(L):
                        _fill(grids[si], t, l, setup.corrupt)
                    report(L)
                    continue
                seg0, cells = tracer.cells(spec, t)
                if seg0 >= setup.S:  # a state restore after the last token changes nothing
                    for l in range(L):
                        _fill(grids[si], t, l, setup.corrupt)
                    report(L)
                    continue
                base = tracer.corrupt_states_after(seg0 - 1)
                per = _cells_per_batch(tracer, setup.S - seg0, L)
                for b in range(0, L, per):
                    if b > 0 and stop():
                        stopped = True
                        break
                    batch = cells[b:b + per]
                    for c, m in _run_cells_splitting(tracer, setup, spec, t, seg0, batch, base):
                        _fill(grids[si], t, c.layer, m)
                    report(len(batch))
                if stopped:
                    break
    else:
        for si, spec in enumerate(specs):
            for t in rows:
                for l in range(L):
                    if stop():
                        stopped = True
                        break
                    _fill(grids[si], t, l, reference_cell(setup, spec, t, l))
                    report(1)
                if stopped:
                    break
            if stopped:
                break
    seconds = time.perf_counter() - start
    return [_finish(setup, sp, g, metric, not stopped, seconds, method, subset) for sp, g in zip(specs, grids)]


def trace(model, tokenizer: Tokenizer, prompt: str, subject: Optional[str], answer, *, kind: str = "block",
          mode: str = "both", window: int = 10, restore_v_first: bool = True, metric: str = "prob",
          method: str = "fast", progress: Optional[ProgressFn] = None, should_stop: StopFn = None,
          memory_budget: int = DEFAULT_MEMORY_BUDGET, tokens: Optional[Sequence[int]] = None,
          **prepare_kwargs) -> TraceResult:
    """One grid in one call: `prepare_trace(...)` then `trace_grids` for one spec (the rows `tokens` only, if
    given)."""
    setup = prepare_trace(model, tokenizer, prompt, subject, answer, memory_budget=memory_budget, **prepare_kwargs)
    spec = TraceSpec(kind, mode, window, restore_v_first)
    return trace_grids(setup, [spec], metric=metric, method=method, progress=progress, should_stop=should_stop,
                       memory_budget=memory_budget, tokens=tokens)[0]
