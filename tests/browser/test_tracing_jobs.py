"""Causal tracing at a real shape on a shared server: the job runs in a Ray worker, never in the server process.

A random RWKV-7 of the 0.1B shape (12 x 768, vocabulary 65,536) and a 1,031-token prompt, on a server whose job
memory budget is 2 GB: with 10 noise samples the trace does not fit and the page refuses it with one line (what it
needs, and how many samples would fit) before anything starts; with 2 samples it fits, asks for confirmation (its
estimate is hours on this CPU), and runs in the worker while the server stays small, answers /_stcore/health and
serves another browser session's page; Stop ends it with the cells done kept.
"""
from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from urllib.parse import urlencode

import pytest

from tests.browser.conftest import app_exceptions, open_app, rerun, wait_for_app

pytestmark = pytest.mark.browser

SERVER_RSS_LIMIT = int(2.5 * 2**30)  # the server holds the model (0.71 GB) and the page's captures, not the job
SUBJECT, ANSWER = "Paris", " F"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as r:
        return r.status == 200 and r.read().decode().strip() == "ok"


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    from rwkv_core.io.synthetic import write_random_checkpoint

    folder = tmp_path_factory.mktemp("realsize")
    write_random_checkpoint(folder / "v7-12x768.pth", "7", n_layer=12, n_embd=768, head_size=64, vocab_size=65536,
                            seed=0)
    words = "Paris is a city in France and the river runs through it while people walk along the banks " * 80
    return folder, words


# Slow (about 4 minutes on 2 busy cores): `python -m pytest -m slow tests/browser/test_tracing_jobs.py`. It once
# failed in full-suite runs with no "Stopped after N of M cells" after Stop: a Stop soon after the first cells gave
# the worker only 10 s to finish its batch before it was restarted and its cells dropped (the job manager now times
# the first batch from the job's start; tests/jobs/test_manager.py); it passed at load average 6-7 since.
@pytest.mark.slow
def test_a_real_size_trace_runs_in_a_worker_and_the_server_keeps_serving(streamlit_server, browser, real_size):
    from inspector_ui.prompt_store import store_prompt
    from rwkv_core.io.tokenizer import tokenizer_for

    folder, words = real_size
    tok = tokenizer_for(65536, kind="world")
    ids = tok.encode(words).ids[:1031]
    prompt = tok.decode(ids)
    assert len(tok.encode(prompt).ids) >= 1000
    env = {"RWKV_INSPECTOR_MODEL_DIRS": str(folder), "RWKV_INSPECTOR_JOB_MEMORY_GB": "2",
           "RWKV_INSPECTOR_MODEL_BUDGET_GB": "1"}
    url = streamlit_server("app.py", env=env, timeout_s=120)
    pid = next(s.proc.pid for s in streamlit_server._servers.values() if s.url == url)
    query = {"model": f"{folder.name}/v7-12x768.pth", "prompt_id": store_prompt(prompt), "ct_subject": SUBJECT,
             "ct_answer": ANSWER}

    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    try:
        open_app(page, f"{url}/Causal_tracing?{urlencode(dict(query, ct_samples='10'))}", timeout_ms=300_000)
        assert not app_exceptions(page), streamlit_server.logs(url)
        errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
        refusal = [e for e in errors if "job memory budget is 2.0 GB" in e]
        assert len(refusal) == 1, errors
        assert re.search(r"use at most \d noise samples?", refusal[0]) and "\n" not in refusal[0].strip()
        with rerun(page, timeout_ms=120_000):
            page.get_by_role("button", name="Trace").click()
        assert page.get_by_text("Tracing:").count() == 0  # refused: nothing started
        assert _rss(pid) < SERVER_RSS_LIMIT

        open_app(page, f"{url}/Causal_tracing?{urlencode(dict(query, ct_samples='2'))}", timeout_ms=300_000)
        caption = page.get_by_text(re.compile(r"Cost: 37,116 cells · about .* on cpu")).first
        caption.wait_for(timeout=60_000)
        with rerun(page, timeout_ms=120_000):
            page.get_by_role("button", name="Trace").click()
        page.get_by_text(re.compile(r"This trace will take about \d+ (h|d)")).wait_for(timeout=60_000)
        page.get_by_role("button", name=re.compile(r"^Start \(")).click()
        page.get_by_text(re.compile(r"Tracing: \d[\d,]* / 37116 cells")).first.wait_for(timeout=300_000)

        # the server keeps serving while the worker traces: health, another session's page, bounded memory
        peak = 0
        other = ctx.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        for _ in range(3):
            assert _healthy(url)
            peak = max(peak, _rss(pid))
            time.sleep(1)
        open_app(other, f"{url}/?{urlencode({'model': query['model'], 'prompt': 'Paris is'})}", timeout_ms=300_000)
        assert not app_exceptions(other), streamlit_server.logs(url)
        assert other.locator('[data-testid="stSidebar"]').count() == 1
        peak = max(peak, _rss(pid))
        other.context.close()
        print(f"server RSS peak {peak / 2**30:.2f} GB while the worker traced")
        assert peak < SERVER_RSS_LIMIT, f"server RSS {peak / 2**30:.2f} GB while the worker traced"

        t0 = time.time()
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()
        page.get_by_text(re.compile(r"Stopped after \d+ of 37116 cells")).wait_for(timeout=240_000)  # a batch on a busy CI
        assert time.time() - t0 < 240
        wait_for_app(page, timeout_ms=120_000)
        assert not app_exceptions(page), streamlit_server.logs(url)
        assert _healthy(url)

        # the server stops on SIGTERM after a trace and a Stop (it once hung at "Stopping..." until SIGKILL)
        server = next(s for s in streamlit_server._servers.values() if s.url == url)
        t1 = time.time()
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=60)  # TimeoutExpired: still running a minute after SIGTERM
        print(f"server ended {time.time() - t1:.1f} s after SIGTERM, exit code {server.proc.returncode}")
        # not aborted by Ray's 3-second SIGTERM alarm (SIGABRT, -6): Streamlit's stop, then a normal exit
        assert server.proc.returncode != -signal.SIGABRT, server.logs()[-3000:]
    finally:
        ctx.close()
        streamlit_server.stop(url)
