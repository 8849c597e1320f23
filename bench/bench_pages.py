"""Benchmark: every page of the real app in Debian's Chromium at a real model size, against the forward pass.

A random RWKV checkpoint of a real shape (default: RWKV-7 0.1B, 12 layers x 768, vocabulary 65,536; `--layers 24
--width 2048` for 1.5B) is served from a model folder by `streamlit run app.py`; a ~1,031-token English prompt goes
in by link (`prompt_id`, as the app itself shares long prompts). Chromium (Playwright) then, on one server:

  warm-up   the model loaded by the home page with a short prompt (the first visitor of the day; not counted)
  first     each page opened by its link with the long prompt, in menu order: home, Attention, Influence spans,
            Time decay, Causal tracing (a page may reuse numbers an earlier page computed, as a user's walk does)
  changes   on each page, one change of each display control (a click on the middle token, layer, head, radio,
            toggle, ...)

A step's time runs from the action (the navigation's start, or just before the click) to the server's last message
of the rerun, read in the browser. The baseline is the forward pass over the same prompt in this process's main
thread (the model's `model(tokens)`, logits included; best of three after a warm-up), timed before the server starts,
under libgomp's default (its fastest setting on an idle machine; the server sets OMP_WAIT_POLICY=PASSIVE, see
bench/bench_omp_wait.py: run this with the machine otherwise idle).
Goals on CPU: first render <= forward + 2 s (1.5B: + 5 s), display change <= 1 s (1.5B: 2 s). The server's memory
(resident now, and its peak) is printed after each page.

    python -m bench.bench_pages                          # this checkout (run from the repository root)
    python -m bench.bench_pages --before HEAD~5          # also a git revision (a temporary worktree), same run
    python -m bench.bench_pages --layers 24 --width 2048 # the 1.5B shape (~6 GB on disk, ~7 GB to write)
    python -m bench.bench_pages --model /tmp/bench-load-x/model-q8_0.gguf   # a GGUF file or a Hugging Face folder
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import torch

from bench.bench_decay_page import prompt_of, random_checkpoint, shape_arguments, worktree_of
from tests.browser.conftest import (_WS_TRACKER_JS, CHROMIUM, CHROMIUM_ARGS, VIEWPORT, StreamlitServer,
                                    app_exceptions, wait_for_app)

REPO = Path(__file__).resolve().parents[1]
RUN_MS = 180_000


# ------------------------------------------------------------------------------------------------ browser actions


def _recv(page) -> int:
    return int(page.evaluate("() => (window.__stTest ? window.__stTest.recv : 0)"))


def timed(page, action) -> float:
    """Seconds from just before `action()` to the last server message of the rerun it causes."""
    before = _recv(page)
    t0 = page.evaluate("() => performance.now()")
    action()
    wait_for_app(page, RUN_MS, min_recv=before + 1)
    return (page.evaluate("() => window.__stTest.lastRecv") - t0) / 1000


def timed_open(page, url: str) -> float:
    """Seconds from the navigation's start to the last server message of the first run."""
    page.goto(url)
    wait_for_app(page, RUN_MS)
    return page.evaluate("() => window.__stTest.lastRecv") / 1000


def main_area(page):
    return page.get_by_test_id("stMain")


def select(page, label: str, option: str, nth: int = 0):
    """A selectbox of the main area by its label: type the option into its search box and pick it."""
    def act():
        box = main_area(page).get_by_test_id("stSelectbox").filter(
            has=page.get_by_text(label, exact=True)).nth(nth)
        box.locator("input").click()
        page.keyboard.type(option)
        page.get_by_role("option", name=option, exact=True).first.click()
    return act


def radio(page, label: str, option: str):
    def act():
        group = main_area(page).get_by_test_id("stRadio").filter(has=page.get_by_text(label, exact=True)).first
        group.get_by_test_id("stRadioOption").filter(has_text=option).first.click()
    return act


def toggle(page, label: str):
    def act():
        main_area(page).get_by_text(label, exact=True).first.click()
    return act


def expand(page, label_start: str):
    """Open the main area's expander whose label starts with `label_start`."""
    def act():
        main_area(page).get_by_test_id("stExpander").filter(has_text=label_start).first.get_by_text(
            label_start).first.click()
    return act


