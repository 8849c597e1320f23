"""The meta checks of a loaded trace (rwkv_core.io.trace_file.trace_contents): the model config field by field, the
layers, and the token texts, so a viewer gets a usable config or a one-line TraceFileError, never a traceback."""
from __future__ import annotations

import io

import numpy as np
import pytest

from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from rwkv_core.io.trace_file import (Trace, TraceFileError, build_trace, load_trace, save_trace, trace_config,
                                     trace_contents)


@pytest.fixture(scope="module")
def v7_trace(tmp_path_factory) -> tuple:
    """A saved and reloaded trace of layer 1 of a random 2-layer RWKV-7 model, and the model."""
    path = tmp_path_factory.mktemp("ckpt") / "v7.pth"
    write_random_checkpoint(path, "7", n_layer=2, n_embd=32, head_size=16, vocab_size=300)
    model = load_model(path)
    arrays = build_trace(model, [5, 6, 7], layers=[1], token_texts=["a", "<b>", "c"], tokenizer_kind="bytes")
    buf = io.BytesIO()
    save_trace(arrays, buf)
    buf.seek(0)
    return load_trace(buf), model


def _with_meta(trace: Trace, **update) -> Trace:
    return Trace(trace.arrays, {**trace.meta, **update})


def test_an_exported_trace_gives_back_its_model_config_layers_and_texts(v7_trace):
    trace, model = v7_trace
    got = trace_contents(trace)
    assert got.cfg == model.cfg
    assert (got.layers, got.tokens, got.token_texts) == ([1], [5, 6, 7], ["a", "<b>", "c"])


@pytest.mark.parametrize("config_update", [
    {"n_layer": "x"}, {"n_layer": 0}, {"n_embd": True}, {"ln_x_eps": -1.0}, {"head_bias": 1},
    {"lora": {"w": "8"}}, {"lora": [1]}, {"version": 7}, {"evil": 1}])
def test_a_config_a_page_cannot_use_is_one_line(v7_trace, config_update):
    trace, _ = v7_trace
    raw = {**trace.meta["config"], **config_update}
    with pytest.raises(TraceFileError, match="model config is not usable") as info:
        trace_config(raw)
    assert "\n" not in str(info.value)
    with pytest.raises(TraceFileError):
        trace_contents(_with_meta(trace, config=raw))


def test_a_missing_field_is_one_line(v7_trace):
    with pytest.raises(TraceFileError, match="model config is not usable"):
        trace_config({"version": "7"})


@pytest.mark.parametrize("layers", [[0, 2], [-1], "1", [1.0], None])
def test_layers_must_be_layer_numbers_of_the_model(v7_trace, layers):
    trace, _ = v7_trace
    with pytest.raises(TraceFileError, match=r"layer numbers 0\.\.1"):
        trace_contents(_with_meta(trace, layers=layers))


@pytest.mark.parametrize("texts", [["a"], {"a": 1}, [1, 2, 3], None])
def test_unusable_token_texts_give_way_to_the_ids(v7_trace, texts):
    trace, _ = v7_trace
    assert trace_contents(_with_meta(trace, token_texts=texts)).token_texts == ["5", "6", "7"]


def test_the_tokens_come_back_as_python_ints(v7_trace):
    trace, _ = v7_trace
    assert all(type(t) is int for t in trace_contents(trace).tokens)
    assert isinstance(trace.tokens, np.ndarray)
