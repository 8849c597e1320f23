"""Causal tracing and layer ablation (rwkv_core.analysis.tracing) and its figures; the page is tested in
tests/ui/test_page_causal_tracing.py.

The fast path (cached runs, prefix reuse, cells batched) must give the reference path's numbers (one full forward
pass per cell, ROME style) on random checkpoints of every generation, for every restore mode and kind; the
invariants of the method must hold exactly (restoring everything at the end = clean, restoring before the subject
= corrupted, no noise = clean everywhere); the subject is found by character span for every tokenizer.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rwkv_core.analysis import tracing as TR
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.errors import InputError
from rwkv_core.model.rwkv import RWKV
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.io.tokenizer import ByteTokenizer, tokenizer_for
from tests.conftest import shared_file

TOL = 1e-5
GRID_METRICS = ("prob", "logprob", "first_prob", "logit_diff", "recovery")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Tiny tensors: one thread (tests/conftest.py)."""


_MODELS: dict = {}


def small_model(version: str, n_embd: int = 32) -> RWKV:
    key = (version, n_embd)
    if key not in _MODELS:
        sd = random_state_dict(version, n_layer=3, n_embd=n_embd, head_size=16, vocab_size=256, seed=7)
        _MODELS[key] = RWKV.from_state_dict(detect_config(sd), sd)
    return _MODELS[key]


BYTES = ByteTokenizer()
PROMPT, SUBJECT = "ab cdef gh", "cd"  # subject at tokens 3..4, two tokens before it


def all_specs(v7: bool) -> list[TR.TraceSpec]:
    specs = [TR.TraceSpec("block", m) for m in TR.MODES]
    specs += [TR.TraceSpec("att", window=2), TR.TraceSpec("ffn", window=1), TR.TraceSpec("ffn", window=10)]
    if v7:
        specs += [TR.TraceSpec("block", m, restore_v_first=False) for m in ("resid", "both")]
    return specs


def assert_grids_close(a: TR.TraceResult, b: TR.TraceResult, tol: float = TOL) -> None:
    base = b.settings["recovery_of"]
    den = abs(b.clean[base] - b.corrupt[base])
    for m in GRID_METRICS:
        ga, gb = a.grids[m], b.grids[m]
        assert np.array_equal(np.isnan(ga), np.isnan(gb)), m
        ok = ~np.isnan(ga)
        # recovery = (m - corrupt) / (clean - corrupt): a rounding difference of its base metric, divided by den
        t = tol / min(1.0, den) if m == "recovery" else tol
        assert np.all(np.abs(ga[ok] - gb[ok]) <= t * np.maximum(1.0, np.abs(gb[ok]))), \
            (m, a.kind, a.mode, float(np.nanmax(np.abs(ga - gb))))


# ------------------------------------------------------------------------------------------------ fast == reference


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_fast_path_equals_reference_every_mode_and_kind(version):
    model = small_model(version)
    # two answer tokens (teacher-forced) and a second answer for the logit difference
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", answer2="Q", samples=3, noise=3.0, seed=3)
    specs = all_specs(version == "7")
    fast = TR.trace_grids(setup, specs, skip_unaffected=False, memory_budget=1 << 16)  # small batches too
    ref = TR.trace_grids(setup, specs, method="reference")
    for f, r in zip(fast, ref):
        assert f.complete and r.complete
        assert not np.isnan(f.grids["prob"]).any()
        assert_grids_close(f, r)
    # the restores do something (the test would be empty otherwise)
    assert np.ptp(fast[0].grids["logprob"]) > 1e-3


def test_fast_path_equals_reference_subject_replacement_single_token_answer():
    model = small_model("6")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", corruption="replace", alt_subject="xy")
    assert setup.n == 1 and setup.corrupt_seq.tolist()[3:5] == list(b"xy")
    specs = [TR.TraceSpec("block", m) for m in TR.MODES] + [TR.TraceSpec("att", window=3)]
    for f, r in zip(TR.trace_grids(setup, specs, skip_unaffected=False),
                    TR.trace_grids(setup, specs, method="reference")):
        assert_grids_close(f, r)
    assert setup.token_labels[3] == "c/x"
    with pytest.raises(InputError, match="same number of tokens"):
        TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", corruption="replace", alt_subject="xyz")


