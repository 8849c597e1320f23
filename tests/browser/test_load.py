"""Load test on loopback: 8 browser contexts open the heavy views (Attention, Influence spans, Time decay) of the
default (demo or small shared) model at the same time on ONE Streamlit server, each with its own prompt.

All finish without an error; each page shows only its own prompt (its token views' text and its prompt box equal
its prompt, never another's), also after all 8 click a token at once; the server's memory stays bounded (VmRSS and
VmHWM of the server process from /proc, before and after).

Playwright's sync API is not thread-safe, so the 8 contexts are driven by the async API (one browser, 8 contexts,
asyncio.gather) in a thread of their own: the session's sync Playwright (other browser tests) stays untouched.
Everything is on 127.0.0.1, every wait has a timeout, and nothing asserts on timing.
"""
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from tests.browser.conftest import _APP_SETTLED_JS, _WS_TRACKER_JS, APP_SCRIPT, CHROMIUM, CHROMIUM_ARGS, VIEWPORT

N_USERS = 8
VIEWS = ["/Attention", "/Influence_spans", "/Time_decay"]
PAGE_TIMEOUT_MS = 420_000  # 8 heavy runs queue on one work gate on a loaded 2-core machine
TOTAL_TIMEOUT_S = 840
MAX_RSS_BYTES = 3 * 2**30  # the server process, after the load
MAX_GROWTH_BYTES = 1536 * 2**20  # what 8 sessions' caches and runs may add to a warmed-up server
BUDGET_GB = "1"  # RWKV_INSPECTOR_MODEL_BUDGET_GB of the server under test (a distinct server of the session)
SCREENSHOTS = Path(APP_SCRIPT).parent / "test-artifacts" / "screenshots"

_DEEP = """
const deepAll = (sel, root) => {
  root = root || document;
  const out = [...root.querySelectorAll(sel)];
  for (const el of root.querySelectorAll('*')) if (el.shadowRoot) out.push(...deepAll(sel, el.shadowRoot));
  return out;
};
"""

# What one user's page shows: errors, its prompt box(es), the text of each token view and its selected token.
_SEEN_JS = "() => {" + _DEEP + """
  const q = s => [...document.querySelectorAll(s)];
  return {
    exceptions: q('[data-testid="stException"]').length,
    errors: q('[data-testid="stAlertContentError"]').map(e => e.innerText),
    script: (document.querySelector('[data-testid="stApp"]') || {getAttribute: () => null})
      .getAttribute('data-test-script-state'),
    prompts: q('[data-testid="stSidebar"] [data-testid="stTextArea"] textarea').map(t => t.value),
    views: deepAll('.tv').map(v => [...v.querySelectorAll('[data-testid="token"]')].map(s => s.textContent).join('')),
    selected: deepAll('.tv').map(v => [...v.querySelectorAll('[data-testid="token"]')]
      .findIndex(s => s.classList.contains('sel'))),
    skeletons: q('[data-testid="stSkeleton"]').length,
    text: document.body.innerText,
  };
}"""


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0]) * 1024
    return out


def _server_pid(factory, url: str) -> int:
    for server in factory._servers.values():  # the harness keeps its servers by their arguments
        if server.url == url.rstrip("/"):
            return server.proc.pid
    raise AssertionError(f"no server process for {url}")


def _default_model():
    from inspector_ui.registry import default_model_name, list_models

    models = list_models()
    name = default_model_name(models)
    if name is None:
        pytest.skip("no model is offered (no demo models and no ../shared weights)")
    return name, models[name]


def _prompts(entry) -> list[str]:
    if entry.tokenizer == "digits":  # a task model reads digits and commas only
        return [f"{i}{i}0{i}1{i}2{(i * 7) % 10}," for i in range(N_USERS)]
    return [f"prompt number {i}: the {w} sat on the mat and looked at it." for i, w in
            enumerate(["cat", "dog", "fox", "owl", "bee", "elk", "yak", "ant"][:N_USERS])]


async def _settle(page, min_recv: int = 1) -> None:
    await page.wait_for_function(_APP_SETTLED_JS, arg={"quietMs": 400, "graceMs": 1500, "minRecv": min_recv},
                                 timeout=PAGE_TIMEOUT_MS, polling=250)
    await page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')",
                                 timeout=PAGE_TIMEOUT_MS, polling=250)


async def _wait_views(page, n: int) -> None:
    await page.wait_for_function(
        "n => {" + _DEEP + "return deepAll('.tv').filter(v => v.querySelector('[data-testid=\"token\"]')).length"
        " >= n; }", arg=n, timeout=PAGE_TIMEOUT_MS, polling=250)


