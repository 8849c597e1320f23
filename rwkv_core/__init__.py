"""RWKV Inspector engine: checkpoints, tokenizers, the model with hooks, scores, decay and tracing.

No Streamlit here: everything is testable on its own.
"""
from rwkv_core.model.config import ModelConfig
from rwkv_core.errors import CheckpointError, InputError, RWKVInspectorError, TokenizerError

__all__ = ["ModelConfig", "CheckpointError", "InputError", "RWKVInspectorError", "TokenizerError"]