def test_embed_noise_site_fast_equals_reference():
    model = small_model("7")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=2, noise_site="embed")
    specs = [TR.TraceSpec("block", "both"), TR.TraceSpec("ffn", window=2)]
    for f, r in zip(TR.trace_grids(setup, specs), TR.trace_grids(setup, specs, method="reference")):
        assert_grids_close(f, r)


# ------------------------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_restoring_last_token_last_layer_gives_clean_and_before_subject_gives_corrupt(version):
    model = small_model(version)
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", answer2="Q", samples=4)
    T, L = setup.T, model.cfg.n_layer
    specs = [TR.TraceSpec("block", "resid"), TR.TraceSpec("block", "both"), TR.TraceSpec("block", "state"),
             TR.TraceSpec("att"), TR.TraceSpec("ffn")]
    # fast: the same cached tensors, so equal to float rounding; reference: row 0 of a batch of 1 + n is the clean
    # run, whose last bits may differ from the batch-1 baseline's (batch-size dependent matmul kernels)
    for method, tol in (("fast", 1e-6), ("reference", TOL)):
        res = TR.trace_grids(setup, specs, method=method, skip_unaffected=False)
        for r in res[:2]:  # the residual after the last block at the last token: the clean logits exactly
            for m in ("prob", "logprob", "first_prob", "logit_diff"):
                assert r.grids[m][T - 1, L - 1] == pytest.approx(setup.clean[m], abs=tol, rel=tol)
        for r in res:  # before the subject nothing differs between the runs: the corrupted metric
            for m in ("prob", "logprob", "logit_diff"):
                assert np.allclose(r.grids[m][:setup.subject[0]], setup.corrupt[m], atol=tol, rtol=tol)
        # the state after the last token reaches nothing (one answer token)
        assert np.allclose(res[2].grids["prob"][T - 1], setup.corrupt["prob"], atol=1e-7)
        assert np.allclose(res[0].grids["recovery"][T - 1, L - 1], 1.0, atol=1e-5)


@pytest.mark.parametrize("version", ["4", "6", "7"])
def test_zero_noise_every_cell_is_clean(version):
    model = small_model(version)
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", samples=3, noise=0.0)
    assert setup.corrupt["prob"] == pytest.approx(setup.clean["prob"], rel=1e-6)
    specs = [TR.TraceSpec("block", m) for m in TR.MODES] + [TR.TraceSpec("att"), TR.TraceSpec("ffn", window=1)]
    for r in TR.trace_grids(setup, specs):
        for m in ("prob", "logprob", "first_prob"):
            assert np.allclose(r.grids[m], setup.clean[m], rtol=1e-5, atol=1e-7), (r.kind, r.mode, m)


def test_noise_is_generated_once_with_the_documented_scale():
    model = small_model("6")
    a = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=5, noise=3.0, seed=11)
    b = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=5, noise=3.0, seed=11)
    assert torch.equal(a.noise_tensor, b.noise_tensor) and a.noise_tensor.shape == (5, 2, 32)
    emb = model.emb.weight.float()
    ln0 = model.blocks[0].ln0
    post = torch.nn.functional.layer_norm(emb, emb.shape[-1:], ln0.weight, ln0.bias)
    assert TR.noise_sigma(model, "resid_pre") == pytest.approx(float(post.double().std()), rel=1e-6)
    assert TR.noise_sigma(model, "embed") == pytest.approx(float(emb.double().std()), rel=1e-6)
    assert a.settings()["noise_std"] == pytest.approx(3.0 * TR.noise_sigma(model))


