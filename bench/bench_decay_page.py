"""Benchmark: the Time decay page at real size, driven by Streamlit's AppTest, against the model's forward pass.

A random RWKV checkpoint of a real shape (default: RWKV-7 0.1B, 12 layers x 768, vocabulary 65,536, ~0.8 GB, written
under /tmp and deleted at the end unless --keep) and an English prompt of ~1,031 World tokens. One child process per
code version opens pages/3_Time_decay.py with AppTest and times `at.run()`:

  load      the model's first use (loading the checkpoint into the app's pool) with a short prompt
  first     the long prompt typed: the page's first render of it (the model already loaded)
  then      one change of every control of the page, each a rerun: token, head, spectrum y, paper y, sorted heat map,
            retention source, retention aggregate, per-token layer, state layer, state measure, camera format,
            and back to the first layer (its numbers cached by then)

The same child first times the forward pass over the prompt (`model(tokens, logits="none")`, sequence mode, the
best of three after a warm-up, each in a fresh thread as Streamlit runs a rerun): the baseline every page time
is divided by. The load average is printed with it: on a shared machine the ratios count, not the seconds.
Goals: first render <= forward + 2 s, every display change <= 1 s.

    python bench/bench_decay_page.py                       # this checkout
    python bench/bench_decay_page.py --before HEAD~3       # also a git revision (a temporary worktree), same run
    python bench/bench_decay_page.py --layers 24 --width 2048   # the 1.5B shape
    python bench/bench_decay_page.py --profile /tmp/prof   # cProfile of every rerun (the script thread) to a folder
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = Path("pages") / "3_Time_decay.py"
TEXT = ("The history of the language model begins with simple counts of words. A model that has read a great deal "
        "of text learns which word tends to follow which, and a recurrent network keeps a running summary of "
        "everything it has read so far. RWKV keeps that summary in a state that decays: every channel forgets at "
        "its own rate, some within a few tokens, others over thousands. ")

# (label, widget kind, key, value): one display change each, in this order
CONTROLS = [
    ("token", "selectbox", "decay_sel_token", 500),
    ("head", "selectbox", "decay_sel_head", 5),
    ("spectrum y radio", "radio", "decay_spec_y", "decay λ"),
    ("paper y radio", "radio", "decay_paper_y", "half-life (log)"),
    ("sorted heat map toggle", "toggle", "decay_heat_sorted", True),
    ("retention source", "selectbox", "decay_ret_source", 100),
    ("retention aggregate radio", "radio", "decay_ret_agg", "mean"),
    ("per-token layer", "selectbox", "decay_dyn_layer", 3),
    ("state layer", "selectbox", "decay_state_layer", 3),
    ("state measure radio", "radio", "decay_state_metric", "max |entry|"),
    ("camera format radio", "radio", "decay_img_fmt", None),  # None: the second option
    ("per-token layer back", "selectbox", "decay_dyn_layer", 0),
]


def prompt_of(n_tokens: int) -> tuple[str, int]:
    """English text repeated and cut at a word boundary to about `n_tokens` World tokens; (text, token count)."""
    from rwkv_core.io.tokenizer import tokenizer_for

    tok = tokenizer_for(65536)
    words = (TEXT * (4 * n_tokens // len(TEXT.split()) + 2)).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose text has at most n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid])).ids) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    return text, len(tok.encode(text).ids)



# ------------------------------------------------------------------------------------------------ shared by the page benchmarks


def random_checkpoint(folder: Path, version: str, layers: int, width: int) -> Path:
    """A random checkpoint of this shape (vocabulary 65,536) in `folder`, written once and then reused."""
    from rwkv_core.io.synthetic import write_random_checkpoint

    ckpt = folder / f"random-rwkv{version}-L{layers}-D{width}-v65536.pth"
    if not ckpt.exists():
        t0 = time.perf_counter()
        write_random_checkpoint(ckpt, version, n_layer=layers, n_embd=width, head_size=64, vocab_size=65536, seed=0)
        print(f"wrote {ckpt} ({ckpt.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    return ckpt


def shape_arguments(ap: argparse.ArgumentParser, default_dir: str) -> None:
    """The options every page benchmark takes: the model's shape, the prompt's length, where the checkpoint goes,
    and a revision to compare with."""
    ap.add_argument("--version", default="7", choices=["6", "7"])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--tokens", type=int, default=1031)
    ap.add_argument("--dir", default=default_dir, help="folder for the random checkpoint (the app's model dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint (and its folder) afterwards")
    ap.add_argument("--before", help="a git revision to measure too, from a temporary worktree, before this checkout")


@contextlib.contextmanager
def worktree_of(rev: str, prefix: str):
    """A temporary git worktree of revision `rev` (the code "before"), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix)) / "before"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(path.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ child


def _profiled_run(at, out: Path | None):
    """at.run(), with the script thread under cProfile when `out` is given (the top 40 by cumulative time)."""
    if out is None:
        return at.run()
    import cProfile
    import pstats
    import threading

    prof = cProfile.Profile()
    threading.setprofile(lambda *a: (sys.setprofile(None), prof.enable()))
    try:
        at.run()
    finally:
        threading.setprofile(None)
    with open(out, "w") as f:
        pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(40)
    return at


def _set(at, kind: str, key: str, value) -> None:
    widget = getattr(at.sidebar if key == "decay_img_fmt" else at, kind)(key=key)
    if value is None:
        value = widget.options[1]
    if kind == "toggle":
        widget.set_value(bool(value))
    else:
        widget.set_value(value)


def child(args: argparse.Namespace) -> None:
    import torch
    from streamlit.testing.v1 import AppTest

    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.tokenizer import tokenizer_for

    text = Path(args.prompt_file).read_text()
    tokens = tokenizer_for(65536).encode(text).ids
    model = load_model(args.ckpt)

    def forward_in_thread(model) -> float:
        """One forward pass in a fresh thread, as Streamlit runs each rerun of a page script."""
        out: list[float] = []

        def work() -> None:
            with torch.no_grad():
                t0 = time.perf_counter()
                model(tokens, logits="none")
                out.append(time.perf_counter() - t0)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        return out[0]

    with torch.no_grad():
        model(tokens[:16], logits="none")  # warm-up
    times = [forward_in_thread(model) for _ in range(3)]
    del model
    result = {"forward": min(times), "forward_runs": times, "load_avg": os.getloadavg()[0], "steps": []}
    prof = Path(args.profile) if args.profile else None
    if prof:
        prof.mkdir(parents=True, exist_ok=True)

    def step(label: str, act) -> None:
        t0 = time.perf_counter()
        act()
        dt = time.perf_counter() - t0
        problems = [str(e.value)[:200] for e in list(at.exception) + list(at.error)]
        result["steps"].append({"step": label, "s": dt, "problems": problems})
        print(f"  {label:28s} {dt:8.2f} s", file=sys.stderr, flush=True)

    at = AppTest.from_file(str(Path(args.repo) / PAGE), default_timeout=1800)
    at.session_state["model"] = args.model_name
    at.session_state["prompt"] = "Hello"
    step("load (short prompt)", lambda: _profiled_run(at, prof and prof / "00_load.txt"))
    at.sidebar.text_area(key="prompt").input(text)
    step("first render", lambda: _profiled_run(at, prof and prof / "01_first.txt"))
    for i, (label, kind, key, value) in enumerate(CONTROLS, start=2):
        _set(at, kind, key, value)
        report = prof and prof / f"{i:02d}_{key}.txt"
        step(label, lambda report=report: _profiled_run(at, report))
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------ parent


def run_child(repo: Path, ckpt: Path, model_name: str, prompt_file: Path, args) -> dict:
    env = dict(os.environ, RWKV_INSPECTOR_MODEL_DIRS=str(ckpt.parent), PYTHONPATH=str(repo))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--repo", str(repo), "--ckpt", str(ckpt),
           "--model-name", model_name, "--prompt-file", str(prompt_file)]
    if args.profile:
        cmd += ["--profile", str(Path(args.profile) / repo.name)]
    out = subprocess.run(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(name: str, res: dict) -> list[str]:
    fwd = res["forward"]
    runs = " ".join(f"{t:.2f}" for t in res["forward_runs"])
    lines = [(f"{name}: forward pass {fwd:.2f} s (best of {runs}); load average {res['load_avg']:.1f} at the start, "
              f"{res['load_avg_end']:.1f} at the end"), f"  {'step':28s} {'time (s)':>9s} {'/ forward':>10s}"]
    for s in res["steps"]:
        flag = "  PROBLEM: " + "; ".join(s["problems"]) if s["problems"] else ""
        lines.append(f"  {s['step']:28s} {s['s']:9.2f} {s['s'] / fwd:10.2f}{flag}")
    first = next(s["s"] for s in res["steps"] if s["step"] == "first render")
    changes = [s["s"] for s in res["steps"][2:]]
    lines.append(f"  first render - forward = {first - fwd:.2f} s (goal <= 2 s); slowest display change "
                 f"{max(changes):.2f} s (goal <= 1 s)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape_arguments(ap, "/tmp/realsize")
    ap.add_argument("--profile", help="folder for cProfile reports of every rerun")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--model-name", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    folder = Path(args.dir)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = random_checkpoint(folder, args.version, args.layers, args.width)
    text, n = prompt_of(args.tokens)
    prompt_file = folder / "prompt.txt"
    prompt_file.write_text(text)
    model_name = f"{folder.name}/{ckpt.name}"
    print(f"model {model_name}: v{args.version}, {args.layers} x {args.width}; prompt of {n} tokens", file=sys.stderr)
    results: list[tuple[str, dict]] = []
    try:
        if args.before:
            with worktree_of(args.before, "decay-before-") as worktree:
                print(f"before ({args.before}):", file=sys.stderr)
                results.append((f"before ({args.before})", run_child(worktree, ckpt, model_name, prompt_file, args)))
        print("this checkout:", file=sys.stderr)
        results.append(("this checkout", run_child(REPO, ckpt, model_name, prompt_file, args)))
    finally:
        if not args.keep:
            ckpt.unlink(missing_ok=True)
            prompt_file.unlink(missing_ok=True)
            if created:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"Time decay page, random v{args.version} checkpoint {args.layers} x {args.width}, vocabulary 65,536, "
          f"{n}-token prompt, AppTest")
    for name, res in results:
        print("\n".join(table(name, res)))
    if len(results) == 2:
        (_, a), (_, b) = results
        print("before -> this checkout, each as a multiple of its own run's forward pass:")
        for sa, sb in zip(a["steps"], b["steps"]):
            print(f"  {sa['step']:28s} {sa['s'] / a['forward']:6.2f} -> {sb['s'] / b['forward']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
