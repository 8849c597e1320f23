"""Random RWKV checkpoints in the official BlinkDL layout, for tests and benchmarks.

`random_state_dict(version, ...)` returns a `state_dict` with exactly the official tensor names, shapes and key order
(rwkv-math §3) for RWKV v4, v5.1 (rwkv.cpp's label for the gate-less RWKV-5 preview), v5.2, v6 (x060) and v7 (x070).
The values are *realistic*, not degenerate, so that logits and recurrent states exercise all of the maths:

- decays spread like the official initialisations (tracing-and-decay §4) plus noise, so per-step decays range from
  near 0 to near 1 (v7: from near its floor exp(-e^-0.5) ~ 0.545 to near 1), channels of one head differ;
- mixing coefficients uniform in (0, 1); LayerNorm / GroupNorm weights near 1 with spread, small biases;
- Linear weights N(0, gain/sqrt(fan_in)), so pre-activations are O(1); output projections (att.output, ffn.value)
  carry a gain 1/sqrt(1 + n_layer/8), so each block adds an O(0.5) contribution to a residual stream of O(1-3) rms;
- LoRA matrices (v6 `time_maa_w1/w2`, `time_decay_w1/w2`; v7 `w1 w2 a1 a2 v1 v2 g1 g2`, stored [in, out]) with
  first factors N(0, 1/sqrt(C)) and second factors sized so that the data-dependent terms move decays, mixes, the
  in-context rate a, the value residual and the gate by O(0.3-1), i.e. they matter;
- v7 `a0`, `v0` so that sigmoid(.) spans (0, 1); `k_k` ~ 0.85, `k_a` ~ 1 with noise; `r_k` ~ N(0, 0.1).

Every tensor is drawn from its own generator seeded by (seed, tensor name), so the result is deterministic given the
arguments, and changing one option (e.g. `include_v7_layer0_v`, a LoRA rank) leaves the unrelated tensors unchanged.
Values are drawn in float32 and stored in `dtype` (fp32, bf16 or fp16), as official bf16 releases store every tensor
in bf16.

No Streamlit; of the rest of the project only the list of versions (`rwkv_core.model.config.VERSIONS`).
"""
from __future__ import annotations

import hashlib
import math
from os import PathLike

import torch

from rwkv_core.model.config import VERSIONS

# LoRA names follow ModelConfig.lora: v6 {"maa": Dm, "decay": Dd}; v7 {"w": Dw, "a": Da, "v": Dv, "g": Dg}.
LORA_NAMES = {"6": ("maa", "decay"), "7": ("w", "a", "v", "g")}

__all__ = [
    "VERSIONS",
    "LORA_NAMES",
    "default_dim_ffn",
    "default_lora",
    "random_state_dict",
    "save_checkpoint",
    "write_random_checkpoint",
]


