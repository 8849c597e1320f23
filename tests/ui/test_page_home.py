"""The home page under Streamlit's AppTest: each run's model card, the tokenized prompt with the model's top-16
predictions per token, the token table and the trace download (its options, the size before building, progress,
then the file); and a checkpoint whose vocabulary matches no tokenizer, opened from a model folder or uploaded, with
its prompt typed as token ids.

Runs on the shared digit-reversal model (skipped with a reason where ../shared is absent) and on random
checkpoints written by rwkv_core.io.synthetic.
"""
from __future__ import annotations

import pytest

from inspector_ui.registry import ENGLISH, id_prompts
from inspector_ui.widgets import tip_rows
from rwkv_core.io.synthetic import random_state_dict, save_checkpoint
from tests.conftest import shared_file
from tests.ui.conftest import ODD_VOCAB
from tests.ui.page_helpers import app_session, run_clean, token_views

DIGITS = "shared: 260123_reverse_L2_only_rwkv7.pth"
TINY = "shared: tiny-rwkv-5v2-730K-FP32.bin"


def _card(at, column: int = 0) -> dict[str, str]:
    """The model card of run A (column 0) or B (column 1): field -> value."""
    table = at.table[column].value
    return {str(k): str(v) for k, v in zip(table.index, table["value"])}


def _ids_caption(at) -> str:
    return " ".join(c.value for c in at.sidebar.caption if "token ids" in c.value)


def test_home_shows_the_card_the_tokens_with_predictions_and_the_download():
    shared_file("260123_reverse_L2_only_rwkv7.pth")
    at = run_clean(app_session(model=DIGITS, prompt="31415926,"))
    card = _card(at)
    assert (card["version"], card["layers"], card["vocabulary"], card["tokenizer"]) == ("RWKV v7", "2", "12", "digits")
    tv = token_views(at)[0]
    assert tv["tokens"] == list("31415926,")
    tips = [tip_rows(tv["tips"], i) for i in range(9)]  # per token: the top next tokens [id, text, p, is next]
    assert len(tips) == 9 and all(len(t) == 12 for t in tips)  # top-16 of a 12-id vocabulary: every id
    assert all(abs(sum(row[2] for row in t) - 1) < 1e-4 for t in tips)
    assert not any(row[3] for row in tips[-1])  # after the last token nothing is known
    assert [row[3] for row in tips[0]].count(True) == 1 and next(r for r in tips[0] if r[3])[1] == "1"
    table = at.dataframe[0].value
    assert list(table["id"]) == [3, 1, 4, 1, 5, 9, 2, 6, 10] and list(table["token"]) == list("31415926,")
    assert at.button(key="trace_prepare_A").label == "Prepare trace file"  # the file is built when asked for
    assert not at.get("download_button")


def test_home_in_compare_mode_shows_a_card_per_model():
    shared_file("tiny-rwkv-5v2-730K-FP32.bin")
    at = run_clean(app_session(model=DIGITS, model_b=TINY, compare="model", prompt="31415926,"))
    assert [s.value for s in at.subheader] == [f"A: {DIGITS}", f"B: {TINY}"]
    assert (_card(at, 0)["version"], _card(at, 1)["version"]) == ("RWKV v7", "RWKV v5.2")
    assert [len(tv["tokens"]) for tv in token_views(at)] == [9, 9]  # both tokenizers read one byte per digit


def test_a_model_folder_checkpoint_of_no_known_vocabulary_opens_with_the_prompt_typed_as_ids(ids_model):
    at = run_clean(app_session(model=ids_model))
    assert at.selectbox(key="model").value == ids_model
    prompt = at.text_area(key="prompt").value
    assert prompt == id_prompts(ODD_VOCAB)[0] == "1, 2, 3, 4, 5, 6, 7, 8"  # not the folder default, English text
    assert ENGLISH not in at.sidebar.selectbox(key="prompt_example").options
    assert "typed as token ids 0..776" in _ids_caption(at)
    assert token_views(at)[0]["tokens"] == [str(i) for i in range(1, 9)]  # each token shows as its id
    card = _card(at)
    assert (card["tokenizer"], card["vocabulary"]) == ("ids", str(ODD_VOCAB))

    at.text_area(key="prompt").set_value("700 5,5  776")
    run_clean(at)
    assert token_views(at)[0]["tokens"] == ["700", "5", "5", "776"]
    assert list(at.dataframe[0].value["id"]) == [700, 5, 5, 776]

    at.text_area(key="prompt").set_value("5, 777")  # a typo stays the user's, with the tokenizer's message
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_area(key="prompt").value == "5, 777"
    assert any("outside the model's vocabulary of 777" in e.value for e in at.error), [e.value for e in at.error]


