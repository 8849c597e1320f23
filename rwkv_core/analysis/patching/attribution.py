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
mode and window kind of the tracing page, as `TraceResult`s the page draws like exact ones.
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
from rwkv_core.analysis.tracing.setup import (TraceSetup, _noise_hook, _row_metrics, run_block, window_layers,
                                              zero_layer_states)

def corrupted_gradients(model, tokens: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor],
                        pre_hooks: Sequence = ()) -> dict[str, torch.Tensor]:
    """One forward of tokens [B, S] with gradients and one backward of metric(last block output [B, S, C]).

    Returns the activations and their gradients, detached: "resid" [L, B, S, C] (block outputs), "att_out",
    "ffn_out" [L, B, S, C] (with "g_" in front for the gradients), and for v7 "v_first" [B, S, C] with "g_v_first"
    [L, B, S, C]: the gradient of the reads of v_first in layers l.. (layer l reads a copy and passes it on; zero
    in layer 0, whose own value v_first is: its uses inside layer 0 are not in these). `pre_hooks` (e.g. the
    noise) run before the recording ones."""
    L, v7 = model.cfg.n_layer, model.cfg.version == "7"
    keep: dict[str, list] = {"resid": [None] * L, "att_out": [None] * L, "ffn_out": [None] * L, "v_first": [None] * L}

    def record(k: str, l: int, copy: bool = False):
        def fn(x, hook):
            if copy:  # a tensor of its own: its gradient is that of the reads in this layer and the ones above
                x = x.clone()
            x.retain_grad()
            keep[k][l] = x
            return x if copy else None
        return fn


    hooks = [("hook_embed", lambda x, h: x.detach().requires_grad_())] + list(pre_hooks)
    for l in range(L):
        hooks += [(f"blocks.{l}.hook_resid_post", record("resid", l)), (f"blocks.{l}.att.hook_out", record("att_out", l)),
                  (f"blocks.{l}.ffn.hook_out", record("ffn_out", l))]
        if v7 and l > 0:
            hooks.append((f"blocks.{l}.att.hook_v_first", record("v_first", l, copy=True)))
    with torch.enable_grad(), model.hooks(hooks):
        model(tokens, logits="none")
        metric(keep["resid"][L - 1]).backward()
    out = {}
    for k in ("resid", "att_out", "ffn_out"):
        out[k] = torch.stack([x.detach() for x in keep[k]])
        out["g_" + k] = torch.stack([x.grad for x in keep[k]])
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
    """The trace's metric `base` as a differentiable function of the corrupted rows' last block output
    [n, S, C], aggregated over the samples as the exact trace does (mean of probabilities)."""
    ans = torch.tensor(setup.answer_ids, device=setup.model.device)

    def metric(x: torch.Tensor) -> torch.Tensor:
        rows = _row_metrics(setup.model.unembed(x[:, setup.answer_positions]), ans, setup.answer2_first)
        n = x.shape[0]
        if base == "prob":
            return torch.exp(rows["logP"]).mean()
        if base == "logprob":
            return torch.logsumexp(rows["logP"], 0) - math.log(n)
        if base == "first_prob":
            return torch.exp(rows["logp0"]).mean()
        return rows["ld"].mean()

    return metric


def atp_trace(setup: TraceSetup, specs: Sequence[TraceSpec]) -> list[TraceResult]:
    """Attribution patching of causal-tracing grids (noise or subject replacement), one TraceResult per spec.

    The estimate of metric `setup.recovery_base()` (prob, or logit_diff with a second answer) is in
    grids[base] and "recovery"; the other metrics are NaN (a first-order estimate of one metric says nothing of
    the others). The restore of each spec as the exact trace does it: block "resid" (with v7's v_first above l when
    `restore_v_first`), "state", "both" (their sum, to first order), att/ffn windows (the sum over the window)."""
    start = time.perf_counter()
    model = setup.model
    L, T, n = model.cfg.n_layer, setup.T, setup.n
    v7 = model.cfg.version == "7"
    specs = [sp.check(L) for sp in specs]
    base = setup.recovery_base()
    tokens = setup.corrupt_seq[None].expand(n, -1)
    noise = [h for h in [_noise_hook(setup, slice(None))] if h]
    g = corrupted_gradients(model, tokens, trace_metric(setup, base), noise)
    cc = setup.clean_cache
    clean = {"resid": cc["resid"][1:, None, :T]}  # [L, 1, T, C]
    need = {sp.kind for sp in specs}
    for k in ("att", "ffn"):
        if k in need:
            clean[k] = torch.stack([setup.layer_values("clean", l)[f"{k}_out"][:, :T] for l in range(L)])
    per: dict[str, np.ndarray] = {}  # [T, L] per-layer estimates
    per["resid"] = _dot(g["g_resid"][:, :, :T], clean["resid"] - g["resid"][:, :, :T]).sum(1).T
    for k in ("att", "ffn"):
        if k in clean:
            per[k] = _dot(g[f"g_{k}_out"][:, :, :T], clean[k] - g[f"{k}_out"][:, :, :T]).sum(1).T
    if v7 and L > 1:  # v_first at t restored in the layers above l: the reads of layers l + 1.., [T, L]
        dvf = cc["v_first"][None, :T] - g["v_first"][:, :T]  # [n, T, C]
        reads = _dot(g["g_v_first"][:, :, :T], dvf[None]).sum(1).T  # [T, L]: layers l..
        per["v_first_above"] = np.concatenate([reads[:, 1:], np.zeros((T, 1))], 1)
    if any(sp.kind == "block" and sp.mode in ("state", "both") for sp in specs):
        per["state"] = np.zeros((T, L))
        rc, S = setup.corrupt_cache, setup.S
        for l in range(L):  # the clean run's state of layer l after every prompt token (answer tokens: no cells)
            cs = block_states_after_every_token(model, l, cc["resid"][l][None],
                                                cc["v_first"][None] if (v7 and l > 0) else None)[:T] + [None] * (S - T)
            vf = rc["v_first"] if (v7 and l > 0) else None
            gvf = g["g_v_first"][1] if (v7 and l == 0 and L > 1) else None
            per["state"][:, l] = state_attribution(model, l, rc["resid"][l], vf, g["g_resid"][l], gvf, cs)[:T]
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
        out.append(_finish(setup, sp, grids, base, True, time.perf_counter() - start, "atp"))
    return out