def default_dim_ffn(version: str, n_embd: int) -> int:
    """FFN width of released models: 4C for v4 and v7, int(3.5C)//32*32 for v5.x and v6 (at least 32)."""
    version = _check_version(version)
    if version in ("4", "7"):
        return 4 * n_embd
    return max(32, int(3.5 * n_embd) // 32 * 32)


def default_lora(version: str, n_embd: int) -> dict[str, int]:
    """Default LoRA ranks: small for small models, the released sizes from C = 256 on.

    v6: Dm = 8, Dd = 16 below C = 256, else 32 and 64 (1.6B/3B values). v7: below C = 256 the distinct small ranks
    w 16, a 16, v 8, g 32 (distinct on purpose: a loader that mixes them up fails on shapes); from C = 256 on, the
    RWKV-LM "suggestion" formulas (rwkv-math §3).
    """
    version = _check_version(version)
    if version == "6":
        return {"maa": 32, "decay": 64} if n_embd >= 256 else {"maa": 8, "decay": 16}
    if version == "7":
        if n_embd < 256:
            return {"w": 16, "a": 16, "v": 8, "g": 32}
        s = math.sqrt(n_embd)
        return {
            "w": max(32, round(2.5 * s / 32) * 32),
            "a": max(32, round(2.5 * s / 32) * 32),
            "v": max(32, round(1.7 * s / 32) * 32),
            "g": max(32, round(5.0 * s / 32) * 32),
        }
    return {}


def _check_version(version) -> str:
    v = str(version)
    aliases = {"5": "5.2", "6.0": "6", "7.0": "7", "4.0": "4", "x052": "5.2", "x060": "6", "x070": "7"}
    v = aliases.get(v, v)
    if v not in VERSIONS:
        raise ValueError(f"unknown RWKV version {version!r}; expected one of {VERSIONS}")
    return v


class _Rng:
    """Independent float32 draws per tensor name: seeded from blake2b(seed, name)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def gen(self, name: str) -> torch.Generator:
        h = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))

    def normal(self, name: str, shape, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen(name), dtype=torch.float32) * std + mean

    def uniform(self, name: str, shape, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen(name), dtype=torch.float32) * (hi - lo) + lo


def random_state_dict(
    version: str,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    head_size: int = 16,
    vocab_size: int = 256,
    dim_ffn: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    lora: dict[str, int] | int | None = None,
    include_v7_layer0_v: bool = False,
) -> dict[str, torch.Tensor]:
    """A random checkpoint in the official BlinkDL layout (names, shapes, key order), stored in `dtype`.

    version: "4", "5.1" (gate-less RWKV-5 preview: `time_decay`/`time_first` per head [H]), "5.2", "6" or "7".
    head_size: N; H = n_embd // head_size (ignored for v4). dim_ffn: default `default_dim_ffn`.
    lora: v6/v7 only; a dict overriding some of the ranks of `default_lora` (v6 keys "maa", "decay"; v7 "w", "a",
    "v", "g"), or an int for all of them. include_v7_layer0_v: also write `blocks.0.att.v0/v1/v2` (released v7
    files omit them; they are unused in layer 0).
    """
    version = _check_version(version)
    C, L, V = int(n_embd), int(n_layer), int(vocab_size)
    if L < 1 or C < 1 or V < 1:
        raise ValueError("n_layer, n_embd and vocab_size must be positive")
    if version != "4":
        if head_size < 1 or C % head_size:
            raise ValueError(f"n_embd={C} is not a multiple of head_size={head_size}")
    H = C // head_size if version != "4" else 1
    N = head_size
    F = int(dim_ffn) if dim_ffn is not None else default_dim_ffn(version, C)
    ranks = default_lora(version, C)
    if lora is not None:
        if version not in LORA_NAMES:
            raise ValueError(f"version {version} has no LoRA matrices; got lora={lora!r}")
        if isinstance(lora, int):
            lora = {k: lora for k in LORA_NAMES[version]}
        unknown = set(lora) - set(LORA_NAMES[version])
        if unknown:
            raise ValueError(f"unknown LoRA names {sorted(unknown)} for v{version}; expected {LORA_NAMES[version]}")
        ranks.update({k: int(r) for k, r in lora.items()})
    if any(r < 1 for r in ranks.values()):
        raise ValueError(f"LoRA ranks must be >= 1: {ranks}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")

    rng = _Rng(seed)
    sd: dict[str, torch.Tensor] = {}
    out_gain = 1.0 / math.sqrt(1.0 + L / 8.0)  # keeps the residual stream O(1-3) rms over layers

    def ln(name: str, dim: int = C) -> None:
        sd[name + ".weight"] = rng.normal(name + ".weight", (dim,), 0.15, 1.0)
        sd[name + ".bias"] = rng.normal(name + ".bias", (dim,), 0.05)

    def linear(name: str, out_f: int, in_f: int, gain: float = 1.0) -> None:  # nn.Linear: [out, in]
        sd[name] = rng.normal(name, (out_f, in_f), gain / math.sqrt(in_f))

    def mix(name: str) -> None:
        sd[name] = rng.uniform(name, (1, 1, C))

    def lora_pair(n1: str, n2: str, rank: int, gain2: float) -> None:  # LoRA: [in, out]
        sd[n1] = rng.normal(n1, (C, rank), 1.0 / math.sqrt(C))
        sd[n2] = rng.normal(n2, (rank, C), gain2 / math.sqrt(rank))

    def gated_projections(att: str) -> None:  # v5.2 / v6: r, k, v, output, gate and the group norm ln_x
        for m in ("receptance", "key", "value"):
            linear(att + m + ".weight", C, C)
        linear(att + "output.weight", C, C, out_gain)
        linear(att + "gate.weight", C, C)
        ln(att + "ln_x")

    chan = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)  # c / (C-1)
    zig = (((torch.arange(C) + 1) % 3) - 1).to(torch.float32)  # the official "zigzag" (i+1)%3-1
    sd["emb.weight"] = rng.normal("emb.weight", (V, C), 0.1)

    for i in range(L):
        b = f"blocks.{i}."
        att, ffn = b + "att.", b + "ffn."
        r01 = i / (L - 1) if L > 1 else 0.0  # ratio_0_to_1
        ln(b + "ln1")
        ln(b + "ln2")
        if i == 0:
            ln(b + "ln0")

        if version == "4":
            # official: -5 + 8 (c/(C-1))^(0.7 + 1.3 r): lambda from ~0.993 down to ~0
            td = -5.0 + 8.0 * chan ** (0.7 + 1.3 * r01)
            sd[att + "time_decay"] = td + rng.normal(att + "time_decay", (C,), 0.5)
            sd[att + "time_first"] = math.log(0.3) + 0.5 * zig + rng.normal(att + "time_first", (C,), 0.3)
            for m in ("k", "v", "r"):
                mix(att + "time_mix_" + m)
            for m in ("key", "value", "receptance"):
                linear(att + m + ".weight", C, C)
            linear(att + "output.weight", C, C, out_gain)

        elif version == "5.1":  # gate-less RWKV-5 preview: one decay and one bonus per head
            hh = torch.arange(H, dtype=torch.float32) / max(H - 1, 1)
            td = -6.0 + 6.5 * hh ** (0.7 + 1.3 * r01)  # init formula over heads, widened at the fast end
            for m in ("k", "v", "r"):
                mix(att + "time_mix_" + m)
            sd[att + "time_decay"] = td + rng.normal(att + "time_decay", (H,), 0.4)
            sd[att + "time_first"] = rng.normal(att + "time_first", (H,), 0.8, -1.0)  # u = exp(.) ~ 0.07 .. 1.8
            for m in ("receptance", "key", "value"):
                linear(att + m + ".weight", C, C)
            linear(att + "output.weight", C, C, out_gain)
            ln(att + "ln_x")

        elif version == "5.2":
            for m in ("k", "v", "r", "g"):
                mix(att + "time_mix_" + m)
            sd[att + "time_decay"] = _decay_v5_v6(rng, att + "time_decay", chan, r01).reshape(H, N)
            sd[att + "time_faaaa"] = _faaaa(rng, att + "time_faaaa", chan, r01, zig).reshape(H, N)
            gated_projections(att)

        elif version == "6":
            dm, dd = ranks["maa"], ranks["decay"]
            for m in ("x", "w", "k", "v", "r", "g"):
                mix(att + "time_maa_" + m)
            sd[att + "time_maa_w1"] = rng.normal(att + "time_maa_w1", (C, 5 * dm), 1.0 / math.sqrt(C))
            # m = tanh(.) @ w2[n]: tanh(unit) has rms ~0.6, so the data-dependent mixes move by ~0.3
            sd[att + "time_maa_w2"] = rng.normal(att + "time_maa_w2", (5, dm, C), 0.5 / math.sqrt(dm))
            sd[att + "time_decay"] = _decay_v5_v6(rng, att + "time_decay", chan, r01).reshape(1, 1, C)
            # decay LoRA output ~0.6 rms: per-token rates vary by a factor ~e^0.6 around the static one
            lora_pair(att + "time_decay_w1", att + "time_decay_w2", dd, 1.0)
            sd[att + "time_faaaa"] = _faaaa(rng, att + "time_faaaa", chan, r01, zig).reshape(H, N)
            gated_projections(att)

        else:  # "7"
            for m in ("r", "w", "k", "v", "a", "g"):
                mix(att + "x_" + m)
            # official: w0 = -6 + 6 (c/(C-1))^(1 + r^0.3) + 0.5 + 2.5 zigzag, zigzag = z|z| within each head
            z = ((torch.arange(C) % N).to(torch.float32) - (N - 1) / 2) / max((N - 1) / 2, 1e-9)
            w0 = -6.0 + 6.0 * chan ** (1.0 + r01 ** 0.3) + 0.5 + 2.5 * z * z.abs()
            sd[att + "w0"] = (w0 + rng.normal(att + "w0", (C,), 0.3)).reshape(1, 1, C)
            lora_pair(att + "w1", att + "w2", ranks["w"], 1.0)
            sd[att + "a0"] = rng.normal(att + "a0", (1, 1, C), 1.0)
            lora_pair(att + "a1", att + "a2", ranks["a"], 1.0)  # a = sigmoid(a0 + .): pre-activation std ~1.4
            if i > 0 or include_v7_layer0_v:
                sd[att + "v0"] = rng.normal(att + "v0", (1, 1, C), 1.0, 0.5)
                lora_pair(att + "v1", att + "v2", ranks["v"], 1.0)
            # g = sigmoid(x g1) @ g2: sigmoid(unit) has rms ~0.54, so gain 1.8 gives a gate of ~1 rms
            lora_pair(att + "g1", att + "g2", ranks["g"], 1.8)
            sd[att + "k_k"] = rng.normal(att + "k_k", (1, 1, C), 0.1, 0.85)
            sd[att + "k_a"] = rng.normal(att + "k_a", (1, 1, C), 0.1, 1.0)
            sd[att + "r_k"] = rng.normal(att + "r_k", (H, N), 0.1)
            for m in ("receptance", "key", "value"):
                linear(att + m + ".weight", C, C)
            linear(att + "output.weight", C, C, out_gain)
            ln(att + "ln_x")

        # channel mix
        if version == "7":
            mix(ffn + "x_k")
            linear(ffn + "key.weight", F, C)
            linear(ffn + "value.weight", C, F, out_gain)
        else:
            pre = "time_maa_" if version == "6" else "time_mix_"
            mix(ffn + pre + "k")
            mix(ffn + pre + "r")
            linear(ffn + "key.weight", F, C)
            linear(ffn + "receptance.weight", C, C)
            linear(ffn + "value.weight", C, F, out_gain)

    ln("ln_out")
    sd["head.weight"] = rng.normal("head.weight", (V, C), 2.0 / math.sqrt(C))  # logits ~2 rms
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def _decay_v5_v6(rng: _Rng, name: str, chan: torch.Tensor, r01: float) -> torch.Tensor:
    """v5.2/v6 `time_decay` per channel: the official -6 + 5 (c/(C-1))^(0.7 + 1.3 r), widened by 1.5 at the fast end
    (trained models drift there) plus N(0, 0.5): lambda = exp(-exp(td)) from ~0.998 down to ~0.1."""
    td = -6.0 + 6.5 * chan ** (0.7 + 1.3 * r01)
    return td + rng.normal(name, chan.shape, 0.5)


def _faaaa(rng: _Rng, name: str, chan: torch.Tensor, r01: float, zig: torch.Tensor) -> torch.Tensor:
    """v5.2/v6 bonus u (`time_faaaa`): official r (1 - c/(C-1)) + 0.1 zigzag, plus N(0, 0.3) (trained spread)."""
    return r01 * (1.0 - chan) + 0.1 * zig + rng.normal(name, chan.shape, 0.3)


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: str | PathLike) -> None:
    """Write an official-style `.pth`: `torch.save` of a plain {name: tensor} dict (loadable with weights_only=True).

    Tensors are cloned so that no view drags a larger storage into the file.
    """
    torch.save({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, str(path))


def write_random_checkpoint(path: str | PathLike, version: str, **kwargs) -> dict[str, torch.Tensor]:
    """`random_state_dict(version, **kwargs)` saved to `path`; returns the state_dict."""
    sd = random_state_dict(version, **kwargs)
    save_checkpoint(sd, path)
    return sd
