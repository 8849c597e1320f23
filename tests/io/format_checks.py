"""What the format tests check for every reader: logits equal to the official `rwkv` package's, sequence = RNN."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import save_checkpoint
from tests.oracle_rwkv_pip import official_forward_modes

TOKENS = [1, 33, 4000, 10, 65, 65, 2, 700, 33, 4000, 10, 9]


def tokens_for(vocab: int) -> list[int]:
    return [t % vocab for t in TOKENS]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def ours(path: Path, tokens: list[int]) -> dict[str, np.ndarray]:
    """Our logits [T, V] in sequence and RNN mode for the checkpoint at `path` (a folder, a GGUF, a .pth)."""
    model = load_model(path)
    with torch.no_grad():
        return {"seq": model(tokens)[0][0].numpy(), "rnn": model.forward_rnn(tokens)[0][0].numpy()}


def assert_matches_official(path: Path, reference_pth: Path, version: str, tokens: list[int]) -> np.ndarray:
    """Logits of `path` within 1e-5 (relative to the largest) of the package on `reference_pth`, both modes."""
    ref = official_forward_modes(str(reference_pth), tokens, version=version, upcast=True)
    got = ours(path, tokens)
    for mode in ("seq", "rnn"):
        rel = rel_error(got[mode], ref[mode]["logits"])
        assert rel < 1e-5, f"{Path(path).name} {mode}: max relative logit error {rel:.2e} against the rwkv package"
    return got["seq"]


def reference_from(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """A float32 .pth of `state_dict` (weights as a reader or a rounding made them) for the package to run."""
    save_checkpoint({k: v.float() for k, v in state_dict.items()}, path)
    return path
