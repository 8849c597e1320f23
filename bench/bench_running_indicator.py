"""Benchmark: what Streamlit's animated "running" icon costs a browser on the same cores while a script computes.

A tiny app draws two figures of the sizes the Time decay page draws at the 1.5B shape (a 24 x 2,048 heat map and a
10,000-point line), then sleeps as a long computation would; Debian's Chromium (Playwright, the browser tests'
flags) opens it and the Chromium processes' CPU time is read from /proc over 8 s of the sleep. Three variants in
one run: Streamlit's own icon, the icon replaced by `inspector_ui.widgets.RUNNING_CSS` (what every page of the app
does), and no script running (the floor).

    python -m bench.bench_running_indicator
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.profile_page import browser_cpu
from inspector_ui.widgets import RUNNING_CSS
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, StreamlitServer

APP = '''
import time
import numpy as np
import plotly.graph_objects as go
import streamlit as st

if st.query_params.get("css"):
    st.html(CSS)
rng = np.random.default_rng(0)
st.plotly_chart(go.Figure(go.Heatmap(z=rng.random((24, 2048)))))
st.plotly_chart(go.Figure(go.Scatter(y=rng.random(10_000), mode="lines+markers")))
if st.query_params.get("run"):
    time.sleep(30)
st.write("done")
'''

VARIANTS = [("Streamlit's animated icon", "run=1"), ("still text (RUNNING_CSS)", "run=1&css=1"),
            ("no script running", "")]


def main() -> int:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="bench-running-"))
    script = folder / "app.py"
    script.write_text(f"CSS = {RUNNING_CSS!r}\n" + APP)
    server = StreamlitServer(script, cwd=folder)
    window, ticks = 8.0, os.sysconf("SC_CLK_TCK")
    rows = []
    try:
        server.wait_healthy(60)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            for name, query in VARIANTS:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(f"{server.url}/?{query}")
                page.get_by_test_id("stPlotlyChart").nth(1).wait_for(timeout=60_000)
                time.sleep(3)  # the figures drawn; the script still sleeping (30 s) where it runs
                before = browser_cpu()
                time.sleep(window)
                rows.append((name, (browser_cpu() - before) / ticks))
                page.close()
            browser.close()
    finally:
        server.stop()
    print(f"Chromium's CPU over {window:.0f} s beside a page of two large figures ({os.cpu_count()} cores)")
    base = rows[0][1]
    for name, cpu in rows:
        print(f"  {name:28s} {cpu:5.2f} CPU-s  ({cpu / window:.0%} of a core, {cpu / base:4.2f}x the icon's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