def test_metrics_aggregate_samples_as_mean_of_probabilities():
    rows = {"logP": torch.log(torch.tensor([0.1, 0.3], dtype=torch.float64)),
            "logp0": torch.log(torch.tensor([0.2, 0.4], dtype=torch.float64)),
            "ld": torch.tensor([1.0, 3.0], dtype=torch.float64)}
    m = TR._aggregate(rows, 2)[0]
    assert m["prob"] == pytest.approx(0.2) and m["logprob"] == pytest.approx(np.log(0.2))
    assert m["first_prob"] == pytest.approx(0.3) and m["logit_diff"] == pytest.approx(2.0)


def test_warning_when_clean_model_does_not_predict_the_answer():
    model = small_model("5.2")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=1)
    top = setup.clean_top[0]
    assert any("greedy prediction" in w for w in setup.warnings) == (top != ord("Z"))
    good = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, [top], samples=1)
    assert not any("greedy prediction" in w for w in good.warnings)
    if top != ord("Z"):
        assert setup.warnings


# ------------------------------------------------------------------------------------------------ subject spans


def test_subject_span_bytes_multibyte_and_mid_word():
    enc = BYTES.encode("Zoë visits the Eiffel Tower")
    assert TR.locate_subject(enc, "Zoë")[0] == (0, 4)  # ë is two bytes: both tokens
    assert TR.locate_subject(enc, "ë")[0] == (2, 4)
    start = len("Zoë visits the Ei".encode())
    assert TR.locate_subject(enc, "ffe")[0] == (start, start + 3)  # in the middle of a word
    # explicit character offsets pick a later occurrence
    enc2 = BYTES.encode("ab ab")
    assert TR.locate_subject(enc2, "ab")[0] == (0, 2)
    assert TR.locate_subject(enc2, "ab", (3, 5))[0] == (3, 5)
    with pytest.raises(InputError):
        TR.locate_subject(enc2, "ab", (2, 4))
    with pytest.raises(InputError):
        TR.locate_subject(enc2, "zz")


def _covering_tokens(enc, cs: int, ce: int) -> tuple[int, int]:
    """Independent check: every token whose span overlaps the characters, plus empty-span continuation tokens."""
    idx = [i for i, (s, e) in enumerate(enc.spans) if s < ce and e > cs]
    last = idx[-1]
    while last + 1 < len(enc.spans) and enc.spans[last + 1][0] == enc.spans[last + 1][1] == enc.spans[last][1]:
        last += 1
    return idx[0], last + 1


@pytest.mark.parametrize("kind", ["world", "hf"])
def test_subject_span_world_and_hf(kind):
    if kind == "hf":
        pytest.importorskip("tokenizers")
        tok = tokenizer_for(kind="hf", path=shared_file("tokenizers/20B_tokenizer.json"))
    else:
        try:
            tok = tokenizer_for(kind="world")
        except Exception:
            tok = tokenizer_for(kind="world", path=shared_file("tokenizers/rwkv_vocab_v20230424.txt"))
    prompt = "The Eiffel Tower is located in the city of"
    enc = tok.encode(prompt)
    for subject in ("The Eiffel Tower", "Eiffel", "ffe", "Tow", "city of"):
        (s0, s1), (cs, ce) = TR.locate_subject(enc, subject)
        assert (cs, ce) == (prompt.find(subject), prompt.find(subject) + len(subject))
        assert (s0, s1) == _covering_tokens(enc, cs, ce), subject
        covered = "".join(enc.token_texts[s0:s1])
        assert subject in covered  # the tokens hold the whole subject ...
        assert subject not in "".join(enc.token_texts[s0 + 1:s1]) and subject not in "".join(enc.token_texts[s0:s1 - 1])
    # mid-word: "ffe" sits inside a longer token, which is taken whole
    (s0, s1), _ = TR.locate_subject(enc, "ffe")
    assert len("".join(enc.token_texts[s0:s1])) > 3


def test_subject_span_drives_the_noise_rows():
    model = small_model("7")
    setup = TR.prepare_trace(model, BYTES, "xx Zoë yy", "ë", "Z", samples=2)
    assert setup.subject == (5, 7) and setup.noise_tensor.shape[1] == 2