def test_an_uploaded_checkpoint_of_no_known_vocabulary_opens_with_the_prompt_typed_as_ids(tmp_path, monkeypatch):
    from inspector_ui import settings

    shared_file("260123_reverse_L2_only_rwkv7.pth")
    monkeypatch.setattr(settings, "UPLOAD_DIR", tmp_path / "uploads")
    ckpt = tmp_path / "odd.pth"
    save_checkpoint(random_state_dict("5.2", vocab_size=ODD_VOCAB, n_layer=2, n_embd=32, head_size=16, seed=3), ckpt)
    at = run_clean(app_session(model=DIGITS, prompt="31415926,"))  # a digits prompt: one huge id, not a prompt
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("odd.pth", ckpt.read_bytes(), "application/octet-stream"))
    run_clean(at)
    model = at.selectbox(key="model").value
    assert model.startswith("upload: odd.pth")
    assert at.text_area(key="prompt").value == "1, 2, 3, 4, 5, 6, 7, 8"
    caption = _ids_caption(at)
    assert "typed as token ids" in caption and "earlier prompt was not token ids" in caption
    assert token_views(at)[0]["tokens"] == [str(i) for i in range(1, 9)]
    assert _card(at)["version"] == "RWKV v5.2" and _card(at)["tokenizer"] == "ids"


@pytest.mark.parametrize("vocab_size", [3, 40])
def test_id_examples_stay_inside_a_small_vocabulary(vocab_size):
    for prompt in id_prompts(vocab_size):
        ids = [int(x) for x in prompt.split(", ")]
        assert len(ids) == 8 and max(ids) < vocab_size


def test_a_hosted_app_opens_on_the_model_its_environment_names(ids_model, monkeypatch):
    """RWKV_INSPECTOR_DEFAULT_MODEL (a registry name) is the model a fresh session opens on."""
    monkeypatch.setenv("RWKV_INSPECTOR_DEFAULT_MODEL", ids_model)
    at = run_clean(app_session())
    assert at.selectbox(key="model").value == ids_model




# ------------------------------------------------------------------------------------------------ trace download


def _size_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Estimated size"))


def _estimate_text(cfg, n_tokens: int, **options) -> str:
    from rwkv_core.io.trace_file import estimate_trace_bytes

    return f"**{estimate_trace_bytes(cfg, n_tokens, **options) / 2**20:,.1f} MB**"


def test_the_trace_download_offers_what_to_include_and_its_size_before_building():
    """Defaults: every layer, the top-16 logits, float16, no residual stream; the estimated size follows the
    options (before, the button built every layer and the full logits in float32, size unknown until done)."""
    from inspector_ui.resources import loaded_model

    at = run_clean(app_session())
    model_key = (at.session_state["model"], at.session_state["device"], at.session_state["dtype"])
    cfg, T = loaded_model(model_key).model.cfg, len(token_views(at)[0]["tokens"])
    layers = list(range(cfg.n_layer))
    assert at.multiselect(key="trace_layers_A").value == layers
    assert at.radio(key="trace_logits_A").value == "top-k per position"
    assert at.number_input(key="trace_topk_A").value == 16
    assert at.checkbox(key="trace_f16_A").value is True and at.checkbox(key="trace_resid_A").value is False
    caption = _size_caption(at)
    assert _estimate_text(cfg, T, logits_topk=16, float16=True, residual=False) in caption
    assert "up to 200 MB" in caption
    at.radio(key="trace_logits_A").set_value("full [T, V]")
    at.checkbox(key="trace_f16_A").uncheck()
    at.checkbox(key="trace_resid_A").check()
    at.multiselect(key="trace_layers_A").set_value([0, 2])
    run_clean(at)
    assert at.number_input(key="trace_topk_A").disabled
    assert _estimate_text(cfg, T, layers=[0, 2], logits_topk=None, float16=False, residual=True) in _size_caption(at)


