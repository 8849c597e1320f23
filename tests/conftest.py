"""Shared fixtures: the location of the shared test weights, skipped with a reason where absent."""
from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_core.paths import shared_weights_dir

WEIGHTS = shared_weights_dir()
REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
PAGES = [APP] + sorted((REPO / "pages").glob("[0-9]*_*.py"))  # every page, so a new one is covered at once
PAGE_IDS = [p.stem for p in PAGES]


def uses_frame(page: Path) -> bool:
    """Whether the page builds the shared sidebar (inspector_ui.sidebar.page_setup)."""
    return "page_setup(" in page.read_text(encoding="utf-8")


def frame_page(page: Path) -> Path:
    """Skip a page that does not build the shared sidebar (test_page_builds_the_shared_sidebar fails for it)."""
    if not uses_frame(page):
        pytest.skip(f"{page.name} does not call inspector_ui.sidebar.page_setup yet")
    return page


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


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one torch thread is fastest, and immune to a busy machine's oversubscription (restored after
    the module)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
