"""Every setting of the app read from the environment, in one place (`RWKV_INSPECTOR_*`; the README lists them).

Values a test or a deployment may change at run time (model folders, the model budget) are read when asked for.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

MAX_TOKENS = int(os.environ.get("RWKV_INSPECTOR_MAX_TOKENS", "4096"))  # longest prompt a page will run
HOSTED = os.environ.get("RWKV_INSPECTOR_HOSTED", "0") == "1"  # a shared server: uploads and hub downloads off
ALLOW_UPLOAD = os.environ.get("RWKV_INSPECTOR_ALLOW_UPLOAD", "0" if HOSTED else "1") == "1"
ALLOW_HUB = os.environ.get("RWKV_INSPECTOR_ALLOW_HUB", "0" if HOSTED else "1") == "1"
MAX_UPLOAD_MB = int(os.environ.get("RWKV_INSPECTOR_MAX_UPLOAD_MB", "200"))
UPLOAD_DIR = Path(tempfile.gettempdir()) / "rwkv-inspector-uploads"
URL_PROMPT_CHARS = 400  # longer prompts travel in the URL as a server-side id
PROMPT_STORE = Path.home() / ".cache" / "rwkv-inspector" / "prompts"
# The store keeps the most recently stored or opened prompts (links in use stay); the oldest beyond this go.
PROMPT_STORE_MAX_FILES = int(os.environ.get("RWKV_INSPECTOR_PROMPT_STORE_MAX_FILES", "20000"))
MODEL_DIRS_ENV = "RWKV_INSPECTOR_MODEL_DIRS"  # os.pathsep-separated folders of checkpoints
DEFAULT_MODEL_ENV = "RWKV_INSPECTOR_DEFAULT_MODEL"  # registry name of the model the app opens on


def model_dirs() -> list[Path]:
    """The configured checkpoint folders (`RWKV_INSPECTOR_MODEL_DIRS`), as given."""
    raw = os.environ.get(MODEL_DIRS_ENV, "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def default_model() -> str:
    """The registry name a deployment chose for the app to open on (`RWKV_INSPECTOR_DEFAULT_MODEL`, e.g.
    "odd/odd-vocab.pth" or "shared: tiny-rwkv-5v2-730K-FP32.bin"), or "" for the built-in default."""
    return os.environ.get(DEFAULT_MODEL_ENV, "").strip()


def model_budget_bytes() -> int:
    """Weight bytes the shared model pool may hold (`RWKV_INSPECTOR_MODEL_BUDGET_GB`, default 8)."""
    gb = float(os.environ.get("RWKV_INSPECTOR_MODEL_BUDGET_GB", "8"))
    return int(gb * 2**30)
