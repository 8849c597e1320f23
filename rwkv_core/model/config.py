"""Architecture description of an RWKV checkpoint, read from its tensors."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

VERSIONS = ("4", "5.1", "5.2", "6", "7")


@dataclass
class ModelConfig:
    """Everything needed to build the modules of one RWKV checkpoint.

    `version` is one of VERSIONS ("5.1" is rwkv.cpp's label for the gate-less RWKV-5 preview).
    `lora` maps a LoRA name to its rank, read from tensor shapes:
    v6: {"maa": Dm, "decay": Dd}; v7: {"w": Dw, "a": Da, "v": Dv, "g": Dg}.
    """

    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    dim_ffn: int
    n_head: int = 1  # v4 has no heads: 1 by convention
    head_size: int = 0  # v4: 0
    dim_att: int = 0
    ln_x_eps: float = 64e-5  # rwkv.cpp v5.x files use 1e-5
    has_ln0: bool = True  # the reverse-digits model has no ln0
    head_bias: bool = False  # the reverse-digits model has head.bias
    resid_bias: bool = False  # per-layer constant added after the time-mix (reverse-digits model)
    lora: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"unknown RWKV version {self.version!r}; expected one of {VERSIONS}")
        if not self.dim_att:
            self.dim_att = self.n_embd

    @property
    def has_heads(self) -> bool:
        return self.version != "4"

    def to_dict(self) -> dict:
        return asdict(self)
