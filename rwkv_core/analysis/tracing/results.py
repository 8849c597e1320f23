"""Causal tracing, the results: what one grid restores (`TraceSpec`) and one computed grid with its baselines and
settings (`TraceResult`, saved as .npz or CSV), and how the grids of cells are filled and finished (recovery)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from rwkv_core.analysis.tracing.setup import TraceSetup
from rwkv_core.errors import InputError

METRICS = ("prob", "logprob", "first_prob", "logit_diff", "recovery")
MODES = ("resid", "state", "both")
KINDS = ("block", "att", "ffn")


# ------------------------------------------------------------------------------------------------ result


@dataclass
class TraceResult:
    """One causal-tracing grid: every metric per (prompt token, layer), baselines and settings.

    grids[m] [T, L]; clean[m] / corrupt[m] baselines; `metric` the chosen one (`grid`); `subject` (start, end)
    token indices, end exclusive; `complete` False when stopped early (NaN in the cells not computed).
    settings["tokens"]: the rows computed of a subset trace (`trace_grids(..., tokens=...)`; the other rows NaN),
    None for every row (`traced_tokens`).
    """

    grids: dict[str, np.ndarray]
    clean: dict[str, float]
    corrupt: dict[str, float]
    metric: str
    tokens: list[int]
    token_labels: list[str]
    subject: tuple[int, int]
    answer_label: str
    kind: str
    mode: str
    window: int
    settings: dict
    complete: bool = True
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def grid(self) -> np.ndarray:
        return self.grids[self.metric]

    @property
    def clean_value(self) -> float:
        return self.clean[self.metric]

    @property
    def corrupt_value(self) -> float:
        return self.corrupt[self.metric]

    @property
    def traced_tokens(self) -> list[int]:
        """The rows computed: the subset's positions (settings["tokens"]), else every prompt token."""
        sub = self.settings.get("tokens")
        return list(range(len(self.tokens))) if sub is None else [int(t) for t in sub]

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def with_metric(self, metric: str) -> "TraceResult":
        if metric not in self.grids:
            raise InputError(f"unknown metric {metric!r}; expected one of {', '.join(self.grids)}")
        from dataclasses import replace
        return replace(self, metric=metric)

    def to_npz(self, path) -> None:
        """Keys: grid [T, L] (the chosen metric), clean, corrupt, metric, tokens [T], subject (2,), grid_<m> and
        clean_<m> / corrupt_<m> for every metric, token_labels, answer, kind, mode, window, complete, and
        settings (a JSON string)."""
        np.savez(path, **self.to_arrays())

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays of `to_npz`, each key prefixed (several grids in one file: "state/grid", ...)."""
        arrays = {"grid": self.grid, "clean": np.float64(self.clean_value), "corrupt": np.float64(self.corrupt_value),
                  "metric": np.str_(self.metric), "tokens": np.asarray(self.tokens, dtype=np.int64),
                  "subject": np.asarray(self.subject, dtype=np.int64),
                  "token_labels": np.asarray(self.token_labels, dtype=np.str_), "answer": np.str_(self.answer_label),
                  "kind": np.str_(self.kind), "mode": np.str_(self.mode), "window": np.int64(self.window),
                  "complete": np.bool_(self.complete), "settings": np.str_(json.dumps(self.settings)),
                  "warnings": np.str_(json.dumps(self.warnings)), "seconds": np.float64(self.seconds)}
        for m, g in self.grids.items():
            arrays[f"grid_{m}"] = g
            arrays[f"clean_{m}"] = np.float64(self.clean[m])
            arrays[f"corrupt_{m}"] = np.float64(self.corrupt[m])
        return {prefix + k: v for k, v in arrays.items()}

    @classmethod
    def from_npz(cls, path) -> "TraceResult":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays(z)

    @classmethod
    def from_arrays(cls, z, prefix: str = "") -> "TraceResult":
        """The result saved by `to_arrays(prefix)` in `z` (an open npz or a dict)."""
        def a(key: str):
            return z[prefix + key]

        keys = list(z.files if hasattr(z, "files") else z.keys())
        metrics = [k[len(prefix) + 5:] for k in keys if k.startswith(prefix + "grid_")]
        return cls(grids={m: a(f"grid_{m}") for m in metrics},
                   clean={m: float(a(f"clean_{m}")) for m in metrics},
                   corrupt={m: float(a(f"corrupt_{m}")) for m in metrics}, metric=str(a("metric")),
                   tokens=[int(t) for t in a("tokens")], token_labels=[str(s) for s in a("token_labels")],
                   subject=(int(a("subject")[0]), int(a("subject")[1])), answer_label=str(a("answer")),
                   kind=str(a("kind")), mode=str(a("mode")), window=int(a("window")),
                   settings=json.loads(str(a("settings"))), complete=bool(a("complete")),
                   warnings=json.loads(str(a("warnings"))), seconds=float(a("seconds")))

    def to_csv(self) -> str:
        """The chosen grid as CSV: one row per token (index, label, subject flag), one column per layer (from 0, as on every page)."""
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        T, L = self.grid.shape
        w.writerow(["token_index", "token", "subject"] + [f"layer_{l}" for l in range(L)])
        s0, s1 = self.subject
        for t in range(T):
            w.writerow([t, self.token_labels[t], int(s0 <= t < s1)] + [repr(float(v)) for v in self.grid[t]])
        return buf.getvalue()


@dataclass
class TraceSpec:
    """What one grid restores: kind "block" with a mode, or a window of att / ffn outputs."""

    kind: str = "block"
    mode: str = "both"
    window: int = 10
    restore_v_first: bool = True

    def check(self, n_layer: int) -> "TraceSpec":
        if self.kind not in KINDS:
            raise InputError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if int(self.window) < 1:
            raise InputError("the window must be at least 1 layer")
        return self

    def label(self) -> str:
        return f"block/{self.mode}" if self.kind == "block" else f"{self.kind} window {self.window}"


def default_window(n_layer: int) -> int:
    """The att/ffn window's default: ROME's 10 layers for deep models, half the layers (at least 1) for small ones,
    whose window of 10 would cover every layer and draw both window grids flat."""
    return max(1, min(10, n_layer // 2))


# ------------------------------------------------------------------------------------------------ grids


def _empty_grids(T: int, L: int) -> dict[str, np.ndarray]:
    return {m: np.full((T, L), np.nan) for m in METRICS}


def _fill(grids, t: int, l: int, m: dict[str, float]) -> None:
    for k, v in m.items():
        grids[k][t, l] = v


def _finish(setup: TraceSetup, spec: TraceSpec, grids, metric: str, complete: bool, seconds: float,
            method: str, tokens: Optional[list[int]] = None) -> TraceResult:
    base = setup.recovery_base()
    den = setup.clean[base] - setup.corrupt[base]
    with np.errstate(divide="ignore", invalid="ignore"):
        grids["recovery"] = (grids[base] - setup.corrupt[base]) / den if den != 0 else np.full_like(grids[base], np.nan)
    clean, corrupt = dict(setup.clean), dict(setup.corrupt)
    clean["recovery"], corrupt["recovery"] = 1.0, 0.0
    settings = setup.settings()
    settings.update({"kind": spec.kind, "mode": spec.mode, "window": int(spec.window),
                     "restore_v_first": bool(spec.restore_v_first and setup.model.cfg.version == "7"),
                     "method": method, "metric": metric,
                     "tokens": None if tokens is None else [int(t) for t in tokens]})
    return TraceResult(grids, clean, corrupt, metric, list(setup.encoding.ids), setup.token_labels, setup.subject,
                       setup.answer_text, spec.kind, spec.mode, int(spec.window), settings, complete,
                       list(setup.warnings), seconds)
