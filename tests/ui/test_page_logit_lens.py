"""The Logit lens page under Streamlit's AppTest: opened first, from a link, in compare mode and from a trace file;
the heat map's numbers equal the engine's; a bad target and a trace without the lens are one line.

Runs on the demo RWKV-7 model of the repository (no ../shared needed).
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from rwkv_core.analysis import lens as LE
from rwkv_core.io.checkpoint import load_model
from tests.conftest import REPO
from tests.ui.page_helpers import app_session, chart_specs, page_session, plotly_array, run_clean, token_views
from tests.ui.test_trace_upload import _upload

PAGE = str(REPO / "pages" / "5_Logit_lens.py")
DEMO = "demo: demo v7 facts+retrieval"
PROMPT = "The Eiffel Tower is located in the city of Paris"
PROMPT_B = "The Colosseum is located in the city of Rome!!!!"  # as many bytes as PROMPT


@pytest.fixture(scope="module")
def demo_model():
    return load_model(REPO / "models" / "demo-v7.pth")


def _lens_charts(at) -> list[dict]:
    return [c for c in chart_specs(at) if "logit lens" in c["layout"]["title"]["text"]
            or c["layout"]["title"]["text"] == "B − A"]


def test_opened_first_the_heat_map_is_the_engines_lens(demo_model):
    at = run_clean(page_session(PAGE, model=DEMO, prompt=PROMPT))
    lens = LE.logit_lens(demo_model, list(PROMPT.encode()))
    fig = _lens_charts(at)[0]
    z = plotly_array(fig["data"][0]["z"])  # [S, T] probabilities
    np.testing.assert_allclose(z, np.exp(lens.logp).T, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert fig["data"][0]["y"] == ["embed", "L0", "L1", "L2", "L3"]
    t = PROMPT.index("Paris") - 1
    hover = fig["data"][0]["customdata"][-1][t]  # top-10 of the last stage at the space before "Paris"
    assert hover.startswith("P  ") and hover.count("<br>") == 9
    formed = fig["data"][1]  # the "answer forms" markers
    assert formed["y"][t] == fig["data"][0]["y"][int(lens.answer_forms()[t])]
    tv = token_views(at)[0]
    assert tv["selected"] == len(PROMPT) - 2 and tv["values"] == [float(f) for f in lens.answer_forms()]
    assert "answer forms at stage" in " ".join(m.value for m in at.markdown)
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 5  # top-10 per stage


def test_a_link_restores_rank_mode_a_target_and_the_token(demo_model):
    at = run_clean(app_session("pages/5_Logit_lens.py", model=DEMO, prompt=PROMPT, lm="rank", tgt="P", tok="7"))
    assert (at.session_state["lm"], at.session_state["tgt"], at.session_state["tok"]) == ("rank", "P", 7)
    lens = LE.logit_lens(demo_model, list(PROMPT.encode()), target=ord("P"))
    z = plotly_array(_lens_charts(at)[0]["data"][0]["z"])
    np.testing.assert_allclose(z, np.log10(lens.rank + 1).T, rtol=1e-5)
    assert at.query_params["lm"] == "rank" and at.query_params["tgt"] == "P"
    assert token_views(at)[0]["selected"] == 7


def test_compare_mode_shows_both_and_their_difference(demo_model):
    at = run_clean(page_session(PAGE, model=DEMO, prompt=PROMPT, compare="prompt", prompt_b=PROMPT_B, lm="logp"))
    a, b, d = _lens_charts(at)
    za, zb, zd = (plotly_array(f["data"][0]["z"]) for f in (a, b, d))
    np.testing.assert_allclose(zd, zb - za, rtol=1e-4, atol=1e-4, equal_nan=True)
    lb = LE.logit_lens(demo_model, list(PROMPT_B.encode()))
    np.testing.assert_allclose(zb, lb.logp.T, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert len(token_views(at)) == 2


def test_a_target_of_several_tokens_is_one_line():
    at = page_session(PAGE, model=DEMO, prompt=PROMPT, tgt="Paris")
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["the target 'Paris' is 5 tokens for this model's tokenizer ('P', 'a', 'r', "
                                           "'i', 's'): give the text of exactly one token (e.g. its first piece)"]


def _trace(model, lens: bool) -> bytes:
    from rwkv_core.io.trace_file import COMPACT, build_trace, save_trace

    buf = io.BytesIO()
    save_trace(build_trace(model, list(PROMPT.encode()), token_texts=list(PROMPT), tokenizer_kind="bytes",
                           checkpoint_name="demo-v7.pth", lens=lens, **COMPACT), buf)
    return buf.getvalue()


def test_from_a_trace_file_with_and_without_the_lens(demo_model):
    at = run_clean(app_session("pages/5_Logit_lens.py", source="trace file"))
    run_clean(_upload(at, _trace(demo_model, lens=True)))
    lens = LE.logit_lens(demo_model, list(PROMPT.encode()))
    z = plotly_array(_lens_charts(at)[0]["data"][0]["z"])
    np.testing.assert_allclose(z, np.exp(lens.logp).T, rtol=1e-4, atol=1e-6, equal_nan=True)
    hover = _lens_charts(at)[0]["data"][0]["customdata"][-1][PROMPT.index("Paris") - 1]
    assert hover.startswith("P<br>")  # ids only: no probabilities in a file
    at2 = run_clean(app_session("pages/5_Logit_lens.py", source="trace file"))
    run_clean(_upload(at2, _trace(demo_model, lens=False), "nolens.npz"))
    assert any("has no logit lens" in i.value and "--lens" in i.value for i in at2.info)
    assert not _lens_charts(at2)


def test_the_heat_maps_window_holds_the_selection_and_moves_in_steps():
    """A click near the last one keeps the same window, so the browser has no figure to draw again."""
    from inspector_ui.views.lens import DEFAULT_LENS_WIDTH, LENS_WIDTHS, _window

    for width in LENS_WIDTHS:
        for T in (50, width, width + 1, 1031, 4096):
            for sel in range(0, T, 7):
                a, b = _window(T, sel, width)
                assert a <= sel < b <= T and b - a == min(T, width)
    assert _window(1031, 515, 256) == _window(1031, 530, 256) == (384, 640)
    assert _window(1031, 515) == _window(1031, 520) == (480, 544) and DEFAULT_LENS_WIDTH == 64


def test_a_long_prompt_reads_out_the_shown_window_and_a_move_only_the_new_chunk(demo_model, monkeypatch):
    """At 1,000 tokens the head's product over the vocabulary at every stage was the page's first render (30-70 s
    at the 0.1B shape on this CPU): the page reads out the heat map's window only (64 tokens unless widened), in
    chunks of LENS_CHUNK tokens computed once; its numbers equal the engine's full lens there, a wider window reads
    only the chunks it adds, and the download gives every token."""
    from inspector_ui.views import lens as view

    calls: list = []
    real = LE.logit_lens

    def spy(model, tokens, **kw):
        calls.append(kw.get("positions"))
        return real(model, tokens, **kw)

    monkeypatch.setattr(LE, "logit_lens", spy)
    prompt = ("The Eiffel Tower is located in the city of Paris. " * 20)[:1000]  # 1,000 byte tokens
    at = run_clean(app_session("pages/5_Logit_lens.py", model=DEMO, prompt=prompt, tok="500"))
    a, b = view._window(1000, 500)
    def chunks(a: int, b: int) -> set[int]:
        return set(range(a // view.LENS_CHUNK * view.LENS_CHUNK, b, view.LENS_CHUNK))

    assert b - a == view.DEFAULT_LENS_WIDTH
    assert sorted(r.start for r in calls) == sorted(chunks(a, b))  # the window's chunks only
    full = real(demo_model, list(prompt.encode()))
    z = plotly_array(_lens_charts(at)[0]["data"][0]["z"])  # [S, b - a]
    np.testing.assert_allclose(z, np.exp(full.logp[a:b]).T, rtol=1e-4, atol=1e-6, equal_nan=True)
    values = np.array(token_views(at)[0]["values"], dtype=float)
    np.testing.assert_array_equal(values[a:b], full.answer_forms()[a:b])
    assert np.isnan(values[:a]).all() and np.isnan(values[b:]).all()
    # the selection moves half a window on: only the new chunks are read out
    calls.clear()
    at.number_input(key="tok").set_value(500 + view.DEFAULT_LENS_WIDTH // 2)
    at = run_clean(at)
    a2, b2 = view._window(1000, 500 + view.DEFAULT_LENS_WIDTH // 2)
    assert b2 > b and sorted(r.start for r in calls) == sorted(chunks(a2, b2) - chunks(a, b))
    # a wider window: its heat map has 256 columns, equal to the engine's lens there
    calls.clear()
    at.selectbox(key="lw").set_value(256)
    at = run_clean(at)
    a3, b3 = view._window(1000, 500 + view.DEFAULT_LENS_WIDTH // 2, 256)
    z3 = plotly_array(_lens_charts(at)[0]["data"][0]["z"])
    assert z3.shape[1] == b3 - a3 == 256 and at.query_params["lw"] == "256"
    np.testing.assert_allclose(z3, np.exp(full.logp[a3:b3]).T, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert sorted(r.start for r in calls) == sorted(chunks(a3, b3) - chunks(a, b) - chunks(a2, b2))  # none twice
    # the download's lens is every token's
    part = real(demo_model, list(prompt.encode()), positions=range(a, b))
    shown = view.LensData(part.stages, part.logp, part.rank, part.top_ids, part.top_logp)
    whole = view._whole(_run_of(prompt), shown, None)
    np.testing.assert_allclose(whole.logp, full.logp, rtol=1e-5, atol=1e-6, equal_nan=True)


def _run_of(prompt: str):
    """A page run of the demo model on this prompt, outside any page (what a download callable sees)."""
    from inspector_ui.registry import list_models
    from inspector_ui.resources import loaded_model
    from inspector_ui.session import Run

    entry = list_models()[DEMO]
    key = (entry.name, "cpu", "fp32")
    lm = loaded_model(key)
    ids = list(lm.tokenizer.encode(prompt).ids)
    return Run("A", lm.model.cfg, ids, [chr(i) for i in ids], prompt, key, lm)


def test_opened_first_the_page_runs_the_prompt_once_and_its_hover_is_the_models_prediction(demo_model):
    """The token view's hover (top-16 next tokens) comes from the lens's own capture, the head over the last stage:
    one pass over the prompt (the capture without logits), not a second forward; its rows equal a forward's."""
    import base64

    import torch

    from rwkv_core.model.rwkv import RWKV
    from rwkv_core.analysis.scores import topk_predictions

    prompt_runs: list[int] = []

    def count(module, args):
        if isinstance(module, RWKV) and args and isinstance(args[0], (list, tuple)):
            prompt_runs.append(len(args[0]))

    prompt = PROMPT + " and the Colosseum in Rome."
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        at = run_clean(page_session(PAGE, model=DEMO, prompt=prompt))
    finally:
        handle.remove()
    T = len(prompt.encode())
    assert prompt_runs == [], prompt_runs  # no forward call over the prompt (the capture goes by run_with_cache)
    tips = token_views(at)[0]["tips"]
    ids = np.frombuffer(base64.b64decode(tips["ids"]), dtype=f"<u{tips['id_bytes']}").reshape(T, tips["k"])
    with torch.no_grad():
        logits, _ = demo_model(list(prompt.encode()))
    want, _ = topk_predictions(logits[0], tips["k"])
    np.testing.assert_array_equal(ids, want.numpy())
