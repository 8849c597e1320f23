"""Which checkpoints the app offers: demo models, the shared test models and configured folders.

Users pick a model by NAME; a name maps to a path only through this registry, so no widget, query parameter or
upload can make the server open a path outside the configured folders. Pure Python (no Streamlit): tested directly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from inspector_ui import settings
from rwkv_core.paths import DEMO_MODELS_DIR, shared_weights_dir
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.io.tokenizer import KINDS as TOKENIZER_KINDS
from rwkv_core.io.tokenizer import Tokenizer

CHECKPOINT_SUFFIXES = (".pth", ".bin", ".safetensors", ".st", ".gguf")

ENGLISH = "The Eiffel Tower is located in the city of Paris. The Colosseum is located in the city of Rome."
INSPECTOR_DEMO = ("Instruction: Write a story using the following information.\n\n"
                  "Input: A man named Alex chops a tree down.\n\nResponse:")


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint the app can load, with how to tokenize for it and a few prompts that show something."""

    name: str
    path: str
    tokenizer: str = "bytes"  # a kind of rwkv_core.io.tokenizer: bytes | bytes-utf16le | world | hf | digits
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


def _read_card(card: Path) -> Optional[dict]:
    """A model card (JSON object beside a checkpoint), or None when absent or unreadable."""
    try:
        meta = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _entry_from_card(name: str, ckpt: Path, meta: Optional[dict], default_tokenizer: str,
                     default_prompts: tuple[str, ...] = ()) -> ModelEntry:
    """A registry entry with what the card says: tokenizer kind (and a tokenizer file, by plain file name in the
    checkpoint's folder only), prompts, description and tracing example. Fields of the wrong type are ignored."""
    meta = meta or {}
    tok = meta.get("tokenizer")
    tok = tok if isinstance(tok, str) and tok in (*TOKENIZER_KINDS, "auto") else default_tokenizer
    tok_file = meta.get("tokenizer_file")
    tok_path = None
    if isinstance(tok_file, str) and tok_file and Path(tok_file).name == tok_file and tok_file not in (".", ".."):
        cand = ckpt.parent / tok_file  # a file beside the checkpoint, never a path from the card
        if cand.is_file() and not cand.is_symlink():
            tok_path = str(cand)
    prompts = meta.get("prompts")
    prompts = tuple(x for x in prompts if isinstance(x, str) and x) if isinstance(prompts, list) else ()
    tracing = meta.get("tracing")
    tracing = ({k: tracing[k] for k in ("prompt", "subject", "answer")}
               if isinstance(tracing, dict) and all(isinstance(tracing.get(k), str) for k in ("prompt", "subject",
                                                                                              "answer")) else {})
    desc = meta.get("description")
    return ModelEntry(name=name, path=str(ckpt), tokenizer=tok, tokenizer_file=tok_path,
                      prompts=prompts or default_prompts, description=desc if isinstance(desc, str) else "",
                      tracing=tracing)


def _demo_entries() -> list[ModelEntry]:
    """Models trained by the project, committed under models/ with a JSON card beside each checkpoint."""
    out = []
    for card in sorted(DEMO_MODELS_DIR.glob("*.json")):
        meta = _read_card(card)
        ckpt = card.with_suffix(".pth")
        if meta is None or not ckpt.is_file():
            continue
        out.append(_entry_from_card(f"demo: {meta.get('name', card.stem)}", ckpt, meta, "bytes"))
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
    """The configured checkpoint folders that exist, resolved."""
    return [d.resolve() for d in settings.model_dirs() if d.is_dir()]


def _is_model(p: Path) -> bool:
    """A checkpoint file, or a subfolder that is a Hugging Face model folder (config.json): one model each."""
    if p.is_symlink():
        return False
    return (p.suffix in CHECKPOINT_SUFFIXES and p.is_file()) or (p.is_dir() and (p / "config.json").is_file())


def _folder_entries() -> list[ModelEntry]:
    out = []
    for d in configured_dirs():
        for p in sorted(d.iterdir()):
            if _is_model(p):
                card = p.with_suffix(".json")  # optional: tokenizer, prompts, description, tracing example
                meta = _read_card(card) if card.is_file() and not card.is_symlink() else None
                out.append(_entry_from_card(f"{d.name}/{p.name}", p, meta, "auto", (ENGLISH, INSPECTOR_DEMO)))
    return out


def list_models() -> dict[str, ModelEntry]:
    """All offered models by name, demo models first (the first one is the default)."""
    entries = _demo_entries() + _shared_entries() + _folder_entries()
    return {e.name: e for e in entries}


def id_prompts(vocab_size: int) -> tuple[str, ...]:
    """Example prompts for a model whose prompt is typed as token ids: a run of ids and a repeated pattern (what an
    induction head picks up), every id inside the vocabulary."""
    def typed(ids: list[int]) -> str:
        return ", ".join(str(i % vocab_size) for i in ids)

    return typed(list(range(1, 9))), typed([11, 22, 33, 44, 11, 22, 33, 44])


def can_read(tokenizer: Tokenizer, prompt: str) -> bool:
    """Whether `tokenizer` turns `prompt` into at least one token (an ids tokenizer reads no English)."""
    try:
        return len(tokenizer.encode(prompt).ids) > 0
    except RWKVInspectorError:
        return False


def example_prompts(entry: ModelEntry, tokenizer: Tokenizer) -> tuple[str, ...]:
    """The entry's prompts that its tokenizer can read. A model typed as token ids (a vocabulary that matches no
    tokenizer) gets id lists of its vocabulary instead of the English examples of a folder or upload, so it opens
    on a prompt that runs rather than on an error."""
    usable = tuple(p for p in entry.prompts if can_read(tokenizer, p))
    if not usable and tokenizer.kind == "ids":
        return id_prompts(tokenizer.vocab_size)
    return usable or entry.prompts


def default_model_name(models: dict[str, ModelEntry]) -> Optional[str]:
    """The model the app opens on: the one `RWKV_INSPECTOR_DEFAULT_MODEL` names when it is offered (a hosted app's
    choice; a name not offered is ignored, without an error), else the v7 demo model, else the first offered."""
    chosen = settings.default_model()
    if chosen in models:
        return chosen
    demo_v7 = [n for n in models if n.startswith("demo:") and "v7" in n]
    return (demo_v7 or list(models) or [None])[0]


def model_family(name: str) -> str:
    """The group a registry name belongs to: "demo", "shared", "upload", "hub" (the part before ": "), or a
    configured folder's name (the part before "/")."""
    return name.split(":", 1)[0] if ":" in name else name.split("/", 1)[0]


def default_model_b_name(models: dict[str, ModelEntry], model_a: Optional[str]) -> Optional[str]:
    """Compare mode's model B: another offered model than A (B equal to A would only show a zero difference), of
    A's family where there is one (the other demo model beside a demo model); A itself only when nothing else is
    offered."""
    others = [n for n in models if n != model_a]
    same_family = [n for n in others if model_a is not None and model_family(n) == model_family(model_a)]
    return (same_family or others or [model_a])[0]
