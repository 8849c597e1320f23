"""The Time decay page's CSV downloads in a real Chromium: the page hands Streamlit callables (built on click, not on
every rerun), so a click must still bring the full table: the per-token table of the layer shown and the state
sizes of every layer, on the 2-layer reverse-digits RWKV-7."""
from __future__ import annotations

import csv
import io
from urllib.parse import urlencode

from tests.browser.conftest import app_exceptions, open_app
from tests.conftest import shared_file

DIGITS = "shared: 260123_reverse_L2_only_rwkv7.pth"  # 2 layers x 32 channels (2 heads of 16)
FIRST_RUN_MS = 240_000  # a cold server loads torch and a model on the first run of a page (loaded 2-core machine)


def _download(page, label: str) -> list[dict]:
    """Click the download button whose label starts with `label`; the CSV it brings, as rows."""
    button = page.get_by_test_id("stDownloadButton").filter(has_text=label).first
    with page.expect_download(timeout=120_000) as info:
        button.click()
    path = info.value.path()
    return list(csv.DictReader(io.StringIO(open(path, encoding="utf-8").read())))


def test_decay_csv_built_on_click(base_url, page):
    shared_file("260123_reverse_L2_only_rwkv7.pth")
    prompt = "31415926,"  # 9 tokens of the digits vocabulary
    open_app(page, f"{base_url}/Time_decay?{urlencode({'model': DIGITS, 'prompt': prompt})}", FIRST_RUN_MS)
    assert not app_exceptions(page)
    rows = _download(page, "Per-token decays and retention, layer 1")
    assert len(rows) == 9 * 32  # T x C of the layer shown (the last)
    assert {"layer", "token", "head", "channel", "decay", "half_life", "retention_from_0"} <= set(rows[0])
    assert {r["layer"] for r in rows} == {"1"} and 0 < float(rows[0]["decay"]) < 1
    rows = _download(page, "State sizes, all layers")
    assert len(rows) == 2 * 9 * 2  # L x T x H
    assert all(float(r["frobenius"]) >= float(r["max_abs"]) > 0 for r in rows)
    assert not app_exceptions(page)
