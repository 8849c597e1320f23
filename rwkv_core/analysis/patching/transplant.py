"""Moving memory between prompts, the RNN's own experiment: run prompt B from the state prompt A left (every
layer, chosen layers, or the WKV state of chosen heads) instead of the empty state, and add alpha x (state_A -
state_B) to the state of a third prompt C after one of its tokens (steering, as activation addition on the
state: Paulo, Marshall & Belrose 2024). Each shows how the next-token predictions change at every position.

A state is every layer's (att_shift [C], WKV state, ffn_shift [C]): `RWKVState`. Transplanting every layer is
exactly running A then B as one prompt (the tests check it to 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from rwkv_core.errors import InputError
from rwkv_core.model.rwkv import RWKVState

TOP_K = 10


@dataclass
class StateEditResult:
    """Next-token predictions of a prompt as it runs normally ("base") and with its state edited ("edited").

    kl [T]: KL(edited || base) of the next-token distributions at every position (nats; 0 where nothing
    changed); top_*_ids / top_*_p [T, K]: the K most likely next tokens and their probabilities; logp_* [V] at the
    last position; `start`: the first position the edit can reach."""

    tokens: list[int]
    labels: list[str]
    kl: np.ndarray
    top_base_ids: np.ndarray
    top_base_p: np.ndarray
    top_edit_ids: np.ndarray
    top_edit_p: np.ndarray
    logp_base_last: np.ndarray
    logp_edit_last: np.ndarray
    start: int
    settings: dict

    def changes_csv(self, tokenizer) -> str:
        """One row per position: token, KL, top base / edited prediction with probabilities."""
        rows = ["position,token,kl,base_top,base_p,edited_top,edited_p"]
        q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
        for t, lab in enumerate(self.labels):
            rows.append(f"{t},{q(lab)},{self.kl[t]!r},{q(tokenizer.display(int(self.top_base_ids[t, 0])))},"
                        f"{self.top_base_p[t, 0]!r},{q(tokenizer.display(int(self.top_edit_ids[t, 0])))},"
                        f"{self.top_edit_p[t, 0]!r}")
        return "\n".join(rows) + "\n"


def _ids(tokens) -> list[int]:
    ids = [int(i) for i in (tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)]
    if not ids:
        raise InputError("a prompt for the state experiments is empty: give at least one token")
    return ids


def final_state(model, tokens) -> RWKVState:
    """The state a prompt leaves after its last token (batch 1)."""
    with torch.no_grad():
        _, state = model(torch.tensor([_ids(tokens)], device=model.device), logits="none")
    return state


def check_layers_heads(model, layers: Optional[Sequence[int]], heads: Optional[Sequence[int]]) -> tuple[list, list]:
    """The chosen layers (default all) and heads (default none: the whole state), each in range."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    layers = list(range(L)) if layers is None else sorted({int(l) for l in layers})
    if not layers or any(not 0 <= l < L for l in layers):
        raise InputError(f"layers must be between 0 and {L - 1} (this model has {L}), at least one")
    heads = [] if heads is None else sorted({int(h) for h in heads})
    if heads and model.cfg.version == "4":
        raise InputError("RWKV-4 has no heads (its WKV state is per channel): choose layers instead")
    if any(not 0 <= h < H for h in heads):
        raise InputError(f"heads must be between 0 and {H - 1} (this model has {H} per layer)")
    return layers, heads


def mix_states(dst: RWKVState, src: RWKVState, layers: Sequence[int], heads: Sequence[int], alpha: float = 1.0,
               add: bool = False) -> RWKVState:
    """dst with the chosen layers (and, given heads, only those heads' WKV state) taken from src (add=False:
    replaced; add=True: dst + alpha x src, src being a difference of states). Returns a new state."""
    out = dst.clone()
    for l in layers:
        parts = [("wkv", (l, slice(None), heads))] if heads else [
            ("att_shift", (l,)), ("wkv", (l,)), ("ffn_shift", (l,))]
        for name, idx in parts:
            t, s = getattr(out, name), getattr(src, name)
            t[idx] = t[idx] + alpha * s[idx] if add else s[idx]
    return out


