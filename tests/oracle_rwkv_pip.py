"""The official `rwkv` pip package (BlinkDL ChatRWKV, 0.8.x) as an independent oracle for logits and states.

Each call runs the package in a fresh subprocess (`sys.executable` on this very file): the package reads
`RWKV_V7_ON`, `RWKV_JIT_ON` and `RWKV_CUDA_ON` at import time, and with `RWKV_V7_ON=1` its `RWKV` name *is* the v7
class, so v4-v6 and v7 cannot share a process. The child gets RWKV_JIT_ON=0, RWKV_CUDA_ON=0, RWKV_V7_ON=1 only for v7
(the v7 code is always TorchScript-compiled anyway), and no RWKV_RESCALE_LAYER / RWKV_DE_VERSION / RWKV_DML_ON.
Data comes back through an .npz file in a temporary directory.

    official_forward(ckpt, tokens, mode="seq"|"rnn", version="6") -> {"logits": [T, V] float32, "state": [...], ...}
    official_forward_modes(ckpt, tokens, version="6", modes=("seq", "rnn")) -> {"seq": {...}, "rnn": {...}}
    state_by_layer(state, version) -> per-layer dicts with named entries

Package facts this wrapper relies on (checked against rwkv 0.8.32 `rwkv/model.py`):

- seq mode: `forward(tokens, None, full_output=True)` returns logits for every position ([T, V]) on CPU for v4-v6
  (`x[-1,:]` is taken only when full_output is False) and for the v7 class (`forward_seq`). A one-token list goes to
  the RNN path and returns [V]; the wrapper reshapes it to [1, V].
- rnn mode: `forward([tok], state)` token by token; logits stacked to [T, V].
- State (what the package returns, as a flat list; the wrapper converts to float32 numpy):
  v4: 5 per layer, state[5i+0..4] = att_xx [C] (ln1 output of the last token), aa [C], bb [C], pp [C] (initial
  -1e30), ffn_xx [C]. v5.x/v6: 3 per layer, state[3i+0..2] = att_xx [C], att_kv [H, N, N] in [head, key, value]
  layout (decay scales rows), ffn_xx [C]. v7 (RWKV_x070): 3 per layer, att_x_prev [C], att_kv [H, N, N] in
  [head, value, key] layout (decay scales columns), ffn_x_prev [C]. v_first is not state. WKV states are float32.
- Paths: the v7 class always appends ".pth" (`torch.load(model + '.pth')`); the v4-v6 class appends it when
  missing. The wrapper symlinks the checkpoint as `<tmp>/model.pth` and passes `<tmp>/model`, so any file name works.
- Detection (v4-v6 class): v5.2 needs the 2-D `time_decay` to be seen *after* `ln_x`/`gate`, which in the official
  key order happens only in block 1; the gate-less RWKV-5 preview ("5.1" here, package label 5.0) takes n_head from
  block 1 too. With n_layer == 1 the wrapper writes a copy with block 0's `ln_x`/`gate` keys first (numerically
  identical). It checks the detected version (4 / 5.0 / 5.2 / 6.0, or the v7 class) against `version` and raises on
  mismatch.
- The package rewrites decays in place (v4 -exp, v5 exp(-exp), v6 raw), renames `time_faaaa` -> `time_first`,
  transposes Linear weights; none of that is visible here (only logits and states come back).
- bf16/fp16 checkpoints: for v4-v6 the package computes LN(emb; ln0) in the *checkpoint* dtype before casting to
  fp32, which shifts logits by ~1e-3 relative; the v7 class casts first. Pass `upcast=True` to run the package on a
  float32 copy of the checkpoint (pure fp32 reference, what an fp32 implementation should match).
- ln_x GroupNorm eps is 64e-5 for all of v5.x/v6/v7 in the package (rwkv.cpp uses 1e-5 for v5.x).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Our version label -> the package's `model.version` (v4-v6 class); "7" is the RWKV_x070 class.
PACKAGE_VERSION = {"4": 4.0, "5.1": 5.0, "5.2": 5.2, "6": 6.0, "7": 7.0}
MODES = ("seq", "rnn")

__all__ = ["PACKAGE_VERSION", "MODES", "official_forward", "official_forward_modes", "state_by_layer",
           "OracleError"]


class OracleError(RuntimeError):
    """The package subprocess failed; the message carries the tail of its output."""


def _norm_version(version) -> str:
    v = str(version)
    v = {"6.0": "6", "7.0": "7", "4.0": "4", "5.0": "5.1"}.get(v, v)  # "5.0" is the package's preview label
    if v not in PACKAGE_VERSION:
        raise ValueError(f"unknown version {version!r}; expected one of {tuple(PACKAGE_VERSION)}")
    return v


def official_forward_modes(
    ckpt_path: str | os.PathLike,
    tokens: list[int],
    *,
    version: str,
    modes: tuple[str, ...] = MODES,
    strategy: str = "cpu fp32",
    upcast: bool = False,
    timeout: float = 600.0,
) -> dict[str, dict]:
    """Run the package once (one subprocess) in each of `modes`; returns {mode: result} as `official_forward`."""
    version = _norm_version(version)
    modes = tuple(modes)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {m!r}")
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("tokens must not be empty")
    ckpt = Path(ckpt_path).resolve()
    if not ckpt.is_file():
        raise FileNotFoundError(ckpt)

    with tempfile.TemporaryDirectory(prefix="rwkv_oracle_") as tmp:
        job = {
            "ckpt": str(ckpt),
            "tmp": tmp,
            "tokens": tokens,
            "version": version,
            "modes": list(modes),
            "strategy": strategy,
            "upcast": bool(upcast),
            "out": os.path.join(tmp, "out.npz"),
        }
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w") as f:
            json.dump(job, f)
        env = dict(os.environ)
        for k in ("RWKV_RESCALE_LAYER", "RWKV_DE_VERSION", "RWKV_DML_ON"):
            env.pop(k, None)
        env.update(RWKV_JIT_ON="0", RWKV_CUDA_ON="0", RWKV_V7_ON="1" if version == "7" else "0")
        try:
            proc = subprocess.run([sys.executable, "-P", os.path.abspath(__file__), job_path], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise OracleError(f"rwkv package oracle timed out after {timeout} s on {ckpt}") from e
        if proc.returncode != 0 or not os.path.exists(job["out"]):
            tail = (proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-6000:]).strip()
            raise OracleError(f"rwkv package oracle failed (rc={proc.returncode}) on {ckpt} v{version}:\n{tail}")
        with np.load(job["out"]) as z:
            data = {k: z[k] for k in z.files}

    results = {}
    for m in modes:
        n_state = int(data[f"{m}/n_state"])
        results[m] = {
            "logits": data[f"{m}/logits"],
            "state": [data[f"{m}/state/{j}"] for j in range(n_state)],
            "mode": m,
            "version": version,
            "package_version": float(data["package_version"]),
            "n_layer": int(data["n_layer"]),
            "strategy": strategy,
            "upcast": bool(upcast),
        }
    return results


def official_forward(
    ckpt_path: str | os.PathLike,
    tokens: list[int],
    *,
    mode: str,
    version: str,
    strategy: str = "cpu fp32",
    upcast: bool = False,
    timeout: float = 600.0,
) -> dict:
    """Logits at every position and the final state from the official `rwkv` package, zero initial state.

    mode "seq": one `forward(tokens, None, full_output=True)` call; "rnn": `forward([tok], state)` per token.
    version: "4", "5.1" (gate-less RWKV-5 preview), "5.2", "6", "7". Returns a dict with
    "logits" (float32 [T, V]), "state" (list of float32 arrays in the package's order, see the module docstring and
    `state_by_layer`), "package_version" (the package's own detected label, 7.0 for the v7 class), "n_layer",
    "mode", "version", "strategy", "upcast" (True: run on a float32 copy of the checkpoint).
    """
    return official_forward_modes(ckpt_path, tokens, version=version, modes=(mode,), strategy=strategy,
                                  upcast=upcast, timeout=timeout)[mode]


def state_by_layer(state: list, version: str) -> list[dict[str, np.ndarray]]:
    """Name the package's flat state list per layer.

    v4: {"att_x_prev", "aa", "bb", "pp", "ffn_x_prev"}. v5.x/v6: {"att_x_prev", "wkv" [H, key, value],
    "ffn_x_prev"}. v7: {"att_x_prev", "wkv" [H, value, key], "ffn_x_prev"}.
    """
    version = _norm_version(version)
    names = ("att_x_prev", "aa", "bb", "pp", "ffn_x_prev") if version == "4" else ("att_x_prev", "wkv", "ffn_x_prev")
    k = len(names)
    if len(state) % k:
        raise ValueError(f"state of length {len(state)} is not a multiple of {k} for v{version}")
    return [dict(zip(names, state[i:i + k])) for i in range(0, len(state), k)]


# ---------------------------------------------------------------------------------------------------------------------
# Worker: runs in the subprocess. Imports only torch, numpy and the rwkv package (nothing from this project).


def _worker(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    import torch

    version, tmp = job["version"], job["tmp"]
    try:
        sd = torch.load(job["ckpt"], map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        sd = torch.load(job["ckpt"], map_location="cpu", weights_only=True)
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    rewrite = None
    if job["upcast"]:
        rewrite = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    if version in ("5.1", "5.2") and n_layer < 2:
        # The package detects v5.x (and its n_head) from a time_decay seen after ln_x/gate; put those first.
        src = rewrite if rewrite is not None else sd
        first = [k for k in src if k.startswith("blocks.0.att.") and (".ln_x." in k or ".gate." in k)]
        rewrite = {**{k: src[k] for k in first}, **{k: v for k, v in src.items() if k not in first}}
    model_base = os.path.join(tmp, "model")
    if rewrite is not None:
        torch.save(rewrite, model_base + ".pth")
    else:
        os.symlink(job["ckpt"], model_base + ".pth")
    del sd, rewrite

    from rwkv.model import RWKV  # env set by the parent; with RWKV_V7_ON=1 this is RWKV_x070

    if version == "7":
        model = RWKV(model_base, job["strategy"])
        if not hasattr(model, "generate_zero_state"):
            raise SystemExit("expected the RWKV_x070 class (RWKV_V7_ON=1)")
        pkg_version = 7.0
    else:
        model = RWKV(model_base, job["strategy"], verbose=False)
        pkg_version = float(model.version)
    if abs(pkg_version - PACKAGE_VERSION[version]) > 1e-9:
        raise SystemExit(f"package detected version {pkg_version}, expected {PACKAGE_VERSION[version]} for v{version}")

    def to_np(t):
        return t.detach().float().cpu().numpy().copy()

    tokens = [int(t) for t in job["tokens"]]
    out = {"package_version": np.array(pkg_version), "n_layer": np.array(n_layer)}
    with torch.no_grad():
        for mode in job["modes"]:
            if mode == "seq":
                logits, state = model.forward(list(tokens), None, full_output=True)
                logits = to_np(logits).reshape(len(tokens), -1)
            else:
                state, rows = None, []
                for t in tokens:
                    lg, state = model.forward([t], state)
                    rows.append(to_np(lg).reshape(-1))
                logits = np.stack(rows)
            out[f"{mode}/logits"] = logits.astype(np.float32)
            out[f"{mode}/n_state"] = np.array(len(state))
            for j, s in enumerate(state):
                out[f"{mode}/state/{j}"] = to_np(s)
    np.savez(job["out"], **out)


if __name__ == "__main__":
    _worker(sys.argv[1])
