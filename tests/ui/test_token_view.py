"""The token view's data: hover rows sent compactly (binary ids and probabilities, each text once) and read back the
same, values short and NaN as null, line breaks as indices, the height in lines."""
from __future__ import annotations

import json

import numpy as np

from inspector_ui.widgets import prediction_tips, tip_rows, token_view


def test_hover_rows_travel_compactly_and_read_back():
    T, k = 4096, 16
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(65536, size=k, replace=False) for _ in range(T)])
    probs = rng.dirichlet(np.ones(k), size=T)
    tokens = [0] + [int(t) for t in ids[:-1, 3]]  # the actual next token is row 3 of the position before
    tips = prediction_tips(ids, probs, tokens, lambda i: f"<{i}>")
    back = json.loads(json.dumps(tips))  # what the browser gets: text keyed by strings
    for i in (0, 1234, T - 1):
        rows = tip_rows(back, i)
        assert [r[0] for r in rows] == ids[i].tolist() and [r[1] for r in rows] == [f"<{j}>" for j in ids[i]]
        np.testing.assert_allclose([r[2] for r in rows], probs[i], atol=1e-5)
        assert [r[3] for r in rows] == ([r == 3 for r in range(k)] if i < T - 1 else [False] * k)
    old = len(json.dumps([[[int(j), f"<{j}>", float(p), False] for j, p in zip(ids[t], probs[t])] for t in range(T)]))
    assert len(json.dumps(tips)) < old / 2.5  # random ids: each text once still weighs; real text shares far more


def test_token_view_values_are_short_and_nan_is_null(monkeypatch):
    import inspector_ui.widgets as W

    sent = {}
    monkeypatch.setattr(W, "_component", lambda data, **kw: sent.update(data) or None)
    token_view(["a", "b\n", "c"], key="k", values=[1 / 3, float("nan"), None], selected=2, max_lines=5)
    assert sent["values"] == [0.3333, None, None] and sent["breaks"] == [2] and sent["max_lines"] == 5
    assert sent["tokens"] == ["a", "b↵", "c"]
    json.dumps(sent, allow_nan=False)