def test_a_download_over_the_upload_limit_says_so_before_building(monkeypatch):
    from inspector_ui import settings

    monkeypatch.setattr(settings, "MAX_UPLOAD_MB", 1)
    at = run_clean(app_session())  # the default prompt: ~0.2 MB
    assert "up to 1 MB" in _size_caption(at) and not at.warning
    at = run_clean(app_session(prompt="The Eiffel Tower is located in the city of Paris. " * 8))  # ~2 MB
    assert "up to 1 MB" in _size_caption(at)
    assert [w.value for w in at.warning] == ["Over the 1 MB upload limit: this app will not open it again. Choose "
                                             "fewer layers, top-k logits or float16."]


def test_prepare_builds_the_file_with_progress_then_offers_the_download(monkeypatch):
    """Prepare starts the build in the background; the page shows its progress per block (polled from the script
    thread: the build touches no Streamlit element), then the download button with the file's size. The file is
    what the options say."""
    import io
    import logging
    import threading
    import time

    import numpy as np

    from inspector_ui import traces
    from rwkv_core.io.trace_file import load_trace

    reached, release, real = threading.Event(), threading.Event(), traces.build_trace

    def slow_build(model, tokens, *, progress, **kwargs):  # two blocks done, then wait for the test
        progress(2, model.cfg.n_layer + 1)
        reached.set()
        release.wait(60)
        return real(model, tokens, progress=progress, **kwargs)

    monkeypatch.setattr(traces, "build_trace", slow_build)
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.threadName != "MainThread":
                logged.append(f"{record.threadName}: {record.getMessage()}")

    handler = Keep(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("streamlit")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        at = run_clean(app_session())
        at.checkbox(key="trace_f16_A").uncheck()
        at.button(key="trace_prepare_A").click()
        run_clean(at)  # the build starts in the background (the page may still see it waiting for the model)
        assert reached.wait(60)
        run_clean(at)  # what the fragment's next poll draws
        bars = at.get("progress")
        assert len(bars) == 1 and not at.get("download_button")
        n_layer = len(at.multiselect(key="trace_layers_A").value)
        assert f"2 / {n_layer + 1} blocks" in bars[0].proto.text, bars[0].proto.text
        assert 0 < bars[0].proto.value < 100
        release.set()
        progress = at.session_state["trace_build_A"][1]
        for _ in range(600):
            if progress.finished:
                break
            time.sleep(0.1)
        assert progress.phase == "done", progress.error
        run_clean(at)
    finally:
        release.set()
        for lg in loggers:
            lg.removeHandler(handler)
    assert not at.get("progress")
    (button,) = at.get("download_button")
    assert button.proto.label == f"Download the trace (.npz, {progress.size / 2**20:,.1f} MB)"
    assert at.button(key="trace_prepare_A").disabled  # the file is ready: nothing to prepare again
    data = traces.prepared_file(at.session_state["trace_build_A"][0])
    assert len(data) == progress.size
    tr = load_trace(io.BytesIO(data))
    T = len(token_views(at)[0]["tokens"])
    assert tr.arrays["logits_topk_ids"].shape == (T, 16) and "logits" not in tr.arrays
    assert tr.arrays["r_l0"].dtype == np.float32 and "resid_l0" not in tr.arrays  # float16 unchecked
    assert tr.layers == list(range(n_layer))
    assert not [m for m in logged if "ScriptRunContext" in m], logged


def test_the_trace_file_builds_without_touching_streamlit():
    """The build runs outside any script run (a background thread; the download button's callable when the file was
    dropped): building there logs no "missing ScriptRunContext!" warning (before, each download wrote such lines)."""
    import io
    import logging
    import threading

    import numpy as np

    from inspector_ui.registry import default_model_name, list_models
    from inspector_ui.traces import DownloadOptions, trace_file_bytes

    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    # Streamlit's loggers do not propagate: listen on each of them
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("streamlit")]
    for lg in loggers:
        lg.addHandler(handler)
    got: list[bytes] = []
    try:
        text = "Hello"
        worker = threading.Thread(target=lambda: got.append(trace_file_bytes(
            (default_model_name(list_models()), "cpu", "fp32"), tuple(text.encode()), tuple(text),
            DownloadOptions(layers=(0, 1), logits_topk=None))))
        worker.start()
        worker.join(120)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert got, "the trace file was not built"
    with np.load(io.BytesIO(got[0])) as z:
        assert "logits" in z.files and "r_l1" in z.files and "r_l2" not in z.files
    assert not [m for m in logged if "ScriptRunContext" in m], logged
