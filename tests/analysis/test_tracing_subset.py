"""Causal tracing of a subset of the prompt's tokens (issue 19, item 3): the rows computed equal the full grid's rows
(fast and reference paths), the others are NaN, the fast path runs cells only at those rows, the cost counts only
them, the proposal picks the subject, the token after it, a few between and the last token, and the command's
--tokens reaches the npz. On the demo models in the repository (models/demo-*.pth)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rwkv_core.analysis import tracing as TR
from rwkv_core.analysis.tracing.results import _finish
from rwkv_core.errors import InputError
from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.jobs import cost as COST

MODELS = Path(__file__).resolve().parents[2] / "models"
PROMPT = "The Eiffel Tower is located in the city of"  # bytes: the subject is tokens 0..15, T = 42
SUBJECT, ANSWER = "The Eiffel Tower", " Paris"
SUBSET = [2, 15, 16, 30, 41]  # in the subject, its last token, the token after it, between, the last token


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Tiny tensors: one thread (tests/conftest.py)."""


_SETUPS: dict = {}


def demo_setup(version: str) -> TR.TraceSetup:
    if version not in _SETUPS:
        model = load_model(MODELS / f"demo-v{version}.pth")
        tok = tokenizer_for(model.cfg.vocab_size, kind="bytes")
        _SETUPS[version] = TR.prepare_trace(model, tok, PROMPT, SUBJECT, ANSWER, answer2="London", samples=2, seed=2)
    return _SETUPS[version]


def assert_rows_equal(part: TR.TraceResult, full: TR.TraceResult, rows: list[int], tol: float = 1e-6) -> None:
    """The subset's grids equal the full grids at `rows` and are NaN in every other row, for every metric."""
    others = [t for t in range(full.grid.shape[0]) if t not in rows]
    for m in TR.METRICS:
        g, f = part.grids[m], full.grids[m]
        assert np.isnan(g[others]).all(), m
        assert np.array_equal(np.isnan(g[rows]), np.isnan(f[rows])), m
        ok = ~np.isnan(f[rows])
        assert np.all(np.abs(g[rows][ok] - f[rows][ok]) <= tol * np.maximum(1.0, np.abs(f[rows][ok]))), m
    assert part.complete and part.settings["tokens"] == rows and part.traced_tokens == rows


@pytest.mark.parametrize("version", ["6", "7"])
def test_subset_rows_equal_the_full_grid_on_the_fast_path(version, monkeypatch):
    setup = demo_setup(version)
    specs = [TR.TraceSpec("block", "both", 2), TR.TraceSpec("block", "state", 2), TR.TraceSpec("ffn", window=2)]
    full = TR.trace_grids(setup, specs)
    assert full[0].settings["tokens"] is None and full[0].traced_tokens == list(range(setup.T))
    # the fast path runs cells only at the rows asked for (advancing the states through the others is not a cell)
    ran: list[int] = []
    real = TR._FastTracer.run_cells
    monkeypatch.setattr(TR._FastTracer, "run_cells", lambda self, spec, t, *a: ran.append(t) or real(self, spec, t, *a))
    calls: list[tuple[int, int]] = []
    part = TR.trace_grids(setup, specs, tokens=[41, 2, 16, 15, 30, 2], progress=lambda d, t: calls.append((d, t)))
    assert set(ran) == set(SUBSET)
    L = setup.model.cfg.n_layer
    assert calls[-1] == (len(specs) * len(SUBSET) * L,) * 2  # progress counts the subset's cells
    for p, f in zip(part, full):
        assert_rows_equal(p, f, SUBSET)
    assert np.ptp(part[0].grids["prob"][SUBSET]) > 1e-4  # the rows differ: the comparison is not empty


def test_subset_rows_equal_the_full_grid_on_the_reference_path():
    """The reference path's subset rows are its full grid's rows: each cell one full forward (`reference_cell`),
    the other rows NaN; the fast subset agrees with it to float32 rounding."""
    setup = demo_setup("7")
    spec = TR.TraceSpec("block", "both", 2)
    rows, L = [3, 16, 41], setup.model.cfg.n_layer
    part = TR.trace_grids(setup, [spec], method="reference", tokens=[16, 41, 3])[0]
    grids = {m: np.full((setup.T, L), np.nan) for m in TR.METRICS}
    for t in rows:
        for l in range(L):
            for m, v in TR.reference_cell(setup, spec, t, l).items():
                grids[m][t, l] = v
    full = _finish(setup, spec, grids, "prob", True, 0.0, "reference")  # the full reference grid at these rows
    assert_rows_equal(part, full, rows)
    fast = TR.trace_grids(setup, [spec], tokens=rows)[0]
    assert np.nanmax(np.abs(fast.grids["prob"] - part.grids["prob"])) < 1e-5


def test_a_bad_subset_is_one_line_and_the_npz_records_the_rows(tmp_path):
    setup = demo_setup("7")
    with pytest.raises(InputError, match="outside the prompt"):
        TR.trace_grids(setup, [TR.TraceSpec()], tokens=[3, 42])
    with pytest.raises(InputError, match="empty"):
        TR.trace_grids(setup, [TR.TraceSpec()], tokens=[])
    res = TR.trace_grids(setup, [TR.TraceSpec("block", "state")], tokens=[20, 5], metric="logprob")[0]
    res.to_npz(tmp_path / "t.npz")
    back = TR.TraceResult.from_npz(tmp_path / "t.npz")
    assert back.traced_tokens == [5, 20] and back.complete
    with np.load(tmp_path / "t.npz") as z:
        assert json.loads(str(z["settings"]))["tokens"] == [5, 20]
        assert np.isfinite(z["grid"][[5, 20]]).all() and np.isnan(np.delete(z["grid"], [5, 20], 0)).all()


