"""Where a page's time goes at real size: the server's threads (py-spy) and the browser's JavaScript (Chrome's
profiler over CDP), step by step, on the real app in Chromium.

The page benchmark (`bench/bench_pages.py`) says how long each step takes; this says why. It serves the app with a
random checkpoint of a real shape, opens one page with the ~1,031-token prompt (the same steps as the benchmark) and
for each step prints its time and, on request:

  --spy      the server's Python stacks sampled by py-spy (`pip install py-spy`): per function, the samples in which
             it was on a busy stack (inclusive), over all threads (py-spy's own pauses slow the server a little)
  --js       the page's JavaScript samples by function and script (self and inclusive milliseconds)
  --threads  CPU time per server thread during the step (from /proc), which shows torch's pool spinning
  --browser  CPU time of Chromium's processes during the step (from /proc): what the browser takes of the cores

    python -m bench.profile_page /Time_decay --js --spy           # the 0.1B shape, every step of the page
    python -m bench.profile_page /Attention "token click" --threads
    python -m bench.profile_page /Influence_spans --layers 24 --width 2048 --keep
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from bench.bench_decay_page import prompt_of, random_checkpoint, shape_arguments
from bench.bench_pages import PAGES, RUN_MS, REPO, timed, timed_open
from tests.browser.conftest import _WS_TRACKER_JS, CHROMIUM, CHROMIUM_ARGS, VIEWPORT, StreamlitServer, app_exceptions

IDLE_FRAMES = ("wait (threading", "select (selectors", "_wait_for_tstate_lock", "sleep", "epoll", "get (queue")
# py-spy shows no frame for a C call: a thread blocked in time.sleep or a queue ends in the Python frame that called it
IDLE_LAST_FRAMES = ("ComputeThread._loop (", "_worker (concurrent", "task (streamlit/watcher")


def browser_cpu() -> int:
    """User + system clock ticks of every Chromium process on the machine."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split(") ", 1)
        except OSError:
            continue
        if "chrom" in name.lower():
            f = rest.split()
            total += int(f[11]) + int(f[12])
    return total


def thread_cpu(pid: int) -> dict[str, tuple[str, int]]:
    """{thread id: (name, user + system clock ticks)} of a process."""
    out = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[stat.parent.name] = (text[text.index("(") + 1:text.rindex(")")], int(fields[11]) + int(fields[12]))
    return out


def spy_summary(raw: Path, top: int = 30) -> list[str]:
    """Inclusive busy samples per function from py-spy's raw output ("frame;frame;... count" lines)."""
    inclusive: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        last = stack.rsplit(";", 1)[-1]
        if not stack or any(f in stack for f in IDLE_FRAMES) or any(f in last for f in IDLE_LAST_FRAMES):
            continue
        for frame in dict.fromkeys(re.sub(r":\d+\)", ")", f) for f in stack.split(";")[1:]):
            inclusive[frame] += int(count)
    return [f"    {n:6d}  {frame[:140]}" for frame, n in inclusive.most_common(top)]


def js_summary(profile: dict, top: int = 20) -> list[str]:
    """Self and inclusive milliseconds per JavaScript function of a CDP `Profiler.stop` profile."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {c: n["id"] for n in profile["nodes"] for c in n.get("children", [])}

    def name(i: int) -> str:
        cf = nodes[i]["callFrame"]
        return f"{cf['functionName'] or '(anonymous)'} {cf['url'].rsplit('/', 1)[-1][:40]}:{cf['lineNumber']}"

    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for sample, dt in zip(profile["samples"], profile["timeDeltas"]):
        own[name(sample)] += dt
        seen, i = set(), sample
        while i is not None:
            n = name(i)
            if n not in seen:
                inclusive[n] += dt
                seen.add(n)
            i = parent.get(i)
    lines = [f"    self {ms / 1e3:7.0f} ms  {n}" for n, ms in own.most_common(top)]
    return lines + [f"    incl {ms / 1e3:7.0f} ms  {n}" for n, ms in inclusive.most_common(top)
                    if not n.startswith(("(root)", "(program)"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", choices=[p for p, _ in PAGES], help="the page's path")
    ap.add_argument("steps", nargs="*", help="the steps to run (default: all of the page's)")
    ap.add_argument("--spy", action="store_true")
    ap.add_argument("--js", action="store_true")
    ap.add_argument("--threads", action="store_true")
    ap.add_argument("--browser", action="store_true")
    shape_arguments(ap, "/tmp/realsize-pages")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from inspector_ui.prompt_store import store_prompt

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(folder, args.version, args.layers, args.width)
    model = f"{folder.name}/{ckpt.name}"
    text, n = prompt_of(args.tokens)
    query = urlencode({"model": model, "prompt_id": store_prompt(text)}, quote_via=quote)
    server = StreamlitServer(REPO / "app.py", cwd=REPO, env={"RWKV_INSPECTOR_MODEL_DIRS": str(folder),
                                                              "PYTHONPATH": str(REPO)})
    try:
        server.wait_healthy(120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            context = browser.new_context(viewport=VIEWPORT)
            context.add_init_script(_WS_TRACKER_JS)
            page = context.new_page()
            page.set_default_timeout(RUN_MS)
            home = f"{server.url}/?{urlencode({'model': model})}"
            print(f"warm-up (model load): {timed_open(page, home):.2f} s")
            page = context.new_page()
            page.set_default_timeout(RUN_MS)
            cdp = context.new_cdp_session(page)

            def step(label: str, action) -> None:
                spy = raw = None
                if args.spy:
                    raw = Path(f"/tmp/profile_page-{re.sub(r'[^a-z0-9]+', '_', label.lower())}.txt")
                    spy = subprocess.Popen(["py-spy", "record", "-p", str(server.proc.pid), "-r", "50", "-f", "raw",
                                            "-o", str(raw), "--threads", "--idle"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                if args.js:
                    cdp.send("Profiler.enable")
                    cdp.send("Profiler.setSamplingInterval", {"interval": 1000})
                    cdp.send("Profiler.start")
                before, browser_before = thread_cpu(server.proc.pid), browser_cpu()
                seconds = action()
                after, browser_after = thread_cpu(server.proc.pid), browser_cpu()
                print(f"{label}: {seconds:.2f} s {app_exceptions(page) or ''}")
                if args.browser:
                    ticks = os.sysconf("SC_CLK_TCK")
                    server_s = sum(t - before.get(k, ("", 0))[1] for k, (_, t) in after.items()) / ticks
                    print(f"  CPU seconds during the step: server {server_s:.2f}, Chromium "
                          f"{(browser_after - browser_before) / ticks:.2f} (of {seconds * (os.cpu_count() or 1):.1f} "
                          f"core-seconds)")
                if args.threads:
                    used = sorted(((t - before.get(k, ("", 0))[1], name, k) for k, (name, t) in after.items()),
                                  reverse=True)
                    print("  server CPU per thread (ticks):", [(name, k, t) for t, name, k in used[:6] if t > 0])
                if args.js:
                    print("  browser JavaScript:", *js_summary(cdp.send("Profiler.stop")["profile"]), sep="\n")
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait()
                    print("  server Python (py-spy, busy samples at 50 Hz):", *spy_summary(raw), sep="\n")

            step("first render", lambda: timed_open(page, f"{server.url}{args.page}?{query}"))
            for name, make in dict(PAGES)[args.page]:
                if not args.steps or name in args.steps:
                    step(name, lambda: timed(page, make(page, n)))
            browser.close()
    finally:
        server.stop()
        if not args.keep:
            ckpt.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
