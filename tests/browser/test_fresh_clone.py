"""A fresh clone in a real Chromium: no ../shared beside the repository (RWKV_WEIGHTS_DIR names an empty folder, no
configured model folders), so the app offers only its committed demo models. Every page must open on the app's
default model with no error, no warning and no exception, and show that model's content.

Pages are discovered from pages/N_Name.py, so a page added later is covered at once.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from inspector_ui.registry import default_model_name, list_models
from tests.browser.conftest import app_exceptions, open_app, save_screenshot

REPO = Path(__file__).resolve().parents[2]
PAGE_FILES = sorted((REPO / "pages").glob("[0-9]*_*.py"))
FIRST_RUN_MS = 240_000  # a cold server loads torch and a model on the first run (loaded 2-core machine)
# What each page draws of the default model once it has run (a selector that is on the page only then).
CONTENT = {
    "/": '[data-testid="stTable"]',  # the model card
    "/Attention": ".js-plotly-plot",
    "/Influence_spans": ".js-plotly-plot",
    "/Time_decay": ".js-plotly-plot",
    "/Causal_tracing": '[data-testid="stFormSubmitButton"]',  # the trace settings, filled for the model
    "/Logit_lens": ".js-plotly-plot",
    "/State": ".js-plotly-plot",
    "/Patching": '[data-testid="stFormSubmitButton"]',  # the patching settings, filled for the demo fact
    "/Batch_tracing": '[data-testid="stAlertContentInfo"]',  # the cost of the default fact set
}


def url_path(page_file: Path) -> str:
    """Streamlit's URL of pages/N_Name.py: /Name."""
    return "/" + re.sub(r"^\d+_", "", page_file.stem)


PATHS = ["/"] + [url_path(p) for p in PAGE_FILES]


@pytest.fixture(scope="module")
def fresh_clone_url(streamlit_server, tmp_path_factory) -> str:
    """The app served as on a fresh clone: an empty weights folder, no configured model folders."""
    empty = tmp_path_factory.mktemp("no-shared-weights")
    return streamlit_server("app.py", env={"RWKV_WEIGHTS_DIR": str(empty), "RWKV_INSPECTOR_MODEL_DIRS": ""})


@pytest.fixture(scope="module")
def default_model() -> str:
    """The name the app picks with only the committed demo models on offer."""
    demo_only = {n: e for n, e in list_models().items() if n.startswith("demo:")}
    name = default_model_name(demo_only)
    assert name, "no demo model is committed under models/: a fresh clone would have nothing to show"
    return name


def _alerts(page, kind: str) -> list[str]:
    """Texts of the st.error / st.warning boxes on the page (kind "Error" or "Warning")."""
    return page.locator(f'[data-testid="stAlertContent{kind}"]').all_inner_texts()


@pytest.mark.parametrize("path", PATHS)
def test_every_page_opens_on_the_default_model_without_shared_weights(fresh_clone_url, default_model, page, path,
                                                                     streamlit_server):
    open_app(page, f"{fresh_clone_url}{path}", FIRST_RUN_MS)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=60_000)
    save_screenshot(page, f"fresh-clone{path.replace('/', '-') or '-home'}")
    logs = streamlit_server.logs(fresh_clone_url)
    assert app_exceptions(page) == [], logs
    assert _alerts(page, "Error") == [], logs
    assert _alerts(page, "Warning") == [], logs
    model_box = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model", exact=True)
    expect(model_box).to_have_value(default_model)
    expect(page.locator(CONTENT.get(path, '[data-testid="stMain"] h1')).first).to_be_visible(timeout=30_000)
    assert f"model={default_model.split(':')[0]}" in page.url  # the view is in the link at once
