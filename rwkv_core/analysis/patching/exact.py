"""Exact activation patching between two prompts: for every (clean token t, layer l) and site, the corrupted
prompt run again with clean token t's value of that site patched in at its aligned corrupted token p, and LD read.

Fast path (`patch_grids`, method "exact"): a patch at corrupted token p changes nothing before p and nothing in the
layers below the patched one, so each cell starts from the corrupted run's cached layer input and its state
after token p - 1 (advanced token by token, `RunWalk`) and runs only the layers that change over tokens p..end:
from l + 1 for the residual stream, from l for the time-mix / channel-mix output (the block's own hook patched at
p), from l over tokens p + 1.. from the clean state for the recurrent state. The L cells of one token run as one
batch, layer by layer, rows joining at their first layer (within a memory budget); tokens before the prompts'
first difference (the same tokens at the same aligned positions) are the corrupted run and are not computed. The
reference
(`reference_cell`) is one full forward pass of the corrupted prompt per cell with a hook; both agree to float32
rounding. `scale` patches corrupted + scale x (clean - corrupted) (1: the clean value itself), what the
finite-difference check of attribution patching uses.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from rwkv_core.analysis.patching.pair import SITE_HOOKS, PatchPair, check_sites
from rwkv_core.analysis.patching.results import PatchResult
from rwkv_core.analysis.tracing.setup import (DEFAULT_MEMORY_BUDGET, StopFn, _rep, _stop_check, row_token_bytes,
                                              run_block)

ProgressFn = Callable[[int, int], None]


def mix(corrupt: torch.Tensor, clean: torch.Tensor, scale: float) -> torch.Tensor:
    """corrupt + scale (clean - corrupt); the clean tensor itself at scale 1 (bit for bit)."""
    return clean if scale == 1.0 else torch.lerp(corrupt, clean, float(scale))


@dataclass
class _Row:
    """One cell's batch row: it joins at block `join` with input x [1, Tseg, C] (v7 v_first vf [1, Tseg, C])."""

    layer: int
    join: int
    x: torch.Tensor
    vf: Optional[torch.Tensor] = None
    state: Optional[tuple] = None  # block `join`'s state at the segment start (else the corrupted one)
    patch: Optional[tuple[str, torch.Tensor]] = None  # (hook in block `join`, value [C] at the segment's token 0)


def run_rows(model, rows: Sequence[_Row], base: list[tuple]) -> torch.Tensor:
    """Stream the rows up the layers from the corrupted states `base` (per layer, batch 1); returns the last
    block's output at the last token, [len(rows), C] in the rows' order."""
    L, v7 = model.cfg.n_layer, model.cfg.version == "7"
    by_join: dict[int, list[_Row]] = {}
    for r in rows:
        by_join.setdefault(r.join, []).append(r)
    x = vf = None
    order: list[_Row] = []
    for i in range(L + 1):
        joining = by_join.get(i, [])
        if joining:
            x = torch.cat(([x] if x is not None else []) + [r.x for r in joining], 0)
            if v7 and 0 < i < L:
                vf = torch.cat(([vf] if vf is not None else []) + [r.vf for r in joining], 0)
            order += joining
        if i == L or x is None:
            continue
        R = x.shape[0]
        if any(r.join == i and r.state is not None for r in order):
            st = [_rep(part, R).clone() for part in base[i]]
            for j, r in enumerate(order):
                if r.join == i and r.state is not None:
                    for part, val in zip(st, r.state):
                        part[j:j + 1] = val
        else:  # every row starts from the corrupted WKV state: shared, not copied
            st = [_rep(base[i][0], R), base[i][1], _rep(base[i][2], R)]
        hooks = []
        for j, r in enumerate(order):
            if r.join == i and r.patch is not None:
                def patch(o, h, j=j, val=r.patch[1]):
                    o = o.clone()
                    o[j, 0] = val
                    return o
                hooks.append((f"blocks.{i}.{r.patch[0]}", patch))
        x, _, vf = run_block(model, i, x, st, vf if i > 0 else None, hooks, need_state=False)
    pos = {id(r): j for j, r in enumerate(order)}
    return x[[pos[id(r)] for r in rows], -1]


def token_rows(pair: PatchPair, site: str, t: int, p: int, base: list[tuple], clean_states: Optional[list[tuple]],
               scale: float = 1.0) -> list[_Row]:
    """The L rows of clean token t (corrupted p) for one site; `base` the corrupted states at the segment start
    (after p - 1, or after p for "state"), `clean_states` the clean ones after t ("state")."""
    cc, rc = pair.clean_cache, pair.corrupt_cache
    L = pair.model.cfg.n_layer
    vfc = rc.get("v_first")
    seg0 = p + 1 if site == "state" else p
    vf_seg = vfc[None, seg0:] if vfc is not None else None
    rows = []
    for l in range(L):
        if site == "resid":
            top = mix(rc["resid"][l + 1, p], cc["resid"][l + 1, t], scale)[None, None]  # [1, 1, C]
            rows.append(_Row(l, l + 1, torch.cat([top, rc["resid"][l + 1, None, p + 1:]], 1), vf_seg))
        elif site == "state":
            st = tuple(mix(a, b, scale) for a, b in zip(base[l], clean_states[l]))
            rows.append(_Row(l, l, rc["resid"][l, None, seg0:], vf_seg, state=st))
        else:
            val = mix(rc[f"{site}_out"][l, p], cc[f"{site}_out"][l, t], scale)
            rows.append(_Row(l, l, rc["resid"][l, None, seg0:], vf_seg, patch=(SITE_HOOKS[site], val)))
    return rows


