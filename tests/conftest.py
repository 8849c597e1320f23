"""Shared fixtures: the location of the shared test weights, skipped with a reason where absent."""
from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_core.paths import shared_weights_dir

WEIGHTS = shared_weights_dir()


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/rwkv-weights, or skip the test with a clear reason."""
    p = WEIGHTS / name
    if not p.exists():
        pytest.skip(f"shared test data not found: {p} (set RWKV_WEIGHTS_DIR or place ../shared beside the repo)")
    return p


@pytest.fixture
def weights_dir() -> Path:
    if not WEIGHTS.is_dir():
        pytest.skip(f"shared test data not found: {WEIGHTS} (set RWKV_WEIGHTS_DIR or place ../shared beside the repo)")
    return WEIGHTS