def _predictions(model, tokenizer, ids: list[int], logits_base: torch.Tensor, logits_edit: torch.Tensor,
                 start: int, settings: dict) -> StateEditResult:
    lb, le = torch.log_softmax(logits_base.double(), -1), torch.log_softmax(logits_edit.double(), -1)  # [T, V]
    kl = (le.exp() * (le - lb)).sum(-1).clamp(min=0.0)
    tb, te = lb.topk(TOP_K, -1), le.topk(TOP_K, -1)
    return StateEditResult(ids, [tokenizer.display(i) for i in ids], kl.cpu().numpy(), tb.indices.cpu().numpy(),
                           tb.values.exp().cpu().numpy(), te.indices.cpu().numpy(), te.values.exp().cpu().numpy(),
                           lb[-1].cpu().numpy(), le[-1].cpu().numpy(), start, settings)


@torch.no_grad()
def transplant(model, tokenizer, tokens_a, tokens_b, *, layers: Optional[Sequence[int]] = None,
               heads: Optional[Sequence[int]] = None) -> StateEditResult:
    """Prompt B run from the state prompt A left in the chosen layers (or heads), the rest from the empty state,
    against B run alone."""
    a, b = _ids(tokens_a), _ids(tokens_b)
    layers, heads = check_layers_heads(model, layers, heads)
    dev = model.device
    start = mix_states(model.zero_state(1), final_state(model, a), layers, heads)
    tb = torch.tensor([b], device=dev)
    base, _ = model(tb)
    edit, _ = model(tb, start)
    settings = {"experiment": "transplant", "layers": layers, "heads": heads, "tokens_a": a}
    return _predictions(model, tokenizer, b, base[0], edit[0], 0, settings)


@torch.no_grad()
def steer(model, tokenizer, tokens_c, position: int, alpha: float, tokens_a, tokens_b, *,
          layers: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None) -> StateEditResult:
    """Prompt C with alpha x (state_A - state_B) added to its state after token `position` (the states A and B
    left after their last tokens), in the chosen layers (or heads), against C run alone; the edit reaches the
    predictions from position + 1 on."""
    c = _ids(tokens_c)
    if not 0 <= position < len(c):
        raise InputError(f"the steering position must be a token of the prompt: 0 to {len(c) - 1}, not {position}")
    layers, heads = check_layers_heads(model, layers, heads)
    sa, sb = final_state(model, tokens_a), final_state(model, tokens_b)
    diff = RWKVState(sa.att_shift - sb.att_shift, sa.wkv - sb.wkv, sa.ffn_shift - sb.ffn_shift)
    delta = mix_states(RWKVState(*(torch.zeros_like(x) for x in (diff.att_shift, diff.wkv, diff.ffn_shift))), diff,
                       layers, heads)  # the difference in the chosen places, zero elsewhere
    parts = {"att.hook_shift": delta.att_shift, "att.hook_state": delta.wkv, "ffn.hook_shift": delta.ffn_shift}
    hooks = []
    for l in range(model.cfg.n_layer):
        for name, d in parts.items():
            hooks.append((f"blocks.{l}.{name}", lambda x, h, d=d[l]: x + alpha * d if h.pos == position else None))
    tc = torch.tensor([c], device=model.device)
    base, _ = model(tc)
    with model.hooks(hooks):
        edit, _ = model(tc, state_positions=[position])
    settings = {"experiment": "steer", "position": position, "alpha": float(alpha), "layers": layers,
                "heads": heads, "tokens_a": _ids(tokens_a), "tokens_b": _ids(tokens_b)}
    return _predictions(model, tokenizer, c, base[0], edit[0], position + 1, settings)
