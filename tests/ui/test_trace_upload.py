"""An uploaded trace file under Streamlit's AppTest (`inspector_ui.traces.trace_run`): parsed once and kept open for
the session on every page, with the pages' selections (layer, head, token; bound to the URL); its name and size in
the sidebar with a Close button; a file over the upload limit refused with one line in the main area; the upload
limit and the default download fitting each other.

Runs on the demo RWKV-7 model of the repository (no ../shared needed).
"""
from __future__ import annotations

import io
import tomllib

import pytest

from tests.conftest import REPO
from tests.ui.page_helpers import app_session, run_clean

DEMO = "demo: demo v7 facts+retrieval"
PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def trace_bytes() -> bytes:
    """A default (compact) trace file of the demo model: every layer, top-16 logits, float16."""
    from inspector_ui.registry import list_models
    from rwkv_core.io.trace_file import COMPACT, build_trace, save_trace

    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.tokenizer import tokenizer_for

    model = load_model(list_models()[DEMO].path)
    enc = tokenizer_for(model.cfg.vocab_size).encode(PROMPT)
    buf = io.BytesIO()
    save_trace(build_trace(model, list(enc.ids), token_texts=list(enc.token_texts), tokenizer_kind="bytes",
                           checkpoint_name="demo-v7.pth", **COMPACT), buf)
    return buf.getvalue()


def _upload(at, data: bytes, name: str = "demo.npz"):
    at.sidebar.file_uploader(key="trace_upload").set_value((name, data, "application/octet-stream"))
    return at


def _opened(page: str, data: bytes):
    """A session on `page` with Source = trace file and the trace uploaded there."""
    at = run_clean(app_session(page, source="trace file"))
    assert any("Upload a trace file" in i.value for i in at.info)
    return run_clean(_upload(at, data))


def _trace_caption(at) -> str:
    return " ".join(c.value for c in at.sidebar.caption if c.value.startswith("Trace file"))


def test_an_uploaded_trace_stays_open_across_pages_with_the_selections(trace_bytes):
    """Before, each page had its own uploader: the next page asked for the file again and the layer, head and token
    went back to their defaults."""
    at = _opened("pages/1_Attention.py", trace_bytes)
    assert "demo.npz" in _trace_caption(at) and "stays open" in _trace_caption(at)
    at.selectbox(key="layer").set_value(1)
    at.selectbox(key="head").set_value(2)
    at.number_input(key="tok").set_value(5)
    run_clean(at)
    chosen = {k: at.session_state[k] for k in ("layer", "head", "tok")}
    assert chosen == {"layer": 1, "head": 2, "tok": 5}
    for page in ("pages/2_Influence_spans.py", "pages/3_Time_decay.py", "app.py", "pages/4_Causal_tracing.py",
                 "pages/1_Attention.py"):
        at.switch_page(page)
        run_clean(at)
        assert not any("Upload a trace file" in i.value for i in at.info), page
        assert "demo.npz" in _trace_caption(at), page
        assert not at.sidebar.get("file_uploader"), page  # no second upload asked for
        if page.startswith("pages/1") or page.startswith("pages/2"):
            assert {k: at.session_state[k] for k in chosen} == chosen, page
            assert {k: at.query_params[k] for k in chosen} == {k: str(v) for k, v in chosen.items()}, page
            assert at.get("plotly_chart"), page
        if page.startswith("pages/4"):
            assert any("needs a live model" in i.value for i in at.info)


def test_the_sidebar_names_the_trace_and_closes_it(trace_bytes):
    at = _opened("app.py", trace_bytes)
    caption = _trace_caption(at)
    assert f"({len(trace_bytes) / 2**20:,.1f} MB)" in caption and "layers 0–3" in caption, caption
    assert f"{len(PROMPT)} tokens" in caption
    at.sidebar.button(key="trace_close").click()
    run_clean(at)
    assert "trace_open" not in at.session_state
    assert at.sidebar.file_uploader(key="trace_upload").value is None
    assert any("Upload a trace file" in i.value for i in at.info)


def test_a_trace_over_the_upload_limit_is_refused_in_one_line_saying_what_to_do(trace_bytes, monkeypatch):
    from inspector_ui import settings

    monkeypatch.setattr(settings, "MAX_UPLOAD_MB", 1)
    at = run_clean(app_session("pages/1_Attention.py", source="trace file"))
    assert at.sidebar.file_uploader(key="trace_upload").proto.max_upload_size_mb == 1
    assert "at most 1 MB" in at.info[0].value
    big = trace_bytes + b"\0" * (2**20)  # over 1 MB: refused before it is read
    _upload(at, big, "big.npz").run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"big.npz is {len(big) / 2**20:,.1f} MB, over the 1 MB upload limit: download it again with fewer layers, "
        "top-k logits or float16 (home page: Trace file, or `python -m rwkv_core export --layers ... --logits-topk 16 "
        "--float16`), or raise RWKV_INSPECTOR_MAX_UPLOAD_MB together with server.maxUploadSize."]
    assert "trace_open" not in at.session_state


def test_the_upload_limit_and_the_default_download_fit_each_other():
    """Streamlit's server.maxUploadSize and RWKV_INSPECTOR_MAX_UPLOAD_MB are one limit (200 MB), and the default
    download of the 0.1B shape with 1,031 tokens (the README's example) is well under it."""
    from inspector_ui import settings
    from inspector_ui.traces import DownloadOptions
    from rwkv_core.model.config import ModelConfig

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == settings.MAX_UPLOAD_MB == 200
    cfg = ModelConfig(version="7", n_layer=12, n_embd=768, vocab_size=65536, n_head=12, head_size=64, dim_ffn=3072)
    default = DownloadOptions(layers=tuple(range(12))).estimate(cfg, 1031)
    assert default < 100e6 and default < 0.5 * settings.MAX_UPLOAD_MB * 2**20
