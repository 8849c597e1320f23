"""The command line (`python -m rwkv_core ...`, run as subprocesses): what `export` writes equals what the model and
the official `rwkv` package compute; decay, train and evaluate-demo through the one argparse tree; anticipated
errors are one line and exit status 2."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rwkv_core.io.checkpoint import load_checkpoint, load_model
from rwkv_core.analysis.scores import capture_score_inputs, full_scores_all
from rwkv_core.io.synthetic import save_checkpoint, write_random_checkpoint
from rwkv_core.io.trace_file import load_trace
from tests.conftest import REPO, shared_file
from tests.oracle_rwkv_pip import official_forward


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rwkv_core", *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_info_prints_the_architecture():
    out = cli("info", shared_file("tiny-rwkv-6v0-3m-Q5_1.bin"))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert {k: info[k] for k in ("version", "n_layer", "n_embd", "n_head", "head_size", "dim_ffn", "vocab_size")} == \
        {"version": "6", "n_layer": 12, "n_embd": 128, "n_head": 16, "head_size": 8, "dim_ffn": 448, "vocab_size": 256}
    assert info["n_params"] == 3_334_656 and info["dtype"] == "Q5_1"


@pytest.mark.parametrize("version", ["5.2", "7"])
def test_export_writes_what_the_model_computes(tmp_path, version):
    ckpt = tmp_path / "m.pth"
    write_random_checkpoint(ckpt, version, n_layer=3, n_embd=64, head_size=16, seed=2)
    out = cli("export", ckpt, "--text", "Hello, trace!", "--layers", "0,2", "--scores", "--out", tmp_path / "t.npz")
    assert out.returncode == 0, out.stderr
    tr = load_trace(tmp_path / "t.npz")
    tokens = list("Hello, trace!".encode())
    assert tr.tokens.tolist() == tokens and tr.layers == [0, 2]
    model = load_model(ckpt)
    logits, _, cache = model.run_with_cache(tokens)
    np.testing.assert_allclose(tr.arrays["logits"], logits[0].numpy(), rtol=1e-5, atol=1e-5)
    for l in (0, 2):
        np.testing.assert_allclose(tr.layer("resid", l), cache[f"blocks.{l}.hook_resid_post"][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(tr.layer("w", l), cache[f"blocks.{l}.att.hook_w"][0].numpy(), rtol=1e-6)
        for name in ("r", "k", "v"):
            assert tr.layer(name, l).shape == (len(tokens), 64)
        si = capture_score_inputs(model, tokens, layers=[l])[0]
        np.testing.assert_allclose(tr.layer("attn", l), full_scores_all(si).numpy(), rtol=1e-4, atol=1e-5)
        assert tr.layer("span", l).shape == (4, len(tokens), len(tokens))
        assert np.all(np.triu(tr.layer("attn", l)[0], 1) == 0)
    if version == "7":
        assert "a_l0" in tr.arrays and "kk_l2" in tr.arrays and "r_k_l0" in tr.arrays
    assert "layer 1" not in tr.meta and "r_l1" not in tr.arrays
    assert tr.meta["config"]["version"] == version and tr.meta["token_texts"][0] == "H"


def test_export_options_make_the_file_smaller_and_read_the_same(tmp_path):
    """--logits-topk K, --float16 and --no-residual: the top-K of the logits, float16 activations, no resid_l{l};
    a smaller file whose predictions and activations read as the full file's (within float16 rounding)."""
    ckpt = tmp_path / "m.pth"
    write_random_checkpoint(ckpt, "7", n_layer=2, n_embd=64, head_size=16, seed=3)
    text = "Hello, smaller trace!"
    full = cli("export", ckpt, "--text", text, "--out", tmp_path / "full.npz")
    small = cli("export", ckpt, "--text", text, "--logits-topk", "5", "--float16", "--no-residual",
                "--out", tmp_path / "small.npz")
    assert full.returncode == 0 and small.returncode == 0, full.stderr + small.stderr
    assert " MB" in small.stdout
    a, b = load_trace(tmp_path / "full.npz"), load_trace(tmp_path / "small.npz")
    assert (tmp_path / "small.npz").stat().st_size < 0.6 * (tmp_path / "full.npz").stat().st_size
    assert "logits" not in b.arrays and b.arrays["logits_topk_ids"].shape == (len(text), 5)
    assert b.arrays["r_l1"].dtype == np.float16 and not any(k.startswith("resid_") for k in b.arrays)
    assert np.array_equal(a.predictions(5)[0], b.predictions(5)[0])
    np.testing.assert_allclose(b.layer("ktilde", 1), a.layer("ktilde", 1), atol=2e-3 * np.abs(a.layer("ktilde", 1)).max())
    bad = cli("export", ckpt, "--text", text, "--logits-topk", "-1", "--out", tmp_path / "u.npz")
    assert bad.returncode == 2 and "logits_topk" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_export_with_token_ids_and_bad_options(tmp_path):
    ckpt = shared_file("tiny-rwkv-4v0-660K-FP32.bin")
    ok = cli("export", ckpt, "--tokens", "34,105,110", "--out", tmp_path / "t.npz")
    assert ok.returncode == 0, ok.stderr
    expected = np.fromfile(shared_file("expected-logits-4v0-660K.bin"), dtype="<f4")
    assert np.abs(load_trace(tmp_path / "t.npz").arrays["logits"][-1] - expected).max() < 1e-4
    bad = cli("export", ckpt, "--tokens", "1,x", "--out", tmp_path / "u.npz")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--tokens" in bad.stderr
    bad = cli("export", ckpt, "--tokens", "1,2", "--layers", "9", "--out", tmp_path / "u.npz")
    assert bad.returncode == 2 and "layer 9" in bad.stderr