# ------------------------------------------------------------------------------------------------ ablation


@pytest.mark.parametrize("version", ["4", "7"])
def test_ablation_sanity_and_batched_equals_per_layer(version):
    model = small_model(version)
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", answer2="Q", samples=3)
    for target in TR.ABLATION_TARGETS:  # replacing a value by itself changes nothing
        res = TR.ablate_layers(setup, target, "clean")
        for m, d in res.delta.items():
            # 0 up to float rounding (the batched forward vs the batch-1 clean run)
            assert np.allclose(d, 0.0, atol=TOL * max(1.0, abs(res.clean[m]))), (target, m, d)
    ref_ids = list(BYTES.encode("the quick brown fox").ids)
    for target, repl in [("block", "zero"), ("att", "mean"), ("ffn", "corrupt"), ("state", "zero"),
                         ("state", "corrupt"), ("block", "corrupt")]:
        fast = TR.ablate_layers(setup, target, repl, reference_tokens=ref_ids, memory_budget=1 << 18)
        slow = TR.ablate_layers(setup, target, repl, reference_tokens=ref_ids, method="reference")
        for m in fast.delta:
            assert np.allclose(fast.delta[m], slow.delta[m], atol=1e-6, rtol=1e-5), (target, repl, m)
    # zero-ablating every block changes the answer somewhere
    assert np.abs(TR.ablate_layers(setup, "block", "zero").delta["logprob"]).max() > 1e-3
    # resetting the state after the last token cannot matter for a one-token answer
    one = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=1)
    res = TR.ablate_layers(one, "state", "zero", reset_token=one.T - 1, reset_shift=True)
    assert np.allclose(res.delta["logprob"], 0.0, atol=TOL)  # vs the batch-1 baseline: rounding only
    assert np.ptp(res.ablated["logprob"]) < 1e-9  # every layer's reset gives the unablated rows bit for bit
    with pytest.raises(InputError):
        TR.ablate_layers(setup, "att", "mean")  # no reference text


def test_ablation_zero_block_equals_manual_skip():
    """Zeroing layer l's whole contribution at every token = a model whose block l is the identity."""
    model = small_model("6")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=1)
    res = TR.ablate_layers(setup, "block", "zero")
    l = 1
    with model.hooks([(f"blocks.{l}.hook_resid_pre", lambda x, h: setattr(h, "saved", x)),
                      (f"blocks.{l}.hook_resid_post", lambda x, h: model.hook_points[f"blocks.{l}.hook_resid_pre"].saved)]):
        lg, _ = model(setup.seq)
    p = torch.softmax(lg[0, setup.T - 1].double(), -1)[ord("Z")]
    assert res.ablated["prob"][l] == pytest.approx(float(p), rel=1e-5)


# ------------------------------------------------------------------------------------------------ progress, stop, files


def test_progress_and_stop_give_a_partial_result():
    model = small_model("5.2")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Z", samples=2)
    calls = []
    full = TR.trace_grids(setup, [TR.TraceSpec(), TR.TraceSpec("att")], progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2 * setup.T * 3, 2 * setup.T * 3) and all(a[0] < b[0] for a, b in zip(calls, calls[1:]))
    assert full[0].complete
    stop = threading.Event()
    partial = TR.trace_grids(setup, [TR.TraceSpec()], progress=lambda d, t: stop.set() if d >= 9 else None,
                             should_stop=stop)
    assert not partial[0].complete
    g = partial[0].grid
    assert np.isnan(g).any() and not np.isnan(g).all()
    done = ~np.isnan(g)
    assert np.allclose(g[done], full[0].grid[done])
    assert TR.trace_grids(setup, [TR.TraceSpec()], should_stop=lambda: True)[0].complete is False


