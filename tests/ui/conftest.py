"""Fixtures of the page tests: a configured model folder holding a checkpoint whose vocabulary matches no
tokenizer (the app types its prompt as token ids)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

ODD_VOCAB = 777  # no tokenizer has 777 ids: not bytes (256), World (65536) or digits (12), and no tokenizer file


@pytest.fixture
def ids_model(tmp_path, monkeypatch) -> Iterator[str]:
    """The registry name of a random 2-layer RWKV-7 checkpoint with 777 embedding rows, offered through a configured
    model folder (RWKV_INSPECTOR_MODEL_DIRS) for the length of the test."""
    from inspector_ui import resources, settings
    from rwkv_core.io.synthetic import write_random_checkpoint

    folder = tmp_path / "odd"
    folder.mkdir()
    write_random_checkpoint(folder / "odd-vocab.pth", "7", vocab_size=ODD_VOCAB, n_layer=2, n_embd=32, head_size=16)
    monkeypatch.setenv(settings.MODEL_DIRS_ENV, str(folder))
    resources.get_registry.clear()
    try:
        yield "odd/odd-vocab.pth"
    finally:
        monkeypatch.delenv(settings.MODEL_DIRS_ENV)
        resources.get_registry.clear()
