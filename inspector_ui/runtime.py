"""Process-wide resources shared by every session: the model pool and the work gate.

One model instance per (checkpoint, device, dtype) serves all sessions; the pool evicts the least recently used
model when a memory budget would be exceeded. Hooks attached to a shared model are global state, so every forward
pass runs while holding the work gate: one heavy job at a time (per gate slot), the others wait in line and are
told their place. No Streamlit import here either: the pages pass callbacks for waiting and progress.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from inspector_ui.registry import ModelEntry
from rwkv_core.io.checkpoint import load_checkpoint, load_model
from rwkv_core.io.tokenizer import Tokenizer, get_tokenizer, tokenizer_for_vocab

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: torch.nn.Module
    tokenizer: Tokenizer
    device: str
    dtype: str
    n_bytes: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.entry.name, self.device, self.dtype)


def make_tokenizer(entry: ModelEntry, vocab_size: int) -> Tokenizer:
    if entry.tokenizer == "auto":
        return tokenizer_for_vocab(vocab_size, path=entry.tokenizer_file)
    if entry.tokenizer in ("world", "hf"):
        return tokenizer_for_vocab(vocab_size, kind=entry.tokenizer, path=entry.tokenizer_file)
    return get_tokenizer(entry.tokenizer, entry.tokenizer_file)


class ModelPool:
    """Loaded models by (name, device, dtype), least recently used evicted beyond `budget_bytes`."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._models: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, entry: ModelEntry, device: str = "cpu", dtype: str = "fp32") -> LoadedModel:
        key = (entry.name, device, dtype)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            ckpt = load_checkpoint(entry.path)  # CheckpointError on anything wrong: nothing is kept
            model = load_model(ckpt, device=device, dtype=DTYPES[dtype])
            tok = make_tokenizer(entry, model.cfg.vocab_size)
            n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            while self._models and self.total_bytes() + n_bytes > self.budget_bytes:
                self._models.popitem(last=False)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            loaded = LoadedModel(entry, model, tok, device, dtype, n_bytes)
            self._models[key] = loaded
            return loaded

    def total_bytes(self) -> int:
        return sum(m.n_bytes for m in self._models.values())

    def loaded_names(self) -> list[tuple]:
        return list(self._models)


class WorkGate:
    """First come, first served access to the compute device for `slots` jobs at a time."""

    def __init__(self, slots: int = 1):
        self._slots = slots
        self._busy = 0
        self._queue: deque = deque()
        self._cond = threading.Condition()

    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    @contextmanager
    def slot(self, on_wait: Optional[Callable[[int], None]] = None, poll_s: float = 0.3):
        """Hold one slot for the block. `on_wait(jobs_ahead)` is called while waiting; if it raises (the user
        cancelled, the session ended), the place in line is given up."""
        me = object()
        acquired = False
        with self._cond:
            self._queue.append(me)
        try:
            while True:
                with self._cond:
                    if self._queue[0] is me and self._busy < self._slots:
                        self._queue.popleft()
                        self._busy += 1
                        acquired = True
                        break
                    ahead = self._busy + list(self._queue).index(me)
                    self._cond.wait(timeout=poll_s)
                if on_wait is not None:
                    on_wait(ahead)
            yield
        finally:
            with self._cond:
                if acquired:
                    self._busy -= 1
                elif me in self._queue:
                    self._queue.remove(me)
                self._cond.notify_all()


def default_budget_bytes() -> int:
    gb = float(os.environ.get("RWKV_INSPECTOR_MODEL_BUDGET_GB", "8"))
    return int(gb * 2**30)