def test_npz_round_trip_and_csv(tmp_path):
    model = small_model("7")
    res = TR.trace(model, BYTES, PROMPT, SUBJECT, "Z", answer2="Q", samples=2, kind="att", window=2,
                   metric="logprob")
    path = tmp_path / "trace.npz"
    res.to_npz(path)
    with np.load(path) as z:
        for key in ("grid", "clean", "corrupt", "metric", "tokens", "subject", "settings", "grid_prob"):
            assert key in z.files
        assert z["grid"].shape == (len(PROMPT), 3) and str(z["metric"]) == "logprob"
        assert z["tokens"].tolist() == list(PROMPT.encode()) and z["subject"].tolist() == [3, 5]
        assert float(z["clean"]) == pytest.approx(res.clean["logprob"])
    back = TR.TraceResult.from_npz(path)
    assert back.metric == "logprob" and back.settings["window"] == 2 and back.kind == "att"
    for m in res.grids:
        assert np.array_equal(res.grids[m], back.grids[m], equal_nan=True)
    csv = res.to_csv().splitlines()
    assert csv[0].startswith("token_index,token,subject,layer_0,layer_1") and len(csv) == len(PROMPT) + 1


def test_cli(tmp_path):
    from rwkv_core.io.synthetic import save_checkpoint

    sd = random_state_dict("7", n_layer=2, n_embd=32, head_size=16, vocab_size=256, seed=5)
    ckpt = tmp_path / "m.pth"
    save_checkpoint(sd, ckpt)
    from rwkv_core.cli import main

    out = tmp_path / "g.npz"
    assert main(["trace", str(ckpt), "--prompt", PROMPT, "--subject", SUBJECT, "--answer", "Z", "--mode", "resid",
                 "--samples", "2", "--out", str(out)]) == 0
    with np.load(out) as z:
        assert z["grid"].shape == (len(PROMPT), 2) and str(z["metric"]) == "prob"
        assert str(z["mode"]) == "resid" and str(z["kind"]) == "block"


def test_reverse_digits_tokenizer_and_default_example():
    from rwkv_core.io.checkpoint import load_model

    model = load_model(shared_file("260123_reverse_L2_only_rwkv7.pth"))
    tok = tokenizer_for(model.cfg.vocab_size)
    assert tok.kind == "digits" and tok.encode("12,#").ids == [1, 2, 10, 11]
    with pytest.raises(InputError):
        tok.encode("1a")
    setup = TR.prepare_trace(model, tok, "12345,54", "3", "3")
    assert not setup.warnings and setup.clean["prob"] > 0.99 and setup.corrupt["prob"] < 0.3
    fast = TR.trace_grids(setup, [TR.TraceSpec(), TR.TraceSpec("att")])
    ref = TR.trace_grids(setup, [TR.TraceSpec(), TR.TraceSpec("att")], method="reference")
    for f, r in zip(fast, ref):
        assert_grids_close(f, r)


# ------------------------------------------------------------------------------------------------ figures


def test_figures():
    from rwkv_core.figures import tracing as FT
    from rwkv_core.figures.common import image_config

    model = small_model("6")
    res = TR.trace(model, BYTES, "a<b>&c d", "<b>", "Z", samples=2)
    fig = FT.trace_heatmap(res)
    heat = fig.data[0]
    assert heat.colorscale[0][1] != heat.colorscale[-1][1] and fig.layout.yaxis.autorange == "reversed"
    assert list(fig.layout.yaxis.ticktext) == ["a", "&lt;*", "b*", "&gt;*", "&amp;", "c", "␣", "d"]
    assert list(heat.x) == [0, 1, 2] and heat.zmin == pytest.approx(res.corrupt["prob"])
    assert "p(" in heat.colorbar.title.text and "low" in fig.layout.title.text
    assert "layer %{x}" in heat.hovertemplate
    ffn = TR.trace(model, BYTES, "a<b>&c d", "<b>", "Z", samples=2, kind="ffn")
    assert FT.trace_heatmap(ffn).data[0].colorscale == FT.trace_heatmap(ffn.with_metric("logprob")).data[0].colorscale
    setup = TR.prepare_trace(model, BYTES, "a<b>&c d", "<b>", "Z", samples=2)
    bars = FT.ablation_bars(TR.ablate_layers(setup, "att", "zero"), "logprob")
    assert list(bars.data[0].x) == [0, 1, 2]
    assert image_config("a b/c", "svg")["toImageButtonOptions"] == {"format": "svg", "filename": "a_b_c", "scale": 2}