def click_token(page, index: int):
    def act():
        page.locator('[data-testid="token"]').nth(index).click()
    return act


# (page path, [(step name, action factory)])
PAGES = [
    ("/", []),
    ("/Attention", [("token click", lambda p, n: click_token(p, n // 2)), ("layer", lambda p, n: select(p, "Layer", "1")),
                    ("head", lambda p, n: select(p, "Head", "2")),
                    ("colour-blind toggle", lambda p, n: toggle(p, "Colour-blind palette")),
                    ("diagonal toggle", lambda p, n: toggle(p, "Diagonal (bonus)"))]),
    ("/Influence_spans", [("token click", lambda p, n: click_token(p, n // 2)),
                          ("layer", lambda p, n: select(p, "Layer", "1")), ("head", lambda p, n: select(p, "Head", "2")),
                          ("log y toggle", lambda p, n: toggle(p, "Log y")),
                          ("relative toggle", lambda p, n: toggle(p, "Relative curves"))]),
    ("/Time_decay", [("paper y radio", lambda p, n: radio(p, "y axis", "half-life (log)")),
                     ("sorted heat map", lambda p, n: toggle(p, "Sort heat map channels")),
                     ("per-token layer", lambda p, n: select(p, "Layer", "1")),
                     ("head", lambda p, n: select(p, "Head", "2")),
                     ("spectrum y radio", lambda p, n: radio(p, "Spectrum y", "decay λ")),
                     ("retention aggregate", lambda p, n: radio(p, "Head aggregate", "mean")),
                     ("state measure radio", lambda p, n: radio(p, "Measure", "max |entry|")),
                     ("state layer", lambda p, n: select(p, "Layer", "1", nth=1)),
                     ("bonus opened", lambda p, n: expand(p, "Bonus of the current token")),
                     ("per-head summary opened", lambda p, n: expand(p, "Per-head summary over the prompt"))]),
    ("/Causal_tracing", [("image format radio", lambda p, n: radio(p, "Image download", "svg"))]),
]


def _rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at peak (MB) of a process and its children (the server's process group)."""
    now = peak = 0.0
    for p in [pid] + _children(pid):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        now += int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        peak += int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
    return now, peak


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def measure(repo: Path, folder: Path, model_name: str, prompt_id: str, n_tokens: int) -> dict:
    """Open every page of the app in `repo` (its own server) and time its first render and display changes."""
    from playwright.sync_api import sync_playwright

    env = {"RWKV_INSPECTOR_MODEL_DIRS": str(folder), "RWKV_INSPECTOR_DEFAULT_MODEL": model_name,
           "PYTHONPATH": str(repo)}
    server = StreamlitServer(repo / "app.py", cwd=repo, env=env)
    steps: list[dict] = []
    try:
        server.wait_healthy(120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport=VIEWPORT)
                context.add_init_script(_WS_TRACKER_JS)
                page = context.new_page()
                page.set_default_timeout(RUN_MS)
                warm = timed_open(page, f"{server.url}/?{urlencode({'model': model_name, 'prompt': 'Hello'})}")
                print(f"  warm-up (model load, short prompt): {warm:.2f} s", file=sys.stderr)
                for path, changes in PAGES:
                    link = f"{server.url}{path}?{urlencode({'model': model_name, 'prompt_id': prompt_id}, quote_via=quote)}"
                    page = context.new_page()
                    page.set_default_timeout(RUN_MS)
                    s = timed_open(page, link)
                    errors = app_exceptions(page)
                    steps.append({"page": path, "step": "first render", "s": s, "errors": errors})
                    print(f"  {path} first render {s:.2f} s{' ERRORS ' + str(errors) if errors else ''}",
                          file=sys.stderr)
                    for name, make in changes:
                        s = timed(page, make(page, n_tokens))
                        steps.append({"page": path, "step": name, "s": s, "errors": app_exceptions(page)})
                        print(f"  {path} {name} {s:.2f} s", file=sys.stderr)
                    rss, peak = _rss_mb(server.proc.pid)
                    steps.append({"page": path, "step": "server memory", "rss_mb": rss, "peak_mb": peak})
                    page.close()
            finally:
                browser.close()
    finally:
        logs = server.logs()
        server.stop()
    return {"steps": steps, "load_avg": os.getloadavg()[0], "log_tail": logs[-2000:]}


def forward_seconds(ckpt: Path, tokens: list[int]) -> tuple[float, list[float]]:
    """The model's forward pass over the prompt (logits included), best of three after a warm-up, main thread."""
    from rwkv_core.io.checkpoint import load_model

    model = load_model(ckpt)
    times = []
    with torch.no_grad():
        model(tokens[:64])
        for _ in range(3):
            t0 = time.perf_counter()
            model(tokens)
            times.append(time.perf_counter() - t0)
    del model
    return min(times), times


def table(name: str, res: dict, fwd: float, first_goal: float, change_goal: float) -> list[str]:
    lines = [f"{name} (load average {res['load_avg']:.1f} at the end)",
             f"  {'page':18s} {'step':22s} {'time (s)':>9s} {'- forward':>10s} {'goal':>6s}"]
    for s in res["steps"]:
        if "rss_mb" in s:
            lines.append(f"  {s['page']:18s} {'server memory':22s} {s['rss_mb']:7.0f} MB resident, peak "
                         f"{s['peak_mb']:.0f} MB")
            continue
        first = s["step"] == "first render"
        over = s["s"] - fwd if first else s["s"]
        goal = first_goal if first else change_goal
        mark = "ok" if over <= goal else "OVER"
        lines.append(f"  {s['page']:18s} {s['step']:22s} {s['s']:9.2f} {s['s'] - fwd if first else float('nan'):10.2f}"
                     f" {mark:>6s}{'  errors: ' + str(s['errors']) if s['errors'] else ''}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape_arguments(ap, "/tmp/realsize-pages")
    ap.add_argument("--model", help="serve this model instead of a random checkpoint: a .pth, a .gguf or a Hugging "
                    "Face folder (e.g. those `bench/bench_load_formats.py --keep` writes); --layers/--width then "
                    "only set the goals")
    args = ap.parse_args()

    from inspector_ui.prompt_store import store_prompt
    from rwkv_core.io.tokenizer import tokenizer_for

    if args.model:  # a model of any format, served from its own folder (kept)
        ckpt = Path(args.model).resolve()
        folder, created, args.keep = ckpt.parent, False, True
    else:
        folder = Path(args.dir)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        ckpt = random_checkpoint(folder, args.version, args.layers, args.width)
    text, n = prompt_of(args.tokens)
    prompt_id = store_prompt(text)
    model_name = f"{folder.name}/{ckpt.name}"
    big = args.layers * args.width > 12 * 768 * 2
    first_goal, change_goal = (5.0, 2.0) if big else (2.0, 1.0)
    fwd, fwd_runs = forward_seconds(ckpt, tokenizer_for(65536).encode(text).ids)
    print(f"model {model_name}: {args.layers} x {args.width}; prompt of {n} tokens; forward "
          f"{fwd:.2f} s (runs {', '.join(f'{t:.2f}' for t in fwd_runs)})", file=sys.stderr)
    results: list[tuple[str, dict]] = []
    try:
        if args.before:
            with worktree_of(args.before, "pages-before-") as worktree:
                print(f"before ({args.before}):", file=sys.stderr)
                results.append((f"before ({args.before})", measure(worktree, folder, model_name, prompt_id, n)))
        print("this checkout:", file=sys.stderr)
        results.append(("this checkout", measure(REPO, folder, model_name, prompt_id, n)))
    finally:
        if not args.keep:
            ckpt.unlink(missing_ok=True)
            if created:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"Every page in Chromium, {model_name if args.model else f'random v{args.version} checkpoint'} "
          f"{args.layers} x {args.width}, vocabulary 65,536, {n}-token prompt; forward pass {fwd:.2f} s; goals: first render <= forward + {first_goal:.0f} s, "
          f"display change <= {change_goal:.0f} s")
    for name, res in results:
        print("\n".join(table(name, res, fwd, first_goal, change_goal)))
    if len(results) == 2:
        (_, a), (_, b) = results
        print("before -> this checkout (seconds, and this checkout / before):")
        for sa, sb in zip(a["steps"], b["steps"]):
            if "s" in sa and "s" in sb and (sa["page"], sa["step"]) == (sb["page"], sb["step"]):
                print(f"  {sa['page']:18s} {sa['step']:22s} {sa['s']:7.2f} -> {sb['s']:7.2f}  ({sb['s'] / sa['s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
