"""Attribution patching (AtP): a first-order estimate of every patching cell at once,
  metric(patched) ~ metric(corrupted) + grad(metric at the corrupted run) . (clean value - corrupted value),
from one forward pass of each run and one backward pass of the corrupted one (Nanda 2023; Syed, Rager & Conmy
2023; Kramar et al. 2024, AtP*).

Activation sites (residual stream, time-mix and channel-mix outputs, v7's v_first) take their gradients from
that one backward pass. The recurrent state of layer l after token p is not a tensor of the sequence-mode
forward (the chunked kernel never forms it per token), so each layer is run once more on its cached corrupted
input, one token at a time, with the state after every token perturbed by alpha_p x (clean state - corrupted
state), alpha_p = 0: the backward of sum_q g_q . y_q (g_q = dmetric/d(block output at q) from the
first backward; plus v_first's gradient for v7's layer 0, whose value every layer reads) gives dmetric/dalpha_p,
the state cell's estimate, exactly to first order, since the block's outputs are all that the state reaches.

`atp_grids` does this for two prompts (`PatchPair`; metric LD); `atp_trace` for a causal trace's noise or subject
replacement (`TraceSetup`; the trace's recovery metric, samples averaged as the exact trace does), every restore
mode and window kind of the tracing page, as `TraceResult`s the page draws like exact ones. The backward keeps
every row's activations (n noise rows x S tokens x L layers), so `atp_trace` runs the rows in groups that fit a
memory budget (`atp_row_bytes`, `atp_group_rows`): the metric is a mean over the rows, and each group's backward of
its share gives that group's part of every cell's estimate, summed group by group.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from rwkv_core.analysis.patching.pair import PatchPair, block_states_after_every_token, check_sites
from rwkv_core.analysis.patching.results import PatchResult
from rwkv_core.analysis.tracing.results import TraceResult, TraceSpec, _empty_grids, _finish
from rwkv_core.analysis.tracing.setup import (DEFAULT_MEMORY_BUDGET, TraceSetup, _noise_hook, _row_metrics,
                                              row_token_bytes, run_block, state_bytes, window_layers,
                                              zero_layer_states)

def corrupted_gradients(model, tokens: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor],
                        pre_hooks: Sequence = (), record: Sequence[str] = ("att_out", "ffn_out")
                        ) -> dict[str, torch.Tensor]:
    """One forward of tokens [B, S] with gradients and one backward of metric(last block output [B, S, C]).

    Returns the activations and their gradients, detached: "resid" [L, B, S, C] (block outputs), and those of
    `record` ("att_out", "ffn_out" [L, B, S, C]; fewer keys keep less memory), with "g_" in front for the
    gradients, and for v7 "v_first" [B, S, C] with "g_v_first" [L, B, S, C]: the gradient of the reads of v_first
    in layers l.. (layer l reads a copy and passes it on; zero in layer 0, whose own value v_first is: its uses
    inside layer 0 are not in these). `pre_hooks` (e.g. the noise) run before the recording ones."""
    L, v7 = model.cfg.n_layer, model.cfg.version == "7"
    kinds = ["resid"] + [k for k in ("att_out", "ffn_out") if k in record]
    keep: dict[str, list] = {"resid": [None] * L, "att_out": [None] * L, "ffn_out": [None] * L, "v_first": [None] * L}

    def keep_grad(k: str, l: int, copy: bool = False):
        def fn(x, hook):
            if copy:  # a tensor of its own: its gradient is that of the reads in this layer and the ones above
                x = x.clone()
            x.retain_grad()
            keep[k][l] = x
            return x if copy else None
        return fn


    hooks = [("hook_embed", lambda x, h: x.detach().requires_grad_())] + list(pre_hooks)
    for l in range(L):
        hooks.append((f"blocks.{l}.hook_resid_post", keep_grad("resid", l)))
        hooks += [(f"blocks.{l}.{k[:3]}.hook_out", keep_grad(k, l)) for k in kinds[1:]]
        if v7 and l > 0:
            hooks.append((f"blocks.{l}.att.hook_v_first", keep_grad("v_first", l, copy=True)))
    with torch.enable_grad(), model.hooks(hooks):
        model(tokens, logits="none")
        metric(keep["resid"][L - 1]).backward()
    out = {}
    for k in kinds:  # each key's per-layer tensors go as soon as they are stacked
        out[k] = torch.stack([x.detach() for x in keep[k]])
        out["g_" + k] = torch.stack([x.grad for x in keep[k]])
        keep[k] = []
    if v7 and L > 1:
        out["v_first"] = keep["v_first"][1].detach()
        z = torch.zeros_like(out["v_first"])
        out["g_v_first"] = torch.stack([z] + [keep["v_first"][l].grad for l in range(1, L)])
    return out


def state_attribution(model, l: int, x: torch.Tensor, vf: Optional[torch.Tensor], g_out: torch.Tensor,
                      g_vf: Optional[torch.Tensor], clean_states: Sequence[Optional[tuple]]) -> np.ndarray:
    """dmetric/dalpha_p for every token p of block l's state patch state_p + alpha_p (clean_p - state_p), [S].

    x [B, S, C]: block l's corrupted input (block 0's after ln0); vf [B, S, C] v7's v_first for l > 0; g_out
    [B, S, C] the metric's gradient at the block's output; g_vf [B, S, C] at v_first (v7 layer 0, else None);
    clean_states[p]: (att_shift, wkv, ffn_shift) to patch towards after token p (batch 1 or B), None: no patch.
    The block runs one token at a time from the explicit state (no state hook: a hook that replaced the state
    after every token would cut the model's blocks of tokens at every token), so every state is in the graph.
    """
    S = x.shape[1]
    alpha = torch.zeros(S, dtype=torch.float32, device=x.device, requires_grad=True)
    state = zero_layer_states(model, x.shape[0])[l]
    with torch.enable_grad():
        f = x.new_zeros(())
        for p in range(S):
            y, state, vf_out = run_block(model, l, x[:, p:p + 1], state,
                                         vf[:, p:p + 1] if vf is not None else None)
            f = f + (y * g_out[:, p:p + 1]).sum()
            if g_vf is not None and l == 0:
                f = f + (vf_out * g_vf[:, p:p + 1]).sum()
            target = clean_states[p]
            if target is not None:
                state = tuple(s + alpha[p] * (c - s.detach()) for s, c in zip(state, target))
        f.backward()
    return alpha.grad.double().cpu().numpy()


def _dot(g: torch.Tensor, d: torch.Tensor) -> np.ndarray:
    return (g.double() * d.double()).sum(-1).cpu().numpy()


def atp_grids(pair: PatchPair, sites=("resid", "att", "ffn", "state")) -> PatchResult:
    """Attribution patching of every (clean token, layer) cell of each site of a pair: raw[site][t, l] =
    LD_corrupt + grad . (clean - corrupted) (see the module docstring), as a PatchResult with method "atp"."""
    sites = check_sites(sites)
    start = time.perf_counter()
    model = pair.model
    L, Tc = model.cfg.n_layer, pair.Tc
    tokens = torch.tensor([pair.corrupt_ids], device=model.device)
    g = corrupted_gradients(model, tokens, lambda x: pair.metric(x[0, -1]))
    ts, ps = zip(*pair.alignment.pairs())
    ts, ps = list(ts), list(ps)
    raw = {s: np.full((Tc, L), np.nan) for s in sites}
    cc = pair.clean_cache
    clean_of = {"resid": cc["resid"][1:], "att": cc["att_out"], "ffn": cc["ffn_out"]}  # [L, Tc, C]
    for s in sites:
        if s == "state":
            continue
        k = "resid" if s == "resid" else f"{s}_out"
        diff = clean_of[s][:, ts] - g[k][:, 0, ps]  # [L, n, C]
        raw[s][ts] = pair.corrupt_value + _dot(g["g_" + k][:, 0, ps], diff).T
    if "state" in sites:
        rc = pair.corrupt_cache
        r2c = pair.alignment.corrupt_to_clean()
        g_vf = g["g_v_first"][1] if "g_v_first" in g else None  # the reads of v_first in layers 1..
        for l in range(L):
            clean_states = pair.layer_states("clean", l)
            targets = [clean_states[t] if t >= 0 else None for t in r2c]
            vf = rc["v_first"][None] if ("v_first" in rc and l > 0) else None
            d = state_attribution(model, l, rc["resid"][l][None], vf, g["g_resid"][l], g_vf, targets)
            raw["state"][ts, l] = pair.corrupt_value + d[ps]
    settings = {**pair.settings(), "sites": list(sites)}
    return PatchResult(raw, pair.clean_value, pair.corrupt_value, "atp", pair.token_labels("clean"),
                       pair.token_labels("corrupt"), settings, True, time.perf_counter() - start, list(pair.warnings))


# ------------------------------------------------------------------------------------------------ causal tracing


def trace_metric(setup: TraceSetup, base: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trace's metric `base` as a differentiable function of a group of the corrupted rows' last block output
    [g, S, C] (g of the n samples): the group's share, whose gradient is the group's part of the gradient of the
    metric over all n samples, so that groups of rows run one after another add up to one run of all rows.

    prob, first_prob and logit_diff are means over the samples (as the exact trace aggregates them): the share is
    the group's sum / n, exact. logprob = log(mean p) is not a sum over rows; its gradient is, by the chain rule,
    d log(mean p) = d(sum of the group's p) / (n mean p), with mean p that of the corrupted run (the setup's, the
    same rows and noise): the share is sum exp(logP_i - logprob) / n (its gradient is exact; its value is not the
    metric). All n rows at once: log(mean p) itself."""
    ans = torch.tensor(setup.answer_ids, device=setup.model.device)
    n = setup.n
    log_mean_p = setup.corrupt.get("logprob", 0.0)

    def metric(x: torch.Tensor) -> torch.Tensor:
        rows = _row_metrics(setup.model.unembed(x[:, setup.answer_positions]), ans, setup.answer2_first)  # [g]
        if base == "prob":
            return torch.exp(rows["logP"]).sum() / n
        if base == "logprob":
            if x.shape[0] == n:
                return torch.logsumexp(rows["logP"], 0) - math.log(n)
            return torch.exp(rows["logP"] - log_mean_p).sum() / n
        if base == "first_prob":
            return torch.exp(rows["logp0"]).sum() / n
        return rows["ld"].sum() / n

    return metric


# measured at 12 x 768, S = 200, 1 and 3 rows (maxrss): forward and backward 409-536 MB a row against 368-383 MB
# of activations and recorded values; the state pass 1.39-1.66 MB a row and token (row_token_bytes + 6-7 states)
GRAPH_FACTOR = 1.4
STATE_COPIES = 8


def atp_row_bytes(cfg, S: int, kinds: Sequence[str] = ("block", "att", "ffn"), state: bool = True) -> tuple[int, int]:
    """Estimated bytes one corrupted row adds to `atp_trace`'s peak, (forward and backward, state pass), for a
    sequence of S tokens, the grids' `kinds` and with or without a state restore.

    Forward and backward: the activations the backward keeps (S tokens x L layers x `row_token_bytes`) and the
    recorded activations and gradients [L, S, C] (block outputs, and the time-mix / channel-mix outputs for att /
    ffn grids; v7 also v_first), x GRAPH_FACTOR as measured. State pass (one layer at a time, S one-token steps
    with gradients, every step's graph kept): one layer's activations and STATE_COPIES copies of its state per
    token (the state, its patch, the kernel's saved inputs and intermediates; measured 6-7)."""
    L, C = cfg.n_layer, cfg.n_embd
    recorded = 2 + 2 * sum(k in kinds for k in ("att", "ffn")) + 2 * (cfg.version == "7")
    main = int(GRAPH_FACTOR * (S * L * row_token_bytes(cfg) + recorded * L * S * C * 4))
    state_pass = S * (row_token_bytes(cfg) + STATE_COPIES * state_bytes(cfg)) if state else 0
    return main, state_pass


def atp_fixed_bytes(cfg, T: int, S: int, n: int, kinds: Sequence[str], state: bool) -> int:
    """Bytes `atp_trace` holds on top of the cached runs, whatever the groups: the clean time-mix / channel-mix
    outputs of att / ffn grids ([L, T, C] each) and, with a state restore, every row's gradient at the block
    outputs ([L, n, S, C], v7 also v_first's [n, S, C]: the state pass runs after all groups) and one layer's
    clean states after every token (S x `state_bytes`)."""
    L, C = cfg.n_layer, cfg.n_embd
    out = sum(k in kinds for k in ("att", "ffn")) * L * T * C * 4
    if state:
        out += (L + (cfg.version == "7")) * n * S * C * 4 + S * state_bytes(cfg)
    return out


def atp_group_rows(cfg, S: int, n: int, memory_budget: int, kinds: Sequence[str] = ("block", "att", "ffn"),
                   state: bool = True) -> tuple[int, int]:
    """Rows per group of the forward and backward, and of the state pass, that fit `memory_budget` bytes (at
    least one row, at most n)."""
    main, state_pass = atp_row_bytes(cfg, S, kinds, state)
    fit = lambda per: max(1, min(n, int(memory_budget // max(1, per))))  # noqa: E731
    return fit(main), (fit(state_pass) if state else n)


def _cell_sums(grad: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, T: int) -> np.ndarray:
    """sum over rows and channels of grad . (clean - corrupted) for every token t < T and layer, [T, L]; grad,
    corrupted [L, g, S, C], clean [L, 1, T, C] (or broadcastable). One layer at a time: the float64 temporaries are
    those of one layer."""
    L = grad.shape[0]
    out = np.zeros((T, L))
    for l in range(L):
        out[:, l] = _dot(grad[l, :, :T], clean[l] - corrupted[l, :, :T]).sum(0)  # [g, T] -> [T]
    return out


def atp_trace(setup: TraceSetup, specs: Sequence[TraceSpec], *, memory_budget: int = DEFAULT_MEMORY_BUDGET,
              group_rows: Optional[tuple[int, int]] = None) -> list[TraceResult]:
    """Attribution patching of causal-tracing grids (noise or subject replacement), one TraceResult per spec.

    The estimate of metric `setup.recovery_base()` (prob, or logit_diff with a second answer) is in
    grids[base] and "recovery"; the other metrics are NaN (a first-order estimate of one metric says nothing of
    the others). The restore of each spec as the exact trace does it: block "resid" (with v7's v_first above l when
    `restore_v_first`), "state", "both" (their sum, to first order), att/ffn windows (the sum over the window).

    The noise samples run in groups of rows whose activations fit `memory_budget` bytes (`atp_group_rows`;
    `group_rows` = (forward and backward, state pass) rows per group overrides it): each group's backward of its
    share of the metric (`trace_metric`: exact for every base, logprob by the chain rule) is that group's part of
    the gradient, and its per-cell sums add up to those of all rows at once (equal up to float rounding). The clean
    values and each layer's clean states are computed once, whatever the groups."""
    start = time.perf_counter()
    model = setup.model
    cfg = model.cfg
    L, T, n, S = cfg.n_layer, setup.T, setup.n, setup.S
    v7 = cfg.version == "7"
    specs = [sp.check(L) for sp in specs]
    base = setup.recovery_base()
    kinds = {sp.kind for sp in specs}
    want_state = any(sp.kind == "block" and sp.mode in ("state", "both") for sp in specs)
    main_rows, state_rows = group_rows or atp_group_rows(cfg, S, n, memory_budget, tuple(kinds), want_state)
    metric = trace_metric(setup, base)
    cc = setup.clean_cache
    clean = {"resid": cc["resid"][1:, None, :T]}  # [L, 1, T, C]
    for k in ("att", "ffn"):
        if k in kinds:
            clean[k] = torch.stack([setup.layer_values("clean", l)[f"{k}_out"][:, :T] for l in range(L)])
    per: dict[str, np.ndarray] = {k: np.zeros((T, L)) for k in clean}  # [T, L] per-layer estimates
    reads = np.zeros((T, L))  # v7: v_first at t restored in layers l.. (their reads)
    g_resid = torch.empty(L, n, S, cfg.n_embd, device=model.device) if want_state else None  # [L, n, S, C]
    g_vf = torch.empty(n, S, cfg.n_embd, device=model.device) if (want_state and v7 and L > 1) else None
    for r0 in range(0, n, main_rows):
        rows = slice(r0, min(n, r0 + main_rows))
        tokens = setup.corrupt_seq[None].expand(rows.stop - rows.start, -1)  # [g, S]
        noise = [h for h in [_noise_hook(setup, slice(None), rows)] if h]  # the group's own draws
        g = corrupted_gradients(model, tokens, metric, noise, [f"{k}_out" for k in ("att", "ffn") if k in kinds])
        per["resid"] += _cell_sums(g["g_resid"], clean["resid"], g["resid"], T)
        for k in ("att", "ffn"):
            if k in kinds:
                per[k] += _cell_sums(g[f"g_{k}_out"], clean[k], g[f"{k}_out"], T)
        if v7 and L > 1:
            dvf = cc["v_first"][None, :T] - g["v_first"][:, :T]  # [g, T, C]
            reads += np.stack([_dot(g["g_v_first"][l, :, :T], dvf).sum(0) for l in range(L)], 1)
            if g_vf is not None:
                g_vf[rows] = g["g_v_first"][1]  # the reads of v_first in layers 1..
        if g_resid is not None:
            g_resid[:, rows] = g["g_resid"]
        del g
    if v7 and L > 1:  # v_first at t restored in the layers above l: the reads of layers l + 1.., [T, L]
        per["v_first_above"] = np.concatenate([reads[:, 1:], np.zeros((T, 1))], 1)
    if want_state:
        per["state"] = np.zeros((T, L))
        rc = setup.corrupt_cache
        for l in range(L):  # the clean run's state of layer l after every prompt token (answer tokens: no cells)
            cs = block_states_after_every_token(model, l, cc["resid"][l][None],
                                                cc["v_first"][None] if (v7 and l > 0) else None)[:T] + [None] * (S - T)
            for r0 in range(0, n, state_rows):
                rows = slice(r0, min(n, r0 + state_rows))
                vf = rc["v_first"][rows] if (v7 and l > 0) else None
                gvf = g_vf[rows] if (l == 0 and g_vf is not None) else None
                per["state"][:, l] += state_attribution(model, l, rc["resid"][l][rows], vf, g_resid[l, rows], gvf,
                                                        cs)[:T]
            del cs
    out = []
    for sp in specs:
        if sp.kind == "block":
            est = np.zeros((T, L))
            if sp.mode in ("resid", "both"):
                est += per["resid"] + (per.get("v_first_above", 0.0) if sp.restore_v_first else 0.0)
            if sp.mode in ("state", "both"):
                est += per["state"]
        else:
            est = np.stack([per[sp.kind][:, list(window_layers(l, L, sp.window))].sum(1) for l in range(L)], 1)
        grids = _empty_grids(T, L)
        grids[base] = setup.corrupt[base] + est
        res = _finish(setup, sp, grids, base, True, time.perf_counter() - start, "atp")
        res.settings["atp_group_rows"] = [int(main_rows), int(state_rows)]
        out.append(res)
    return out
