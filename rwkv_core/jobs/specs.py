"""What a job asks for and what it gives back: plain, picklable records that travel between the caller and a Ray
worker (no model, no tensors, no tokenizer objects)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rwkv_core.analysis.tracing import TraceSpec


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint as a worker loads it: the file, how to tokenize for it, where and in what precision."""

    path: str
    tokenizer: str = "auto"  # a kind of rwkv_core.io.tokenizer.tokenizer_for
    tokenizer_file: Optional[str] = None
    device: str = "cpu"
    dtype: str = "fp32"  # a key of rwkv_core.model.rwkv.DTYPES


@dataclass(frozen=True)
class TraceJob:
    """Causal tracing of one prompt: `prepare` holds prepare_trace's keyword arguments (subject, answer, noise, ...),
    `specs` the grids to fill. memory_budget: bytes of activations per batch of cells (attribution patching: per
    group of noise rows). tokens: the rows to compute (prompt positions; None: every row). method "fast" (exact,
    `trace_grids`) or "atp" (attribution patching, `atp_trace`: a first-order estimate of every cell; `tokens` does
    not apply)."""

    model: ModelSpec
    prompt: str
    prepare: tuple  # sorted (name, value) pairs of prepare_trace's keyword arguments
    specs: tuple[TraceSpec, ...]
    memory_budget: int
    tokens: Optional[tuple[int, ...]] = None
    method: str = "fast"

    @property
    def setup_key(self) -> tuple:
        """What the cached clean and corrupted runs depend on: a later ablation job with the same key reuses them."""
        return (self.model, self.prompt, self.prepare)


@dataclass(frozen=True)
class AblationJob:
    """Layer ablation of a traced prompt (the trace's setup, recomputed in the worker when it no longer holds it)."""

    trace: TraceJob
    target: str
    replacement: str
    reset_token: int  # -1: the subject's last token
    reference: Optional[str] = None  # reference text of mean ablation


@dataclass
class JobOutcome:
    """A finished job: its value (a list of TraceResult, or an AblationResult), or the one line saying why not.
    `warning` marks a setting to change rather than a failure (a replacement subject of the wrong length)."""

    value: Any = None
    error: Optional[str] = None
    warning: Optional[str] = None
    cells_done: int = 0
    cells_total: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.warning is None
