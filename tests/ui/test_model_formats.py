"""Hugging Face folders and GGUF files everywhere a model is chosen in the app: a configured model folder lists
them (a subfolder with config.json is one model, a .gguf file one), they load with their own tokenizer, "Add a
model" downloads a Hub repository's folder, and every page runs on them."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import PAGES, REPO
from tests.ui.page_helpers import app_session

pytest.importorskip("rwkv7_hf", reason="rwkv7-hf (test-only) writes the RWKV-7 folders")
pytest.importorskip("gguf", reason="the gguf package reads GGUF files")


@pytest.fixture
def format_dir(tmp_path, monkeypatch):
    """A configured model folder with an RWKV-7 Hugging Face folder, a q8_0 GGUF and a folder that is no model."""
    from inspector_ui import resources, settings
    from tests.io import format_fixtures as fx

    folder = tmp_path / "formats"
    folder.mkdir()
    shutil.copytree(fx.v7_file("hf"), folder / "rwkv7-hf")
    shutil.copy(fx.v7_file("gguf_q8_0"), folder / "rwkv7-q8_0.gguf")
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("not a model")
    monkeypatch.setenv(settings.MODEL_DIRS_ENV, str(folder))
    resources.get_registry.clear()
    yield folder
    monkeypatch.delenv(settings.MODEL_DIRS_ENV)
    resources.get_registry.clear()


def test_configured_folder_lists_hf_folders_and_gguf_files(format_dir):
    from inspector_ui import registry
    from inspector_ui.resources import ModelPool

    models = {n: e for n, e in registry.list_models().items() if n.startswith("formats/")}
    assert sorted(models) == ["formats/rwkv7-hf", "formats/rwkv7-q8_0.gguf"]
    pool = ModelPool(budget_bytes=2 ** 34)
    for name, entry in models.items():
        lm = pool.get(entry)
        assert lm.tokenizer.kind == "world", name
        assert lm.entry.tokenizer == "world" and lm.entry.tokenizer_file  # what a tracing job is given
        assert lm.tokenizer.encode("The Eiffel Tower").ids == [6699, 304, 25740, 109, 37480]


def test_add_a_model_downloads_a_hub_folder(monkeypatch):
    """A repository id with no file name takes the repository's Hugging Face folder through snapshot_download
    (config, weights, tokenizer only: no code); a repository of another architecture is refused in one line."""
    import huggingface_hub

    from inspector_ui import resources
    from rwkv_core.errors import CheckpointError
    from tests.io import format_fixtures as fx

    asked = []

    def fake_snapshot(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, tuple(allow_patterns or ())))
        return str(fx.v7_file("hf") if repo_id == "fla-hub/rwkv7-test" else fx.v4_files()["pth"].parent / "llama")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    entry = resources.register_hub("fla-hub/rwkv7-test", "")
    assert entry.name == "hub: fla-hub/rwkv7-test" and entry.path == str(fx.v7_file("hf"))
    assert not any(p.endswith(".py") for p in asked[0][1]) and "config.json" in asked[0][1]
    llama = fx.v4_files()["pth"].parent / "llama"
    llama.mkdir(exist_ok=True)
    (llama / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(CheckpointError, match="LlamaForCausalLM"):
        resources.register_hub("meta/llama", "")


@pytest.mark.parametrize("model", ["formats/rwkv7-hf", "formats/rwkv7-q8_0.gguf"])
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_page_runs_on_a_folder_and_a_gguf_model(format_dir, page, model):
    at = app_session(str(page.relative_to(REPO)), 300, model=model, prompt="The Eiffel Tower is in Paris")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="model").value == model
    if page.stem[0] in "12356":  # Attention, Influence spans, Time decay, Logit lens, State draw on opening
        assert at.get("plotly_chart"), page.stem


@pytest.mark.parametrize("model", [pytest.param("formats/rwkv7-hf", marks=pytest.mark.slow), "formats/rwkv7-q8_0.gguf"])
def test_causal_tracing_traces_a_folder_and_a_gguf_model(format_dir, model):
    """A trace (a job on a Ray worker, which reopens the model by its path, with the tokenizer the pool found)."""
    at = app_session("pages/4_Causal_tracing.py", 300, model=model, prompt="The Eiffel Tower is in the city of")
    at.run()
    at.text_input(key="ct_subject").set_value("The Eiffel Tower")
    at.text_input(key="ct_answer").set_value(" Paris")
    at.number_input(key="ct_samples").set_value(2)
    next(b for b in at.button if b.label == "Trace").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 4