def test_decay_csv(tmp_path):
    ckpt = shared_file("tiny-rwkv-6v0-1m-FP32.bin")
    out = cli("decay", ckpt, "--out", tmp_path / "d.csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    assert len(rows) == 12 * 64 and set(rows[0]) >= {"layer", "head", "channel", "decay", "half_life"}
    d = np.array([float(r["decay"]) for r in rows])
    assert np.all((d > 0) & (d < 1))
    # v6 static decay from the file's own tensor (rwkv.cpp stores time_decay as is): exp(-exp(time_decay))
    td = load_checkpoint(ckpt).state_dict["blocks.3.att.time_decay"].double().reshape(-1).numpy()  # [C]
    np.testing.assert_allclose(d[3 * 64:4 * 64], np.exp(-np.exp(td)), rtol=1e-12)
    stdout = cli("decay", ckpt)  # no --out: the CSV on standard output, the same table
    assert stdout.returncode == 0 and stdout.stdout == (tmp_path / "d.csv").read_text()


def test_decay_errors_are_one_line_with_status_2(tmp_path):
    out = cli("decay", tmp_path / "missing.pth", "--out", tmp_path / "x.csv")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "missing.pth" in out.stderr and not (tmp_path / "x.csv").exists()


def test_export_without_a_tokenizer_equals_the_official_package(tmp_path):
    """A vocabulary of 777 rows matches no tokenizer: with explicit ids none is needed; texts are the ids."""
    ckpt = tmp_path / "v777.pth"
    write_random_checkpoint(ckpt, "7", n_layer=2, n_embd=32, head_size=16, vocab_size=777, seed=4)
    out = cli("export", ckpt, "--tokens", "1,2,3,776,0", "--out", tmp_path / "t.npz")
    assert out.returncode == 0, out.stderr
    tr = load_trace(tmp_path / "t.npz")
    assert tr.tokens.tolist() == [1, 2, 3, 776, 0]
    assert tr.meta["token_texts"] == ["1", "2", "3", "776", "0"] and tr.meta["tokenizer"] == "ids"
    want = official_forward(ckpt, [1, 2, 3, 776, 0], mode="seq", version="7")["logits"]  # [T, 777]
    np.testing.assert_allclose(tr.arrays["logits"], want, rtol=1e-4, atol=1e-5)
    bad = cli("export", ckpt, "--tokens", "1,777", "--out", tmp_path / "u.npz")
    assert bad.returncode == 2 and "777" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("name,version", [("tiny-rwkv-6v0-1m-FP32.bin", "6"), ("tiny-rwkv-7v0-834K-FP32.bin", "7")])
def test_export_logits_equal_the_official_package(tmp_path, name, version):
    """The tiny rwkv.cpp models: every position's logits in the trace against the official package (seq mode)."""
    ckpt = shared_file(name)
    tokens = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
    out = cli("export", ckpt, "--tokens", ",".join(map(str, tokens)), "--out", tmp_path / "t.npz")
    assert out.returncode == 0, out.stderr
    tr = load_trace(tmp_path / "t.npz")
    pth = tmp_path / "m.pth"  # the package reads .pth only: the same tensors, official layout
    save_checkpoint(load_checkpoint(ckpt).state_dict, pth)
    want = official_forward(pth, tokens, mode="seq", version=version)["logits"]  # [T, 256]
    np.testing.assert_allclose(tr.arrays["logits"], want, rtol=1e-4, atol=1e-4)
    assert tr.meta["format_version"] == 3 and tr.meta["tokenizer"] == "bytes"


TINY_TRAIN = ["--version", "7", "--n-layer", "2", "--n-embd", "32", "--head-size", "16", "--ctx-len", "24",
              "--batch", "2", "--data-bytes", "120000", "--threads", "1", "--warmup", "2", "--seed", "3"]


def test_train_and_evaluate_demo_through_the_tree(tmp_path):
    """`python -m rwkv_core train` and the `python -m rwkv_core.train` shim run the same training; the model card
    records the phase's arguments; `evaluate-demo` reads the model."""
    a = cli("train", *TINY_TRAIN, "--steps", "3", "--out", tmp_path / "a.pth", "--card", tmp_path / "card.json")
    assert a.returncode == 0, a.stderr
    b = subprocess.run([sys.executable, "-m", "rwkv_core.train", *TINY_TRAIN, "--steps", "3", "--out",
                        tmp_path / "b.pth"], capture_output=True, text=True, cwd=REPO)
    assert b.returncode == 0, b.stderr
    sa, sb = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pth", "b.pth"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    phase = json.loads((tmp_path / "card.json").read_text())["training"]["phases"][0]
    assert phase["args"][:2] == ["--version", "7"] and "--steps" in phase["args"]
    ev = cli("evaluate-demo", tmp_path / "a.pth", "--probes", "2", "--head-probes", "2", "--threads", "1")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["probes"] == 2 and result["n_layer"] == 2 and {"fact_recall_heldout", "retrieval_kv"} <= set(result)


def test_every_command_is_in_one_tree():
    top = cli("--help")
    assert top.returncode == 0
    for name in ("info", "export", "decay", "trace", "patch", "train", "evaluate-demo"):
        assert name in top.stdout
    assert "--kv-pairs" in cli("train", "--help").stdout and "--head-probes" in cli("evaluate-demo", "--help").stdout
    bad = cli("train", "--out", "x.pth")  # neither --steps nor --minutes
    assert bad.returncode == 2 and bad.stderr == "error: give --steps or --minutes\n"


def test_patch_command_writes_the_grids_the_engine_computes(tmp_path):
    """`patch`: grid_{site} / raw_{site} [T, L] equal the reference loop (one full forward per cell) in this process;
    --method atp equals the engine's attribution patching; meta holds settings, alignment and token texts."""
    from rwkv_core.analysis.patching import patch_grids, prepare_pair
    from rwkv_core.analysis.patching.attribution import atp_grids
    from rwkv_core.io.tokenizer import ByteTokenizer

    ckpt = tmp_path / "v7.pth"
    write_random_checkpoint(ckpt, "7", n_layer=2, n_embd=32, head_size=16, vocab_size=256, seed=5)
    args = ["--clean", "ab cdef gh", "--corrupt", "ab XY gh", "--answer", " Zq", "--counter", " Qz",
            "--align", "spans", "--clean-span", "cdef", "--corrupt-span", "XY"]
    out = cli("patch", ckpt, *args, "--out", tmp_path / "g.npz")
    assert out.returncode == 0, out.stderr
    model = load_model(ckpt)
    pair = prepare_pair(model, ByteTokenizer(), "ab cdef gh", "ab XY gh", " Zq", " Qz", align_by="spans",
                        clean_span="cdef", corrupt_span="XY")
    ref = patch_grids(pair, method="reference")
    with np.load(tmp_path / "g.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert float(z["clean_value"]) == pytest.approx(pair.clean_value, abs=1e-6)
        for s in ("resid", "att", "ffn", "state"):
            assert z[f"grid_{s}"].shape == (11, 2)  # 10 prompt bytes + the answers' shared space; 0-based layers
            np.testing.assert_allclose(z[f"raw_{s}"], ref.raw[s], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(z[f"grid_{s}"], pair.normalise(ref.raw[s]), atol=1e-4)
    assert meta["method"] == "exact" and meta["alignment"]["how"] == "spans"
    assert meta["alignment"]["clean_to_corrupt"][3:7] == [-1, -1, 3, 4] and meta["clean_tokens"][3] == "c"
    assert meta["corrupt_tokens"][3:5] == ["X", "Y"] and meta["answer"] == " Zq" and meta["counter"] == " Qz"
    out = cli("patch", ckpt, *args, "--method", "atp", "--sites", "state,resid", "--out", tmp_path / "a.npz")
    assert out.returncode == 0, out.stderr
    atp = atp_grids(pair, ("state", "resid"))
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert sorted(k for k in z.files if k.startswith("raw_")) == ["raw_resid", "raw_state"]
        np.testing.assert_allclose(z["raw_state"], atp.raw["state"], atol=1e-5, rtol=1e-4)


def test_patch_command_bad_input_is_one_line(tmp_path):
    ckpt = tmp_path / "v6.pth"
    write_random_checkpoint(ckpt, "6", n_layer=2, n_embd=32, head_size=16, vocab_size=256, seed=5)
    base = ["patch", ckpt, "--clean", "ab cd", "--corrupt", "ab xy", "--answer", " Z", "--counter", " Q",
            "--out", tmp_path / "g.npz"]
    for extra, msg in ((["--sites", "resid,mlp"], "unknown patching site 'mlp'"),
                       (["--align", "spans", "--clean-span", "cd", "--corrupt-span", "zz"], "does not occur")):
        out = cli(*base, *extra)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
        assert msg in out.stderr
    assert not (tmp_path / "g.npz").exists()


def test_patch_command_token_options_in_process(tmp_path, capsys):
    """--tokens checks (in this process: `main` as the command runs it)."""
    from rwkv_core.cli import main

    ckpt = tmp_path / "v6.pth"
    write_random_checkpoint(ckpt, "6", n_layer=2, n_embd=32, head_size=16, vocab_size=256, seed=5)
    base = ["patch", str(ckpt), "--clean", "ab cd", "--corrupt", "ab xy", "--answer", " Z", "--counter", " Q",
            "--out", str(tmp_path / "g.npz")]
    for extra, msg in ((["--tokens", "99"], "between 0 and 5"), (["--method", "atp", "--tokens", "1"],
                                                                 "--tokens selects cells")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, err
    assert main(base + ["--tokens", "4,5", "--sites", "att"]) == 0
    with np.load(tmp_path / "g.npz", allow_pickle=False) as z:
        g = z["grid_att"]
        assert np.isnan(g[:4]).all() and np.isfinite(g[4:]).all() and json.loads(str(z["meta"]))["tokens"] == [4, 5]
