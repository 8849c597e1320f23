"""Causal tracing, the reference path: one cell the slow, plainly correct way (ROME style), against which the
fast path is checked."""
from __future__ import annotations

import torch

from rwkv_core.analysis.tracing.results import TraceSpec
from rwkv_core.analysis.tracing.setup import TraceSetup, _noise_hook, window_layers


@torch.no_grad()
def reference_cell(setup: TraceSetup, spec: TraceSpec, t: int, l: int) -> dict[str, float]:
    """One cell the slow, plainly correct way: a full forward pass of batch 1 + n (row 0 clean, rows 1..n
    corrupted) over the whole sequence, hooks copying row 0's restored values into the other rows."""
    model = setup.model
    L = model.cfg.n_layer
    n = setup.n
    tokens = torch.cat([setup.seq[None], setup.corrupt_seq[None].expand(n, -1)], 0)  # [1 + n, S]
    hooks = [h for h in [_noise_hook(setup, slice(1, None))] if h]

    def copy_seq(x, hook):
        x = x.clone()
        x[1:, t] = x[0, t]
        return x

    def copy_state(x, hook):
        if hook.pos != t:
            return None
        x = x.clone()
        x[1:] = x[0]
        return x

    positions: tuple[int, ...] = ()
    if spec.kind == "block":
        if spec.mode in ("state", "both"):
            positions = (t,)
            hooks += [(f"blocks.{l}.att.hook_shift", copy_state), (f"blocks.{l}.att.hook_state", copy_state),
                      (f"blocks.{l}.ffn.hook_shift", copy_state)]
        if spec.mode in ("resid", "both"):
            hooks.append((f"blocks.{l}.hook_resid_post", copy_seq))
            if spec.restore_v_first and model.cfg.version == "7":
                hooks += [(f"blocks.{j}.att.hook_v_first", copy_seq) for j in range(l + 1, L)]
    else:
        hooks += [(f"blocks.{j}.{spec.kind}.hook_out", copy_seq) for j in window_layers(l, L, spec.window)]
    final = {}
    hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, h: final.__setitem__("x", x)))
    with model.hooks(hooks):
        model(tokens, state_positions=positions, logits="none")
    logits = model.unembed(final["x"][1:, setup.answer_positions])
    return setup.metrics_from_logits(logits, n)[0]
