"""Where the project finds its data: the shared test weights and the committed demo models."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODELS_DIR = REPO_ROOT / "models"


def shared_weights_dir() -> Path:
    """The folder of rwkv.cpp tiny models and tokenizers (`RWKV_WEIGHTS_DIR`, default `../shared/rwkv-weights`)."""
    env = os.environ.get("RWKV_WEIGHTS_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "rwkv-weights"