@torch.no_grad()
def reference_cell(pair: PatchPair, site: str, t: int, l: int, scale: float = 1.0) -> float:
    """One cell the slow, plainly correct way: a full forward pass of the corrupted prompt with a hook writing
    clean token t's value (from a separate forward of the clean prompt for the state) at corrupted token p."""
    model = pair.model
    p = pair.alignment.clean_to_corrupt[t]
    if p < 0:
        return float("nan")
    positions: tuple[int, ...] = ()
    if site == "state":
        names = [f"blocks.{l}.att.hook_shift", f"blocks.{l}.att.hook_state", f"blocks.{l}.ffn.hook_shift"]
        _, _, cache = model.run_with_cache(pair.clean_ids, names, state_positions=[t], device=None)
        clean = {n: cache[n][:, 0] for n in names}
        positions = (p,)

        def put_state(x, hook):
            return mix(x, clean[hook.name], scale) if hook.pos == p else None

        hooks = [(n, put_state) for n in names]
    else:
        src = pair.clean_cache["resid"][l + 1, t] if site == "resid" else pair.clean_cache[f"{site}_out"][l, t]

        def put(x, hook):
            x = x.clone()
            x[:, p] = mix(x[:, p], src, scale)
            return x

        hooks = [(f"blocks.{l}.{SITE_HOOKS[site]}", put)]
    with model.hooks(hooks):
        logits, _ = model(pair.corrupt_ids, state_positions=positions, logits="last")
    lg = logits[0, -1]
    return float(lg[pair.answer_id] - lg[pair.counter_id])


@torch.no_grad()
def patch_grids(pair: PatchPair, sites=("resid", "att", "ffn", "state"), *, method: str = "fast",
                tokens: Optional[Sequence[int]] = None, scale: float = 1.0, progress: Optional[ProgressFn] = None,
                should_stop: StopFn = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> PatchResult:
    """Exact patching of every (clean token, layer) cell of each site (or only the clean `tokens` given).

    method "fast" (prefix reuse, cells batched) or "reference" (one full forward per cell). progress(done, total)
    after every batch; should_stop checked between batches (the result then has complete=False and NaN left).
    """
    sites = check_sites(sites)
    if method not in ("fast", "reference"):
        from rwkv_core.errors import InputError
        raise InputError(f"unknown method {method!r}; expected 'fast' or 'reference'")
    model = pair.model
    L, Tc, Tr = model.cfg.n_layer, pair.Tc, pair.Tr
    raw = {s: np.full((Tc, L), np.nan) for s in sites}
    todo = [(t, p) for t, p in pair.alignment.pairs() if tokens is None or t in set(tokens)]
    stop = _stop_check(should_stop)
    total, done, stopped = len(todo) * L * len(sites), 0, False
    start = time.perf_counter()
    if method == "reference":
        for s in sites:
            for t, p in todo:
                if stop():
                    stopped = True
                    break
                for l in range(L):
                    raw[s][t, l] = reference_cell(pair, s, t, l, scale)
                done += L
                if progress:
                    progress(done, total)
    else:
        corrupt_walk = pair.walk("corrupt")
        clean_walk = pair.walk("clean") if "state" in sites else None
        rtb = row_token_bytes(model.cfg)
        ordered = [s for s in sites if s != "state"] + (["state"] if "state" in sites else [])
        same = pair.first_difference
        for t, p in todo:
            if stopped:
                break
            if t < same:  # the runs are the same up to here: every patch writes the corrupted value itself
                for s in ordered:
                    raw[s][t] = pair.corrupt_value
                done += L * len(ordered)
                if progress:
                    progress(done, total)
                continue
            for s in ordered:
                if stop():
                    stopped = True
                    break
                seg0 = p + 1 if s == "state" else p
                if seg0 >= Tr:  # a state after the last token reaches nothing
                    raw[s][t] = pair.corrupt_value
                else:
                    base = corrupt_walk.states_after(seg0 - 1)
                    clean_states = clean_walk.states_after(t) if s == "state" else None
                    rows = token_rows(pair, s, t, p, base, clean_states, scale)
                    per = max(1, memory_budget // max(1, (Tr - seg0) * rtb))
                    for b in range(0, L, per):
                        final = run_rows(model, rows[b:b + per], base)
                        raw[s][t, b:b + per] = pair.metric(final).double().cpu().numpy()
                done += L
                if progress:
                    progress(done, total)
    settings = {**pair.settings(), "sites": list(sites), "exact_method": method, "scale": scale,
                "tokens": None if tokens is None else [int(t) for t in tokens]}
    return PatchResult(raw, pair.clean_value, pair.corrupt_value, "exact", pair.token_labels("clean"),
                       pair.token_labels("corrupt"), settings, not stopped, time.perf_counter() - start,
                       list(pair.warnings))