async def _user(browser, i: int, url: str, expects_view: bool, results: dict, start: asyncio.Event,
                all_loaded: asyncio.Barrier) -> None:
    context = await browser.new_context(viewport=VIEWPORT)
    await context.add_init_script(_WS_TRACKER_JS)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    try:
        await start.wait()
        await page.goto(url, timeout=PAGE_TIMEOUT_MS)
        await _settle(page)
        if expects_view:
            await _wait_views(page, 1)
        results[i] = {"first": await page.evaluate(_SEEN_JS), "url": page.url}
        await asyncio.wait_for(all_loaded.wait(), PAGE_TIMEOUT_MS / 1000)  # then all click at once: 8 reruns
        if expects_view:
            recv = await page.evaluate("() => window.__stTest.recv")
            await page.locator('[data-testid="token"]').nth(3).click()
            await _settle(page, min_recv=recv + 1)
            await page.wait_for_function(
                "() => {" + _DEEP + "const t = deepAll('[data-testid=\"token\"]')[3];"
                " return !!t && t.classList.contains('sel'); }", timeout=PAGE_TIMEOUT_MS, polling=250)
        results[i]["after_click"] = await page.evaluate(_SEEN_JS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.mouse.move(0, 0)  # no hover tip over the view
        await page.screenshot(path=str(SCREENSHOTS / f"load-user{i}.png"))
    except Exception as e:  # noqa: BLE001 - reported per user below
        results.setdefault(i, {})["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        await all_loaded.abort()  # the others stop waiting for this one
    finally:
        await context.close()


async def _run_users(urls: list[str], expects_view: list[bool]) -> dict:
    from playwright.async_api import async_playwright

    results: dict = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            start = asyncio.Event()
            barrier = asyncio.Barrier(len(urls))
            tasks = [_user(browser, i, u, v, results, start, barrier)
                     for i, (u, v) in enumerate(zip(urls, expects_view))]
            start.set()  # all 8 navigate at the same moment
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=TOTAL_TIMEOUT_S)
        finally:
            await browser.close()
    return results


def _in_thread(coro_fn, *args):
    """asyncio.run in a thread of its own, so the session's sync Playwright in this thread is not disturbed."""
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(coro_fn(*args))
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, name="load-test", daemon=True)
    t.start()
    t.join(TOTAL_TIMEOUT_S + 60)
    assert not t.is_alive(), "the load test's browser thread did not finish"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.slow  # 2.5 min; keeps the default run under 30 min
@pytest.mark.timeout(TOTAL_TIMEOUT_S + 300)
def test_eight_concurrent_users_on_one_server(streamlit_server):
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    pytest.importorskip("playwright.async_api")
    name, entry = _default_model()
    prompts = _prompts(entry)
    assert len(set(prompts)) == N_USERS

    # a server of its own (distinct arguments): its memory is this test's alone
    url = streamlit_server(APP_SCRIPT, env={"RWKV_INSPECTOR_MODEL_BUDGET_GB": BUDGET_GB})
    pid = _server_pid(streamlit_server, url)
    assert os.path.exists(f"/proc/{pid}/status")

    # warm up: imports and the model, as after the first visitor of the day (not counted as growth)
    warm_url = f"{url}/Attention?{urlencode({'model': name, 'prompt': 'warm up'}, quote_via=quote)}"
    warm = _in_thread(_run_users, [warm_url], [True])
    assert "error" not in warm[0], (warm, streamlit_server.logs(url))
    before = _status_kb(pid)

    urls, expects_view = [], []
    for i, prompt in enumerate(prompts):
        view = VIEWS[i % len(VIEWS)]
        urls.append(f"{url}{view}?{urlencode({'model': name, 'prompt': prompt}, quote_via=quote)}")
        expects_view.append(view != "/Time_decay")  # Time decay has no token view: it is checked by its prompt box
    results = _in_thread(_run_users, urls, expects_view)
    after = _status_kb(pid)

    problems = []
    for i, prompt in enumerate(prompts):
        r = results.get(i, {})
        if "error" in r:
            problems.append(f"user {i} ({urls[i]}): {r['error']}")
            continue
        url_prompt = parse_qs(urlsplit(r["url"]).query).get("prompt", [None])[0]
        if url_prompt != prompt:
            problems.append(f"user {i}: its URL holds the prompt {url_prompt!r}, expected {prompt!r}")
        for stage in ("first", "after_click"):
            seen = r[stage]
            others = [p for j, p in enumerate(prompts) if j != i]
            if seen["exceptions"] or seen["errors"]:
                problems.append(f"user {i} {stage}: exception boxes {seen['exceptions']}, errors {seen['errors']}")
            if seen["prompts"][:1] != [prompt]:
                problems.append(f"user {i} {stage}: prompt box {seen['prompts']!r}, expected {prompt!r}")
            if expects_view[i]:
                if not seen["views"] or any(v != prompt for v in seen["views"]):
                    problems.append(f"user {i} {stage}: token views {seen['views']!r}, expected {prompt!r}")
            leaked = [p for p in others if p in seen["text"] or p in seen["views"] or p in seen["prompts"]]
            if leaked:
                problems.append(f"user {i} {stage}: sees another user's prompt {leaked}")
        if expects_view[i] and r["after_click"]["selected"][:1] != [3]:
            problems.append(f"user {i}: selected {r['after_click']['selected']} after clicking token 3")
    assert not problems, "\n".join(problems) + "\n" + streamlit_server.logs(url)

    mb = lambda b: f"{b / 2**20:.0f} MB"  # noqa: E731
    print(f"server RSS before {mb(before['VmRSS'])}, after {mb(after['VmRSS'])}, peak {mb(after['VmHWM'])}")
    assert after["VmRSS"] < MAX_RSS_BYTES, f"server RSS {mb(after['VmRSS'])} after the load"
    assert after["VmHWM"] < MAX_RSS_BYTES, f"server peak RSS {mb(after['VmHWM'])} during the load"
    assert after["VmRSS"] - before["VmRSS"] < MAX_GROWTH_BYTES, (
        f"server RSS grew from {mb(before['VmRSS'])} to {mb(after['VmRSS'])} for {N_USERS} users")
    streamlit_server.stop(url)
