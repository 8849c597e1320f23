"""Layer ablation (noising): the clean run with one layer's time-mix, channel-mix or whole-block output replaced
(zero, the mean over a reference text, the corrupted run's value) or its state reset at one token; the change of
every metric at the answer, per layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from rwkv_core.analysis.tracing.results import METRICS
from rwkv_core.analysis.tracing.setup import DEFAULT_MEMORY_BUDGET, TraceSetup, row_token_bytes
from rwkv_core.errors import InputError

ABLATION_TARGETS = ("block", "att", "ffn", "state")
ABLATION_REPLACEMENTS = ("zero", "mean", "corrupt", "clean")


@dataclass
class AblationResult:
    """Change of every metric at the answer when layer l is ablated in the clean run: delta[m] [L] =
    ablated[m] - clean[m]."""

    target: str
    replacement: str
    ablated: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]
    clean: dict[str, float]
    positions: list[int]
    reset_token: Optional[int]
    answer_label: str


@torch.no_grad()
def reference_means(model, reference_tokens: Sequence[int], states: bool = False) -> dict[str, torch.Tensor]:
    """Means over the tokens of a reference text (run from the zero state), accumulated on the fly: att/ffn outputs
    and the whole block's contribution (resid_post - resid_pre), [L, C]; with `states`, also of the states after
    every token (att_shift, wkv, ffn_shift per layer)."""
    ids = [int(i) for i in reference_tokens]
    if not ids:
        raise InputError("the reference text for mean ablation has no tokens")
    L = model.cfg.n_layer
    sums: dict[tuple[str, int], torch.Tensor] = {}

    def add(key: str, l: int, value: torch.Tensor) -> None:
        sums[(key, l)] = sums[(key, l)] + value if (key, l) in sums else value.clone()

    hooks = []
    for l in range(L):
        b = f"blocks.{l}."
        hooks += [(b + "att.hook_out", lambda x, h, l=l: add("att", l, x[0].sum(0))),
                  (b + "ffn.hook_out", lambda x, h, l=l: add("ffn", l, x[0].sum(0))),
                  (b + "hook_resid_pre", lambda x, h, l=l: add("pre", l, x[0].sum(0))),
                  (b + "hook_resid_post", lambda x, h, l=l: add("post", l, x[0].sum(0)))]
        if states:
            hooks += [(b + "att.hook_shift", lambda x, h, l=l: add("att_shift", l, x[0])),
                      (b + "att.hook_state", lambda x, h, l=l: add("wkv", l, x[0])),
                      (b + "ffn.hook_shift", lambda x, h, l=l: add("ffn_shift", l, x[0]))]
    with model.hooks(hooks):
        model(ids, state_positions=range(len(ids)) if states else (), logits="none")
    n = len(ids)
    mean = lambda key: torch.stack([sums[(key, l)] for l in range(L)]) / n
    out = {"att": mean("att"), "ffn": mean("ffn"), "block": mean("post") - mean("pre")}
    if states:
        out.update({k: mean(k) for k in ("att_shift", "wkv", "ffn_shift")})
    return out


@torch.no_grad()
def ablate_layers(setup: TraceSetup, target: str = "block", replacement: str = "zero", *,
                  reference_tokens: Optional[Sequence[int]] = None, positions: Optional[Sequence[int]] = None,
                  reset_token: Optional[int] = None, reset_shift: bool = False, method: str = "fast",
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> AblationResult:
    """Noising: the clean run with layer l ablated, for every layer l.

    target "att" / "ffn" / "block": replace that output (for "block" the block's whole contribution
    resid_post - resid_pre, i.e. time-mix + channel-mix + any constant residual bias) at `positions` (default: every
    token of the sequence, answer tokens included) by "zero", "mean" (over `reference_tokens`, run from the zero
    state), "corrupt" (the corrupted run's value, one row per noise sample) or "clean" (the clean value itself: a
    sanity check, the change is 0). target "state": layer l's state after `reset_token` (default: the subject's
    last token) replaced: "zero" resets the WKV state (zero; v4 the empty state aa = bb = 0, pp = -1e30), and also
    the token-shift states when `reset_shift`; "mean"/"corrupt"/"clean" use that value instead.
    method "fast": all layers in one batch (rows grouped by layer, within the memory budget); "reference": one pass
    per layer.
    """
    if target not in ABLATION_TARGETS:
        raise InputError(f"unknown ablation target {target!r}; expected one of {', '.join(ABLATION_TARGETS)}")
    if replacement not in ABLATION_REPLACEMENTS:
        raise InputError(f"unknown replacement {replacement!r}; expected one of {', '.join(ABLATION_REPLACEMENTS)}")
    model = setup.model
    cfg = model.cfg
    L, S = cfg.n_layer, setup.S
    means = None
    if replacement == "mean":
        if reference_tokens is None:
            raise InputError("mean ablation needs a reference text (its token ids)")
        means = reference_means(model, reference_tokens, states=target == "state")
    pos = list(range(S)) if positions is None else sorted({int(p) for p in positions})
    if not pos or pos[0] < 0 or pos[-1] >= S:
        raise InputError(f"ablation positions must lie in 0..{S - 1}")
    rt = setup.subject[1] - 1 if reset_token is None else int(reset_token)
    if target == "state" and not 0 <= rt < setup.T:
        raise InputError(f"the reset token must be a prompt token 0..{setup.T - 1}")
    g = setup.n if replacement == "corrupt" else 1  # rows per layer
    pidx = torch.tensor(pos, device=model.device)
    run_of = "corrupt" if replacement == "corrupt" else "clean"  # the run whose values replace ("clean", "corrupt")
    # states after the reset token of every layer, advanced from the cached run (the caches keep no states)
    run_states = (setup.walk(run_of).states_after(rt)
                  if target == "state" and replacement in ("corrupt", "clean") else None)

    def seq_value(l: int) -> torch.Tensor:
        """Replacement of the sequence target at layer l: [g, len(pos), C] or broadcastable."""
        if replacement == "zero":
            return torch.zeros(1, 1, cfg.n_embd, device=model.device)
        if replacement == "mean":
            return means[target][l].view(1, 1, -1)
        if target in ("att", "ffn"):  # layer l run again on the cached input: [g, S, C]
            return setup.layer_values(run_of, l)[f"{target}_out"][:, pidx]
        resid = setup.run_inputs(run_of)[0]  # [L+1, g, S, C]
        return resid[l + 1][:, pidx] - resid[l][:, pidx]

    def state_value(l: int) -> tuple:
        if replacement == "zero":
            z = model.zero_state(1)
            return (z.att_shift[l] if reset_shift else None, z.wkv[l], z.ffn_shift[l] if reset_shift else None)
        if replacement == "mean":
            return means["att_shift"][l][None], means["wkv"][l][None], means["ffn_shift"][l][None]
        return run_states[l]  # "clean" [1, ...] or "corrupt" [n, ...]

    def run(layers: list[int]) -> list[dict[str, float]]:
        k = len(layers)
        tokens = setup.seq[None].expand(k * g, -1)
        hooks = []
        for j, l in enumerate(layers):
            rows = slice(j * g, (j + 1) * g)
            if target in ("att", "ffn"):
                val = seq_value(l)

                def put(x, hook, rows=rows, val=val):
                    x = x.clone()
                    x[rows, pidx] = val.expand(g, len(pos), -1).to(x.dtype)
                    return x

                hooks.append((f"blocks.{l}.{target}.hook_out", put))
            elif target == "block":
                val = seq_value(l)
                pre = {}
                hooks.append((f"blocks.{l}.hook_resid_pre", lambda x, h, pre=pre: pre.__setitem__("x", x)))

                def put_block(x, hook, rows=rows, val=val, pre=pre):
                    x = x.clone()
                    x[rows, pidx] = pre["x"][rows][:, pidx] + val.expand(g, len(pos), -1)
                    return x

                hooks.append((f"blocks.{l}.hook_resid_post", put_block))
            else:
                vals = state_value(l)
                for name, v in zip(("att.hook_shift", "att.hook_state", "ffn.hook_shift"), vals):
                    if v is None:
                        continue

                    def put_state(x, hook, rows=rows, v=v):
                        if hook.pos != rt:
                            return None
                        x = x.clone()
                        x[rows] = v.expand(g, *x.shape[1:])
                        return x

                    hooks.append((f"blocks.{l}.{name}", put_state))
        final = {}
        hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, h: final.__setitem__("x", x)))
        with model.hooks(hooks):
            model(tokens, state_positions=(rt,) if target == "state" else (), logits="none")
        return setup.metrics_from_logits(model.unembed(final["x"][:, setup.answer_positions]), g)

    results: list[dict[str, float]] = []
    if method == "reference":
        for l in range(L):
            results += run([l])
    else:
        per_row = S * row_token_bytes(cfg)
        per = max(1, min(L, memory_budget // max(1, per_row * g)))
        for b in range(0, L, per):
            results += run(list(range(b, min(L, b + per))))
    metrics = [m for m in METRICS if m != "recovery"]
    ablated = {m: np.array([r[m] for r in results]) for m in metrics}
    delta = {m: ablated[m] - setup.clean[m] for m in metrics}
    return AblationResult(target, replacement, ablated, delta, {m: setup.clean[m] for m in metrics}, pos,
                          rt if target == "state" else None, setup.answer_text)
