"""The project's own exceptions: one-line messages that say what is wrong and what to do."""
from __future__ import annotations

import os


class RWKVInspectorError(Exception):
    """Base class of every error the project raises on purpose."""


class CheckpointError(RWKVInspectorError):
    """A file is not a usable RWKV checkpoint. The message names the file and the problem in one line."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        name = os.path.basename(self.path) if self.path else "checkpoint"
        super().__init__(f"{name}: {problem}")


class TokenizerError(RWKVInspectorError):
    """A tokenizer file or choice is unusable."""


class InputError(RWKVInspectorError):
    """User input (prompt, subject, answer, settings) is not acceptable."""
