"""Which checkpoints the app offers: demo models, the shared test models and configured folders.

Users pick a model by NAME; a name maps to a path only through this registry, so no widget, query parameter or
upload can make the server open a path outside the configured folders. Pure Python (no Streamlit): tested directly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rwkv_core.paths import DEMO_MODELS_DIR, shared_weights_dir

CHECKPOINT_SUFFIXES = (".pth", ".bin", ".safetensors", ".st")
MODEL_DIRS_ENV = "RWKV_INSPECTOR_MODEL_DIRS"  # os.pathsep-separated folders of checkpoints

ENGLISH = "The Eiffel Tower is located in the city of Paris. The Colosseum is located in the city of Rome."
INSPECTOR_DEMO = ("Instruction: Write a story using the following information.\n\n"
                  "Input: A man named Alex chops a tree down.\n\nResponse:")


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint the app can load, with how to tokenize for it and a few prompts that show something."""

    name: str
    path: str
    tokenizer: str = "bytes"  # a kind of rwkv_core.tokenizer: bytes | bytes-utf16le | world | hf | digits
    tokenizer_file: Optional[str] = None
    prompts: tuple[str, ...] = ()
    description: str = ""
    tracing: dict = field(default_factory=dict, hash=False, compare=False)  # default tracing example


# Known shared test models: (file, tokenizer, prompts, description)
SHARED = [
    ("tiny-rwkv-5v2-730K-FP32.bin", "bytes", (ENGLISH, INSPECTOR_DEMO),
     "rwkv.cpp test model, RWKV-5.2, 12 layers x 8 heads of 8; the best English of the tiny models"),
    ("tiny-rwkv-6v0-1m-FP32.bin", "bytes-utf16le", (ENGLISH, INSPECTOR_DEMO),
     "rwkv.cpp test model, RWKV-6, trained on UTF-16-LE bytes; realistic decay spread"),
    ("tiny-rwkv-6v0-3m-Q5_1.bin", "bytes-utf16le", (ENGLISH, INSPECTOR_DEMO),
     "rwkv.cpp test model, RWKV-6 with Q5_1 matrices (dequantised on load)"),
    ("tiny-rwkv-7v0-834K-FP32.bin", "bytes", (ENGLISH,), "rwkv.cpp test model, RWKV-7, barely trained"),
    ("tiny-rwkv-5v1-730K-FP32.bin", "bytes", (ENGLISH,), "rwkv.cpp test model, RWKV-5 preview (v5.1)"),
    ("tiny-rwkv-4v0-660K-FP32.bin", "bytes", (ENGLISH,), "rwkv.cpp test model, RWKV-4 (its FFNs were zeroed)"),
    ("260123_reverse_L2_only_rwkv7.pth", "digits", ("31415926,", "2718281828,"),
     "BlinkDL's RWKV-7 digit-reversal task model: 2 layers, 2 heads of 16"),
]


def _demo_entries() -> list[ModelEntry]:
    """Models trained by the project, committed under models/ with a JSON card beside each checkpoint."""
    out = []
    for card in sorted(DEMO_MODELS_DIR.glob("*.json")):
        try:
            meta = json.loads(card.read_text())
        except (OSError, ValueError):
            continue
        ckpt = card.with_suffix(".pth")
        if not ckpt.is_file():
            continue
        out.append(ModelEntry(name=f"demo: {meta.get('name', card.stem)}", path=str(ckpt),
                              tokenizer=meta.get("tokenizer", "bytes"), prompts=tuple(meta.get("prompts", ())),
                              description=meta.get("description", ""), tracing=meta.get("tracing", {})))
    return out


def _shared_entries() -> list[ModelEntry]:
    root = shared_weights_dir()
    out = []
    for fname, tok, prompts, desc in SHARED:
        p = root / fname
        if p.is_file():
            tracing = {"prompt": "31415926,", "subject": "1", "answer": "6"} if tok == "digits" else {}
            out.append(ModelEntry(f"shared: {fname}", str(p), tok, prompts=prompts, description=desc, tracing=tracing))
    return out


def configured_dirs() -> list[Path]:
    raw = os.environ.get(MODEL_DIRS_ENV, "")
    return [Path(d).resolve() for d in raw.split(os.pathsep) if d.strip() and Path(d).is_dir()]


def _folder_entries() -> list[ModelEntry]:
    out = []
    for d in configured_dirs():
        for p in sorted(d.iterdir()):
            if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and not p.is_symlink():
                out.append(ModelEntry(f"{d.name}/{p.name}", str(p), "auto", prompts=(ENGLISH, INSPECTOR_DEMO)))
    return out


def list_models() -> dict[str, ModelEntry]:
    """All offered models by name, demo models first (the first one is the default)."""
    entries = _demo_entries() + _shared_entries() + _folder_entries()
    return {e.name: e for e in entries}


def default_model_name(models: dict[str, ModelEntry]) -> Optional[str]:
    demo_v7 = [n for n in models if n.startswith("demo:") and "v7" in n]
    return (demo_v7 or list(models) or [None])[0]
