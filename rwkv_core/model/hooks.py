"""Hook points: identity modules that let callers read or replace a tensor inside the model.

A hook point is named after its place in the module tree (`blocks.3.att.hook_r`), as in TransformerLens. A hook
function is `fn(tensor, hook) -> tensor | None`: returning a tensor replaces the value the model goes on with.
State hook points (`blocks.{l}.att.hook_state`, ...) fire once per requested position, and `hook.pos` tells which
token the state follows; activation hook points fire once per forward with `hook.pos = None`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Optional[torch.Tensor]]


class HookPoint(nn.Module):
    """Identity unless hooks are attached; holds no parameters, so it never appears in a state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.pos: Optional[int] = None
        self._fns: list[HookFn] = []

    def add(self, fn: HookFn) -> None:
        self._fns.append(fn)

    def remove(self, fn: HookFn) -> None:
        if fn in self._fns:
            self._fns.remove(fn)

    @property
    def active(self) -> bool:
        return bool(self._fns)

    def forward(self, x: torch.Tensor, pos: Optional[int] = None) -> torch.Tensor:
        if not self._fns:
            return x
        self.pos = pos
        for fn in self._fns:
            out = fn(x, self)
            if out is not None:
                if out.shape != x.shape:
                    raise ValueError(f"hook on {self.name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
                x = out.to(dtype=x.dtype, device=x.device)
        self.pos = None
        return x


def name_hook_points(root: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint its module-tree name and return them by name."""
    points = {}
    for name, mod in root.named_modules():
        if isinstance(mod, HookPoint):
            mod.name = name
            points[name] = mod
    return points
