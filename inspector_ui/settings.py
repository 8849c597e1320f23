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


# ------------------------------------------------------------------------------------------------ jobs (Ray workers)

RAY_ADDRESS_ENV = "RWKV_INSPECTOR_RAY_ADDRESS"  # "host:port" of a Ray cluster to join; unset: Ray on this machine
JOB_WORKERS = int(os.environ.get("RWKV_INSPECTOR_JOB_WORKERS", "1"))  # CPU workers (one per GPU when there are GPUs)
JOBS_PER_USER = int(os.environ.get("RWKV_INSPECTOR_JOBS_PER_USER", "2"))  # jobs of one session running at once
JOBS_QUEUED_PER_USER = int(os.environ.get("RWKV_INSPECTOR_JOBS_QUEUED_PER_USER", "4"))  # waiting at most
# A job estimated to take longer than this asks for confirmation before it starts.
CONFIRM_SECONDS = float(os.environ.get("RWKV_INSPECTOR_CONFIRM_MINUTES", "2")) * 60
_JOB_MEMORY_DEFAULT: dict[str, int] = {}
FACTSETS_PER_USER = int(os.environ.get("RWKV_INSPECTOR_FACTSETS_PER_USER", "1"))  # fact sets of a session at once


def factset_dir() -> Path:
    """Where the Batch tracing page keeps its runs' folders (`RWKV_INSPECTOR_FACTSET_DIR`), one per run id."""
    raw = os.environ.get("RWKV_INSPECTOR_FACTSET_DIR", "").strip()
    return Path(raw) if raw else Path.home() / ".cache" / "rwkv-inspector" / "factsets"


def ray_address() -> str | None:
    """The Ray cluster jobs run on (`RWKV_INSPECTOR_RAY_ADDRESS`), or None for a Ray instance on this machine."""
    return os.environ.get(RAY_ADDRESS_ENV, "").strip() or None


def job_memory_bytes(device: str = "cpu") -> int:
    """Peak memory one job may use (`RWKV_INSPECTOR_JOB_MEMORY_GB`); default: 80 % of the memory available when
    first asked (the machine's MemAvailable, or the GPU's free memory)."""
    raw = os.environ.get("RWKV_INSPECTOR_JOB_MEMORY_GB", "").strip()
    if raw:
        return int(float(raw) * 2**30)
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if kind not in _JOB_MEMORY_DEFAULT:
        from rwkv_core.jobs.cost import available_memory_bytes

        _JOB_MEMORY_DEFAULT[kind] = int(0.8 * available_memory_bytes(kind))
    return _JOB_MEMORY_DEFAULT[kind]


def capture_memory_bytes() -> int:
    """Memory one forward capture of a view may take in the server (`RWKV_INSPECTOR_CAPTURE_MEMORY_GB`); default: a
    quarter of the memory available when first asked (two captures are kept per view)."""
    raw = os.environ.get("RWKV_INSPECTOR_CAPTURE_MEMORY_GB", "").strip()
    if raw:
        return int(float(raw) * 2**30)
    if "capture" not in _JOB_MEMORY_DEFAULT:
        from rwkv_core.jobs.cost import available_memory_bytes

        _JOB_MEMORY_DEFAULT["capture"] = int(0.25 * available_memory_bytes("cpu"))
    return _JOB_MEMORY_DEFAULT["capture"]


def job_threads() -> int:
    """CPU threads of one job worker on this machine (its cores shared between `RWKV_INSPECTOR_JOB_WORKERS`), what
    a job's time is estimated for."""
    return max(1, (os.cpu_count() or 1) // max(1, JOB_WORKERS))
