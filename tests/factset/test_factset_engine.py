"""Fact-set tracing in this process (rwkv_core.analysis.factset): every fact's grids equal the single-prompt tracer
with the same settings, the AIE equals the mean computed directly from the per-fact files, a rerun resumes, bad lines
are told and skipped. The Ray part is in test_factset_ray.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rwkv_core.analysis import factset as FS
from rwkv_core.analysis import tracing as TR
from rwkv_core.errors import InputError
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs.specs import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
DEMO_V7 = ROOT / "models" / "demo-v7.pth"
SETTINGS = FS.FactSetSettings(kinds=("state", "ffn"), samples=2, window=2)
FACTS_TEXT = "\n".join([
    json.dumps({"id": "eiffel", "prompt": "The Eiffel Tower is located in the city of", "subject": "The Eiffel Tower",
                "answer": " Paris"}),
    "{not json",
    json.dumps({"prompt": "Tokyo is a city in the country of", "subject": "Tokyo", "answer": " Japan"}),
    json.dumps({"prompt": "The Colosseum is in the city of", "subject": "Big Ben", "answer": " Rome"}),
    json.dumps({"prompt": "Toyota was founded in the country of", "subject": "Toyota", "answer": ""}),
    json.dumps({"id": "eiffel", "prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower", "answer": " Paris"}),
    json.dumps({"id": "x/../../y z", "prompt": "Marie Curie worked in the field of", "subject": "Marie Curie",
                "answer": " physics"}),
    json.dumps(["a list"]),
])


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Tiny tensors: one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def demo():
    model = load_model(DEMO_V7)
    return model, tokenizer_for(model.cfg.vocab_size, kind="bytes")


def test_bad_lines_get_their_reason_and_the_rest_go_on():
    facts, bad = FS.parse_facts(FACTS_TEXT)
    assert [f.id for f in facts] == ["eiffel", "3", "x_.._.._y_z"]  # a line's number when no id; ids made file-safe
    assert [f.line for f in facts] == [1, 3, 7]
    reasons = {b.line: b.reason for b in bad}
    assert reasons[2].startswith("not JSON")
    assert "'Big Ben' is not in the prompt" in reasons[4]
    assert reasons[5] == "'answer' is missing or empty"
    assert "used by an earlier line" in reasons[6]
    assert reasons[8].startswith("not a JSON object")
    assert all("/" not in f.id for f in facts)


def test_a_file_too_big_or_not_text_or_empty_is_refused_in_one_line():
    with pytest.raises(InputError, match="the limit is"):
        FS.read_facts(b" " * (FS.MAX_FACTSET_BYTES + 1))
    with pytest.raises(InputError, match="not UTF-8"):
        FS.read_facts(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="no usable fact.*line 1: not JSON"):
        FS.read_facts(b"{oops}\n")


def test_the_demo_fact_set_is_the_corpus_held_out_phrasings(tmp_path):
    """The committed JSONL is what the corpus generates (so it stays in step with facts.json) and every line is
    good: 650 held-out phrasings, each subject inside its prompt."""
    from rwkv_core.analysis.factset.facts import write_demo_facts
    from rwkv_core.demo.corpus import eval_fact_prompts

    n = write_demo_facts(tmp_path / "demo.jsonl")
    assert (tmp_path / "demo.jsonl").read_text() == FS.DEMO_FACTS_PATH.read_text()
    facts, bad = FS.demo_facts()
    assert not bad and len(facts) == n == len(eval_fact_prompts())
    assert {(f.prompt, f.answer) for f in facts} == {(p.prompt, p.answer) for p in eval_fact_prompts()}
    assert len({(f.subject, f.answer) for f in facts[:20]}) == 20  # the first lines are distinct facts


def test_restore_kinds_are_the_tracer_specs():
    specs = FS.FactSetSettings(window=3, restore_v_first=False).specs(12)
    assert [(s.kind, s.mode, s.window, s.restore_v_first) for s in specs] == [
        ("block", "both", 3, False), ("block", "state", 3, False), ("block", "resid", 3, False),
        ("att", "both", 3, False), ("ffn", "both", 3, False)]
    assert FS.FactSetSettings().specs(4)[3].window == TR.default_window(4) == 2
    with pytest.raises(InputError, match="unknown restore kind mlp"):
        FS.FactSetSettings(kinds=("block", "mlp")).check()


def test_token_classes_follow_rome():
    # subject at tokens 2..4 of 10: first 2, middle 3, last 4, first subsequent 5, further 6..8, last 9
    assert FS.class_tokens(10, (2, 5)) == [[2], [3], [4], [5], [6, 7, 8], [9]]
    # a one-token subject is its own first and last token; no middle
    assert FS.class_tokens(6, (1, 2)) == [[1], [], [1], [2], [3, 4], [5]]
    # a subject ending the prompt: no subsequent or further tokens; the last token is the subject's last
    assert FS.class_tokens(4, (1, 4)) == [[1], [2], [3], [], [], [3]]


def test_average_effects_equal_the_direct_mean_and_the_interval_is_a_bootstrap():
    rng = np.random.default_rng(3)
    e = rng.normal(0.2, 0.1, size=(400, 6, 3))
    e[:50, 1] = np.nan  # 50 facts without middle subject tokens
    a = FS.average_effects(e, n_boot=2000, seed=1)
    np.testing.assert_allclose(a.mean, np.nanmean(e, axis=0), rtol=1e-12)
    assert a.count.tolist() == [400, 350, 400, 400, 400, 400]
    assert (a.low < a.mean).all() and (a.mean < a.high).all()
    # a 95 % interval of a mean is about 2 x 1.96 standard errors wide
    se = np.nanstd(e, axis=0) / np.sqrt(a.count[:, None])
    np.testing.assert_allclose(a.high - a.low, 2 * 1.96 * se, rtol=0.15)
    same = FS.average_effects(np.repeat(e[:1], 5, axis=0), n_boot=50)
    np.testing.assert_allclose(same.low, same.high)  # identical facts: no spread


def _run(tmp_path, facts, settings=SETTINGS, **kw):
    return FS.run_fact_set(ModelSpec(str(DEMO_V7), "bytes"), 4, facts, tmp_path / "out", settings, n_boot=200, **kw)


def test_every_fact_equals_the_single_prompt_trace_and_the_aie_their_mean(tmp_path, demo):
    model, tok = demo
    facts, bad = FS.parse_facts(FACTS_TEXT)
    summary = _run(tmp_path, facts, bad=bad)
    assert summary.computed == [f.id for f in facts] and summary.progress.failed == 0
    folder = FS.FactSetFolder(tmp_path / "out")
    effects = {k: [] for k in SETTINGS.kinds}
    for f in facts:
        rec = folder.load_fact(f.id)
        assert rec.fact == f and list(rec.results) == list(SETTINGS.kinds)
        for k, spec in zip(SETTINGS.kinds, SETTINGS.specs(4)):
            expected = TR.trace(model, tok, f.prompt, f.subject, f.answer, kind=spec.kind, mode=spec.mode,
                                window=2, samples=2, noise=3.0, seed=1)
            got = rec.results[k]
            assert (got.kind, got.mode, got.window, got.subject) == (spec.kind, spec.mode, 2, expected.subject)
            for m in TR.METRICS:
                np.testing.assert_allclose(got.grids[m], expected.grids[m], rtol=1e-6, atol=1e-6, equal_nan=True)
            if rec.clean_prob >= SETTINGS.threshold:
                T, s0, s1 = len(got.tokens), *got.subject
                ie = expected.grids["prob"] - expected.corrupt["prob"]
                effects[k].append([ie[c].mean(0) if c else np.full(4, np.nan) for c in FS.class_tokens(T, (s0, s1))])
    with np.load(tmp_path / "out" / "aie.npz") as z:
        n_known = int(z["n_facts"])
        assert n_known == len(effects["state"]) >= 2
        for k in SETTINGS.kinds:
            np.testing.assert_allclose(z[k], np.nanmean(np.array(effects[k]), axis=0), rtol=1e-6, atol=1e-9)
            assert z[f"{k}_low"].shape == z[f"{k}_high"].shape == (6, 4)
    table = (tmp_path / "out" / "facts.csv").read_text().splitlines()
    assert table[0].startswith("id,line,status,known,clean_prob")
    assert sum(",done," in r for r in table) == 3 and sum(",skipped," in r for r in table) == len(bad)
    assert "'Big Ben' is not in the prompt" in (tmp_path / "out" / "facts.csv").read_text()


def test_a_rerun_resumes_and_other_settings_are_refused(tmp_path):
    facts, _ = FS.parse_facts(FACTS_TEXT)
    first = _run(tmp_path, facts[:2], FS.FactSetSettings(kinds=("block",), samples=2))
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "facts").iterdir()}
    again = _run(tmp_path, facts, FS.FactSetSettings(kinds=("block",), samples=2, threshold=0.5))
    assert first.computed == ["eiffel", "3"] and again.computed == ["x_.._.._y_z"]
    assert again.progress.resumed == 2
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "facts").iterdir() if p.name in stamps} == stamps
    # a damaged file is computed again
    (tmp_path / "out" / "facts" / "3.npz").write_bytes(b"PK\x03\x04 cut short")
    assert _run(tmp_path, facts, FS.FactSetSettings(kinds=("block",), samples=2)).computed == ["3"]
    with pytest.raises(InputError, match="other settings"):
        _run(tmp_path, facts, FS.FactSetSettings(kinds=("block",), samples=3))


def test_facts_the_tokenizer_cannot_trace_are_skipped_with_their_reason():
    from rwkv_core.io.tokenizer import tokenizer_for as tf

    digits = tf(vocab_size=None, kind="digits")
    facts, _ = FS.parse_facts("\n".join(json.dumps(x) for x in [
        {"prompt": "12,34#", "subject": "34", "answer": "5"},
        {"prompt": "12,ab#", "subject": "12", "answer": "5"},
        {"prompt": "12,34#", "subject": "12", "answer": "x"},
        {"prompt": "1" * 30 + "#", "subject": "11", "answer": "5"}]))
    ok, bad = FS.check_fact_tokens(digits, facts, max_tokens=20)
    assert [f.line for f in ok] == [1]
    assert [b.line for b in bad] == [2, 3, 4]
    assert "not in this model's alphabet" in bad[0].reason and "not in this model's alphabet" in bad[1].reason
    assert bad[2].reason == "the prompt is 31 tokens; a fact set allows 20 per fact"


def test_a_killed_command_resumes_and_computes_each_fact_once(tmp_path):
    """`trace-set` killed after its first fact file, then run again: every fact is done once in all (events.jsonl
    holds one "done" per fact) and the first run's file is untouched."""
    facts_file = tmp_path / "facts.jsonl"
    lines = [json.dumps({"id": f"f{i}", "prompt": p, "subject": s, "answer": a}) for i, (p, s, a) in enumerate([
        ("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris"),
        ("Tokyo is a city in the country of", "Tokyo", " Japan"),
        ("Marie Curie worked in the field of", "Marie Curie", " physics"),
        ("Toyota is a company from the country of", "Toyota", " Japan")])] + ["not json"]
    facts_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rwkv_core", "trace-set", str(DEMO_V7), str(facts_file), "--out", str(out),
           "--workers", "0", "--samples", "2", "--kinds", "block,att"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.time() + 300
    while time.time() < end and not list((out / "facts").glob("*.npz")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "facts").glob("*.npz")}
    assert 1 <= len(first) < 4, "the run should be killed after its first fact and before its last"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipped line 5: not JSON" in again.stderr
    assert f"({4 - len(first)} by this run" in again.stdout
    done = [e["id"] for e in map(json.loads, (out / "events.jsonl").read_text().splitlines()) if e["event"] == "done"]
    assert sorted(done) == ["f0", "f1", "f2", "f3"]  # each once, across both runs
    assert {n: (out / "facts" / n).stat().st_mtime_ns for n in first} == first