# ------------------------------------------------------------------------------------------------ proposal


def test_propose_tokens_edge_cases():
    # a long prompt: the subject, the token after, four evenly spaced between, the last token
    assert TR.propose_tokens(1031, (3, 6)) == [3, 4, 5, 6, 211, 416, 620, 825, 1030]
    assert TR.propose_tokens(1000, (500, 501), n_between=2) == [500, 501, 667, 833, 999]
    # the subject at the end: its tokens (the last among them), nothing after it
    assert TR.propose_tokens(1000, (990, 1000)) == list(range(990, 1000))
    # the subject just before the last token: the last token is the token after it
    assert TR.propose_tokens(1000, (10, 12))[:4] == [10, 11, 12, 209] and TR.propose_tokens(100, (97, 99)) == [97, 98, 99]
    # a one-token subject
    assert TR.propose_tokens(500, (0, 1), n_between=0) == [0, 1, 499]
    # few tokens between the subject's end and the last: all of them
    assert TR.propose_tokens(58, (50, 53)) == list(range(50, 58))
    # a short prompt: every token
    assert TR.propose_tokens(8, (2, 4)) == list(range(8)) and TR.propose_tokens(1, (0, 1)) == [0]
    with pytest.raises(InputError):
        TR.propose_tokens(10, (8, 12))


def test_positions_as_typed():
    assert TR.parse_positions(" 3, 7,10-12 ,7", 20) == [3, 7, 10, 11, 12] and TR.parse_positions("", 5) is None
    assert TR.format_positions([12, 3, 10, 11, 7]) == "3, 7, 10-12"
    assert TR.parse_positions(TR.format_positions(TR.propose_tokens(1031, (3, 6))), 1031) == TR.propose_tokens(1031, (3, 6))
    with pytest.raises(InputError, match="outside the prompt"):
        TR.parse_positions("3, 20", 20)
    with pytest.raises(InputError, match="numbers and ranges"):
        TR.parse_positions("3, x", 20)


# ------------------------------------------------------------------------------------------------ cost


def test_the_cost_of_a_subset_is_that_of_its_rows():
    model = load_model(MODELS / "demo-v7.pth")
    cfg, T, K, s0, n = model.cfg, 1000, 2, 100, 10
    specs = [TR.TraceSpec("block", "both", 2), TR.TraceSpec("att", window=2), TR.TraceSpec("block", "state")]
    full = COST.trace_work(cfg, T, K, s0, n, specs)
    a, b = [100, 101, 400, 999], [0, 50, 102, 500, 998]
    wa, wb = COST.trace_work(cfg, T, K, s0, n, specs, a), COST.trace_work(cfg, T, K, s0, n, specs, b)
    assert wa["cells"] == len(specs) * len(a) * cfg.n_layer and full["cells"] == len(specs) * T * cfg.n_layer
    # each row's work is its own: the work of two disjoint subsets adds up to that of their union
    wab = COST.trace_work(cfg, T, K, s0, n, specs, a + b)
    for k in ("cells", "cells_run", "row_units", "head_rows"):
        assert wa[k] + wb[k] == wab[k], k
    assert COST.trace_work(cfg, T, K, s0, n, specs, range(T)) == full
    # rows before the subject run no cell; the states advance only up to the last row run
    assert COST.trace_work(cfg, T, K, s0, n, specs, [0, 50])["row_units"] == 0
    assert COST.trace_work(cfg, T, K, s0, n, specs, [100, 400])["steps"] == 401
    speed = COST.Speed(1e-7, 1e-4, 1e-6, "cpu")
    est = lambda tokens: COST.estimate_trace(model, T, K, s0, n, specs, 1 << 40, speed=speed, tokens=tokens)  # noqa
    proposed = TR.propose_tokens(T, (s0, s0 + 3))
    assert est(proposed).cells == len(specs) * len(proposed) * cfg.n_layer
    assert est(proposed).seconds < est(None).seconds / 20
    assert est(proposed).peak_bytes == est(None).peak_bytes  # the same caches and batches


def test_cli_tokens_round_trip(tmp_path, capsys):
    from rwkv_core.cli import main

    out = tmp_path / "g.npz"
    args = ["trace", str(MODELS / "demo-v7.pth"), "--prompt", PROMPT, "--subject", SUBJECT, "--answer", ANSWER,
            "--samples", "2", "--mode", "resid", "--out", str(out)]
    assert main(args + ["--tokens", "16-17, 3,41"]) == 0
    assert "4 traced: 3, 16-17, 41" in capsys.readouterr().out
    back = TR.TraceResult.from_npz(out)
    assert back.traced_tokens == [3, 16, 17, 41] and back.settings["tokens"] == [3, 16, 17, 41]
    model = load_model(MODELS / "demo-v7.pth")
    expected = TR.trace(model, tokenizer_for(model.cfg.vocab_size, kind="bytes"), PROMPT, SUBJECT, ANSWER,
                        samples=2, mode="resid", tokens=[3, 16, 17, 41])
    np.testing.assert_allclose(back.grid, expected.grid, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert main(args + ["--tokens", "proposed"]) == 0
    assert TR.TraceResult.from_npz(out).traced_tokens == TR.propose_tokens(len(PROMPT), (0, 16))
    assert main(args + ["--tokens", "3,99"]) == 2
    assert "token position 99 is outside the prompt (positions 0 to 41)" in capsys.readouterr().err