def test_gpu_out_of_memory_splits_the_batch_and_gives_the_same_grid(monkeypatch):
    """A batch that does not fit (simulated: more than 2 cells raises CUDA's OOM error) is halved and retried; the
    grid equals the unconstrained one. A single cell that does not fit is a one-line InputError."""
    model = small_model("6")
    setup = TR.prepare_trace(model, BYTES, PROMPT, SUBJECT, "Zq", samples=2, seed=3)
    spec = [TR.TraceSpec("block", "both", 10, True)]
    want = TR.trace_grids(setup, spec)[0].grids["prob"]
    real = TR._FastTracer.run_cells
    calls = []

    def tight(self, spec_, t, seg0, batch, base):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, spec_, t, seg0, batch, base)

    monkeypatch.setattr(TR._FastTracer, "run_cells", tight)
    got = TR.trace_grids(setup, spec)[0].grids["prob"]
    assert max(calls) > 2 and min(calls) <= 2  # it did split
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    def never(self, *a):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(TR._FastTracer, "run_cells", never)
    with pytest.raises(InputError, match="out of memory"):
        TR.trace_grids(setup, spec)


def test_a_replacement_of_another_length_names_both_counts_and_one_that_fits_is_suggested():
    """Subject replacement needs the subject's token count: the error says both counts in one line, and
    `suggest_replacement` finds one that fits for a text, a digits-alphabet and an ids-typed tokenizer."""
    from rwkv_core.io.tokenizer import CharTokenizer, IdsTokenizer

    enc = BYTES.encode(PROMPT)
    with pytest.raises(TR.ReplacementLengthError, match=r"'xyz' has 3 token\(s\) and the subject 'cd' 2"):
        TR.replacement_ids(BYTES, enc, (3, 5), (3, 5), "xyz")
    eiffel = "The Eiffel Tower is located in the city of"
    assert TR.suggest_replacement(BYTES, eiffel, "The Eiffel Tower", ("The Colosseum", "The Space Needle")) \
        == "The Space Needle"  # 16 bytes, as the subject
    assert TR.suggest_replacement(BYTES, PROMPT, "cd", ("The Colosseum",)) == "Th"  # cut short to fit
    # no start of the candidates is long enough: the subject's bytes each moved to the next id
    assert TR.suggest_replacement(BYTES, eiffel, "The Eiffel Tower is located", ("Big Ben", "Rome")) \
        == "Uif!Fjggfm!Upxfs!jt!mpdbufe"
    digits = CharTokenizer()
    assert TR.suggest_replacement(digits, "12345,54", "345", ("777",)) == "777"
    assert TR.suggest_replacement(digits, "12345,54", "345") == "456"  # each token moved to the next id
    ids = IdsTokenizer(777)
    alt = TR.suggest_replacement(ids, "1, 2, 3, 4", "2, 3", ("The Colosseum",))
    got = TR.replacement_ids(ids, ids.encode("1, 2, 3, 4"), (1, 3), (3, 7), alt)
    assert len(got) == 4 and got[0] == 1 and got[3] == 4 and got[1:3] != [2, 3]
    assert TR.suggest_replacement(BYTES, PROMPT, "not in it", ("xy",)) is None


def test_a_space_token_is_a_visible_tick_and_starred_in_the_subject():
    """A space token shows as ␣ on the tracing heat map's rows and hover, inside the subject as "␣*" (never a bare
    star, which read as a marker with no token)."""
    from rwkv_core.figures import tracing as FT

    res = TR.trace(small_model("6"), BYTES, "ab c d", "c d", "Z", samples=1)
    fig = FT.trace_heatmap(res)
    assert list(fig.layout.yaxis.ticktext) == ["a", "b", "␣", "c*", "␣*", "d*"]
    assert fig.data[0].customdata[4][0] == "␣*"
