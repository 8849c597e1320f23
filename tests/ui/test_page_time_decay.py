"""The Time decay page under Streamlit's AppTest: every section drawn for v4 / v6 / v7, the token and head
controls, compare mode (one colour scale, B - A), and a trace file with no model (equal to the live model).

Runs on the shared tiny models (skipped with a reason where ../shared is absent); the decay numbers themselves are
tested in tests/analysis/test_decay.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from rwkv_core.analysis import decay as D
from rwkv_core.io.checkpoint import load_model
from tests.conftest import REPO, shared_file
from tests.ui.page_helpers import (
    chart_specs,
    chart_title,
    chart_titles,
    page_session,
    plotly_array,
)

PAGE = REPO / "pages" / "3_Time_decay.py"
TINY = {
    "4": "tiny-rwkv-4v0-660K-FP32.bin",
    "6": "tiny-rwkv-6v0-1m-FP32.bin",
    "7": "tiny-rwkv-7v0-834K-FP32.bin",
    "7-digits": "260123_reverse_L2_only_rwkv7.pth",
}


def _page_on(model: str):
    """The page on a shared model, by its name in the sidebar's model registry."""
    return page_session(PAGE, 60, model=f"shared: {model}")


@pytest.mark.parametrize("key", ["4", "6", "7-digits"])
def test_page_runs(key):
    shared_file(TINY[key])
    at = _page_on(TINY[key])
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    charts = at.get("plotly_chart")
    n_charts = 3 if key == "4" else 6  # paper, heat map, state size; + tokens x heads, spectrum, retention
    assert len(charts) == n_charts and not at.get("dataframe")[1:]  # the bonus and per-head summary wait, closed
    at.session_state["decay_bonus_open"] = True  # opened: drawn
    at.session_state["decay_summary_open"] = True
    at.run()
    assert not at.exception, at.exception
    titles = [chart_title(spec) for spec in chart_specs(at)]
    assert len(titles) == n_charts + 1 and any("onus" in t for t in titles), titles
    assert len(at.get("dataframe")) == (1 if key == "4" else 2)  # the static summary, + the per-token one
    if key == "4":
        assert any("does not depend on the input" in i.value for i in at.info)
    else:
        # fallback selection: choose token 3, head 1 without clicking
        at.selectbox(key="decay_sel_token").set_value(3)
        at.selectbox(key="decay_sel_head").set_value(1)
        at.run()
        assert not at.exception
        assert at.selectbox(key="decay_sel_token").value == 3
    assert len(at.get("download_button")) >= 3


def _token_head_maps(at) -> list[dict]:
    """The tokens x heads half-life heat maps on the page (their heat map trace), A first."""
    return [spec["data"][0] for spec in chart_specs(at)
            if chart_title(spec).startswith("Median half-life per token and head")]


@pytest.mark.parametrize("compare", ["prompt", "model"])
def test_page_compare(compare):
    shared_file(TINY["6"])
    shared_file(TINY["7"])
    at = _page_on(TINY["6"])
    at.session_state["compare"] = compare
    if compare == "model":
        at.session_state["model_b"] = f"shared: {TINY['7']}"
    else:
        at.session_state["prompt"] = "Hello world"
        at.session_state["prompt_b"] = "Hello there"  # same length: the B - A map is shown
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    maps = _token_head_maps(at)
    assert len(maps) == 2
    assert maps[0]["zmin"] == maps[1]["zmin"] and maps[0]["zmax"] == maps[1]["zmax"]
    assert maps[0]["zmin"] < maps[0]["zmax"]
    zs = [plotly_array(m["z"]) for m in maps]
    assert min(np.nanmin(z) for z in zs) == pytest.approx(maps[0]["zmin"])
    assert max(np.nanmax(z) for z in zs) == pytest.approx(maps[0]["zmax"])
    titles = chart_titles(at)
    n_paper = sum(t.startswith("Time decay per layer") for t in titles)
    assert n_paper == (2 if compare == "model" else 1)  # static views twice only for two models
    assert sum(t.startswith("Retention of token") for t in titles) == 2
    assert sum(t.startswith("State size after each token") for t in titles) == 2
    diff = [t for t in titles if t.startswith("Difference B − A")]
    if compare == "prompt":  # same model, same token count
        assert len(diff) == 1
        spec = next(c for c in chart_specs(at) if chart_title(c).startswith("Difference"))
        np.testing.assert_allclose(plotly_array(spec["data"][0]["z"]), zs[1] - zs[0], atol=1e-9)
    # one set of controls moves both columns: token 3, the last head both runs have
    h = len(at.selectbox(key="decay_sel_head").options) - 1
    at.selectbox(key="decay_sel_token").set_value(3)
    at.selectbox(key="decay_sel_head").set_value(h)
    at.run()
    assert not at.exception, at.exception
    assert sum("token 3:" in t for t in chart_titles(at) if t.startswith(f"Channel decays of head {h},")) == 2


