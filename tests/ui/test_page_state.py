"""The State page under Streamlit's AppTest: opened first, from a link, in compare mode and from a trace file; the
state matrix, norms and regression errors equal the engine's states (checked against the official package in
tests/analysis/test_state.py); the model's own final state is the matrix after the last token.

Runs on the demo RWKV-7 model of the repository (no ../shared needed), and rwkv.cpp's tiny v4 where ../shared is.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from rwkv_core.analysis import scores as S
from rwkv_core.analysis import state as ST
from rwkv_core.io.checkpoint import load_model
from tests.conftest import REPO, shared_file
from tests.ui.page_helpers import app_session, chart_specs, page_session, plotly_array, run_clean, token_views
from tests.ui.test_trace_upload import _upload

PAGE = str(REPO / "pages" / "6_State.py")
DEMO = "demo: demo v7 facts+retrieval"
PROMPT = "CODES:\ng16\nq33\nv26\ny43\nCHECK:\nq"
PROMPT_B = "CODES:\nk12\nq71\nv26\ny43\nCHECK:\nv"  # as many bytes


@pytest.fixture(scope="module")
def demo_model():
    return load_model(REPO / "models" / "demo-v7.pth")


def _chart(at, start: str) -> list[dict]:
    return [c for c in chart_specs(at) if c["layout"]["title"]["text"].startswith(start)]


def test_opened_first_the_matrix_is_the_models_final_state(demo_model):
    at = run_clean(page_session(PAGE, model=DEMO, prompt=PROMPT))
    tokens = list(PROMPT.encode())
    T, L = len(tokens), demo_model.cfg.n_layer
    assert at.session_state["layer"] == L - 1 and at.session_state["tok"] == T - 1
    with torch.no_grad():
        _, state = demo_model(tokens)
    z = plotly_array(_chart(at, "A: S after")[0]["data"][0]["z"])
    np.testing.assert_allclose(z, state.wkv[L - 1, 0, 0].numpy(), rtol=1e-4, atol=1e-5)  # head 0, [value, key]
    si = S.capture_score_inputs(demo_model, tokens, [L - 1])[0]
    ls = ST.layer_states(si)
    norm = _chart(at, "A: state norm")[0]
    np.testing.assert_allclose(plotly_array(norm["data"][0]["y"]), ls.frobenius[:, 0], rtol=1e-5)
    reg = _chart(at, "A: ‖S κ̂_t")[0]
    np.testing.assert_allclose(plotly_array(reg["data"][1]["y"]), ls.err_after[:, 0], rtol=1e-5)
    tv = token_views(at)[0]
    np.testing.assert_allclose(tv["values"], ls.frobenius[:, 0], rtol=1e-3)
    assert any("Where head 0 forgets most" in c.value for c in at.caption)
    assert len(at.dataframe) == 2  # nearest values, regression per head


def test_a_link_restores_layer_head_token_and_query(demo_model):
    at = run_clean(app_session("pages/6_State.py", model=DEMO, prompt=PROMPT, layer="1", head="2", tok="12",
                               sq="receptance", sqt="5"))
    assert [at.session_state[k] for k in ("layer", "head", "tok", "sq", "sqt")] == [1, 2, 12, "receptance", "5"]
    tokens = list(PROMPT.encode())
    si = S.capture_score_inputs(demo_model, tokens, [1])[0]
    with torch.no_grad():
        _, state = demo_model.forward_rnn(tokens[:13])
    z = plotly_array(_chart(at, "A: S after")[0]["data"][0]["z"])
    np.testing.assert_allclose(z, state.wkv[1, 0, 2].numpy(), rtol=1e-4, atol=1e-5)
    read = _chart(at, "A: S after")[1]
    assert "receptance of" in read["layout"]["title"]["text"]
    want = state.wkv[1, 0, 2].double() @ si.r[5, 2].double()
    np.testing.assert_allclose(plotly_array(read["data"][0]["y"]), want.numpy(), rtol=1e-4, atol=1e-6)
    at.session_state["sqt"] = "99"
    at.run()
    assert [e.value for e in at.error] == [f"query token 99 is outside the prompt (0..{len(tokens) - 1})"]


def test_compare_mode_shows_both_and_their_difference():
    at = run_clean(page_session(PAGE, model=DEMO, prompt=PROMPT, compare="prompt", prompt_b=PROMPT_B, tok=10))
    a, b = _chart(at, "A: S after")[0], _chart(at, "B: S after")[0]
    d = _chart(at, "B − A")[0]
    np.testing.assert_allclose(plotly_array(d["data"][0]["z"]),
                               plotly_array(b["data"][0]["z"]) - plotly_array(a["data"][0]["z"]), atol=1e-5)
    assert len(token_views(at)) == 2 and all(tv["selected"] == 10 for tv in token_views(at))


def _trace(model, **kw) -> bytes:
    from rwkv_core.io.trace_file import COMPACT, build_trace, save_trace

    buf = io.BytesIO()
    save_trace(build_trace(model, list(PROMPT.encode()), token_texts=list(PROMPT), tokenizer_kind="bytes",
                           checkpoint_name="demo-v7.pth", **COMPACT, **kw), buf)
    return buf.getvalue()


def test_from_a_trace_file_with_and_without_stored_states(demo_model):
    at = run_clean(app_session("pages/6_State.py", source="trace file"))
    run_clean(_upload(at, _trace(demo_model, state=True, state_positions=[4, 20])))
    captions = " ".join(c.value for c in at.caption)
    assert "stores this layer's state after token(s) [4, 20]" in captions
    err = float(captions.split("agree to ")[1].split(" ")[0])
    assert err < 5e-3  # rebuilt from float16 activations
    assert _chart(at, "A: S after") and _chart(at, "A: ‖S κ̂_t")
    at2 = run_clean(app_session("pages/6_State.py", source="trace file"))
    run_clean(_upload(at2, _trace(demo_model), "nostate.npz"))
    assert any("stores no state of this layer (export with `--state`" in c.value for c in at2.caption)


def test_rwkv4_shows_its_three_vectors():
    shared_file("tiny-rwkv-4v0-660K-FP32.bin")
    at = run_clean(page_session(PAGE, model="shared: tiny-rwkv-4v0-660K-FP32.bin", prompt="Hello there"))
    m = _chart(at, "A: S after")[0]
    assert m["data"][0]["y"] == ["aa", "bb", "pp"]
    assert any("RWKV-4 has no state matrix" in i.value for i in at.info)
    assert not _chart(at, "A: effective rank")


def test_the_home_page_links_both_new_views():
    from tests.ui.page_helpers import app_session

    at = run_clean(app_session(model=DEMO, prompt=PROMPT))
    links = {(p.proto.label, p.proto.page) for p in at.get("page_link")}
    assert {("Logit lens", "Logit_lens"), ("State", "State")} <= links, links  # (label, URL path)