def test_page_trace_file():
    import io

    from rwkv_core.io.trace_file import build_trace, save_trace

    model = load_model(shared_file(TINY["6"]))
    tokens = list(b"Hello world, decay")
    arrays = build_trace(model, tokens, token_texts=[chr(t) for t in tokens], tokenizer_kind="bytes",
                         checkpoint_name=TINY["6"])
    buf = io.BytesIO()
    save_trace(arrays, buf)
    at = _page_on(TINY["6"])
    at.run()
    at.sidebar.radio(key="source").set_value("trace file")
    at.run()
    at.file_uploader(key="trace_upload").set_value(("t.npz", buf.getvalue(), "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    maps = _token_head_maps(at)
    assert len(maps) == 1
    layer = model.cfg.n_layer - 1  # the page's default layer
    live = D.token_decays(model, tokens, layers=[layer]).head_median_log10_half_life(layer)  # [T, H]
    np.testing.assert_allclose(plotly_array(maps[0]["z"]).T, live, atol=1e-3)
    captions = " ".join(c.value for c in at.caption)
    assert "float32" in captions and "1e7" in captions
    assert "lacks" in captions  # static views: a one-line note
    assert any("state size needs the model" in i.value.lower() or "does not hold the states" in i.value
               for i in at.info)
    titles = chart_titles(at)
    assert not any(t.startswith("Time decay per layer") or t.startswith("State size") for t in titles)
    assert any(t.startswith("Retention of token") for t in titles)
    # another layer and a source token: still clean, and equal to the live model
    at.selectbox(key="decay_dyn_layer").set_value(2)
    at.selectbox(key="decay_ret_source").set_value(4)
    at.run()
    assert not at.exception, at.exception
    live = D.token_decays(model, tokens, layers=[2]).head_median_log10_half_life(2)
    np.testing.assert_allclose(plotly_array(_token_head_maps(at)[0]["z"]).T, live, atol=1e-3)


# ------------------------------------------------------------------------------------------------ work per rerun


def _counting(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name so that every call is recorded (its arguments: (args, kwargs)) and still runs."""
    calls: list = []
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return inner(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_page_builds_csv_only_on_click(monkeypatch):
    """The download buttons hand Streamlit a callable: no CSV is written while the page renders or reruns (the
    per-token table of one layer alone is T x C rows, 38 MB for 1,031 tokens at width 768)."""
    import pandas as pd

    shared_file(TINY["7"])
    written = _counting(monkeypatch, pd.DataFrame, "to_csv")
    at = _page_on(TINY["7"])
    at.run()
    assert not at.exception, at.exception
    assert len(at.get("download_button")) == 4  # static, per-head summary, per-token, state sizes
    at.radio(key="decay_spec_y").set_value("decay λ")
    at.run()
    assert not at.exception, at.exception
    assert written == []


def test_page_one_forward_pass_per_prompt(monkeypatch):
    """One forward pass per (model, prompt): another per-token layer, token, head or display choice reruns on cached
    numbers; another state layer runs that one block from the input the pass kept, once (no pass of its own)."""
    from inspector_ui.views import decay as V

    shared_file(TINY["6"])
    for cached in (V.prompt_pass, V.token_numbers, V.state_numbers, V.retention_numbers):
        cached.clear()
    passes = _counting(monkeypatch, D, "decay_pass")
    state_passes = _counting(monkeypatch, D, "state_sizes")
    at = _page_on(TINY["6"])
    at.run()
    assert not at.exception, at.exception
    assert len(passes) == 1 and state_passes == []
    for kind, key, value in [("selectbox", "decay_dyn_layer", 0), ("selectbox", "decay_sel_token", 2),
                             ("selectbox", "decay_sel_head", 1), ("radio", "decay_ret_agg", "max"),
                             ("selectbox", "decay_ret_source", 1), ("radio", "decay_spec_y", "decay λ"),
                             ("radio", "decay_state_metric", "max |entry|"), ("selectbox", "decay_dyn_layer", 5)]:
        getattr(at, kind)(key=key).set_value(value)
        at.run()
        assert not at.exception, at.exception
    assert len(passes) == 1 and state_passes == []
    from rwkv_core.model.rwkv import RWKV

    blocks: list[int] = []
    run_block = RWKV.run_block
    monkeypatch.setattr(RWKV, "run_block", lambda self, layer, *a, **kw: blocks.append(layer)
                        or run_block(self, layer, *a, **kw))
    for layer in (3, 11, 3):  # 11: measured by the prompt's pass; 3: measured once
        at.selectbox(key="decay_state_layer").set_value(layer)
        at.run()
        assert not at.exception, at.exception
    assert len(passes) == 1 and state_passes == [] and blocks == [3]


def _figure(at, title_start: str) -> dict:
    return next(spec for spec in chart_specs(at) if chart_title(spec).startswith(title_start))


def test_page_numbers_equal_engine():
    """Every per-token figure of a live model shows the engine's numbers: tokens x heads medians, the channel
    spectrum, retention and state sizes (the page's one forward pass runs the measured layers token by token:
    equal to float32 rounding)."""
    from inspector_ui.resources import all_models, make_tokenizer

    path = shared_file(TINY["6"])
    model = load_model(path)
    prompt = "Hello world, decay"
    at = _page_on(TINY["6"])
    at.session_state["prompt"] = prompt
    at.run()
    layer, token, head, source = 1, 4, 2, 3
    at.selectbox(key="decay_dyn_layer").set_value(layer)
    at.selectbox(key="decay_sel_token").set_value(token)
    at.selectbox(key="decay_sel_head").set_value(head)
    at.selectbox(key="decay_ret_source").set_value(source)
    at.selectbox(key="decay_state_layer").set_value(layer)
    at.radio(key="decay_spec_y").set_value("decay λ")
    at.run()
    assert not at.exception, at.exception
    entry = all_models()[f"shared: {TINY['6']}"]
    tokens = make_tokenizer(entry, model.cfg.vocab_size).encode(prompt).ids
    td = D.token_decays(model, tokens, layers=[layer])
    maps = _token_head_maps(at)
    np.testing.assert_allclose(plotly_array(maps[0]["z"]).T, td.head_median_log10_half_life(layer), rtol=1e-5,
                               atol=1e-6)
    N = td.head_size
    spectrum = _figure(at, f"Channel decays of head {head}, layer {layer}")
    np.testing.assert_allclose(plotly_array(spectrum["data"][1]["y"]), td.decay[0, token, head * N:(head + 1) * N],
                               rtol=1e-5)
    retained = D.retention_by_head(D.retention(td.log_decay[0], source, td.version), td.n_head, "median")
    ret = _figure(at, f"Retention of token {source}")
    for h, trace in enumerate(ret["data"]):
        x = np.array([int(c.split(":")[0]) for c in trace["x"]])  # categories "index: text"
        assert x[0] == D.first_read(source, td.version) and x[-1] == len(tokens) - 1
        np.testing.assert_allclose(plotly_array(trace["y"]), retained[x, h], rtol=1e-4)
    ss = D.state_sizes(model, tokens, layers=[layer])
    state = _figure(at, f"State size after each token, layer {layer}")
    for h, trace in enumerate(state["data"]):
        np.testing.assert_allclose(plotly_array(trace["y"]), ss.frobenius[0, :, h], rtol=1e-4)
