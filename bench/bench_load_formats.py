"""Benchmark: loading a 1.5B-shaped RWKV-7 (24 x 2048, vocabulary 65,536) from a bf16 Hugging Face folder and from a
q8_0 GGUF, against `torch.load(mmap=True)` of the same model's bf16 .pth: time and peak memory.

The files are written under /tmp (deleted at the end unless --keep): the .pth by `write_random_checkpoint` (bf16, as
official releases), the folder by rwkv7-hf's converter (bf16, 2 GB shards), the GGUF by llama.cpp's own
convert_hf_to_gguf.py from that folder (see tests/io/format_fixtures.py). Each load runs in a fresh process and
reports its wall time and its peak resident memory (ru_maxrss, less the process's memory before the load; pages of
a memory-mapped file count once touched). Files are in the page cache (just written): warm-cache numbers.

    python bench/bench_load_formats.py                     # 24 x 2048 (~3 GB bf16)
    python bench/bench_load_formats.py --layers 4 --width 512 --keep
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(kind: str, path: str) -> dict:
    """One load in this process: seconds and peak memory above the process's memory before it."""
    import torch

    from rwkv_core.io.checkpoint import load_model

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if kind == "torch.load":
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        lazy = time.perf_counter() - t0
        total = sum(float(t.max()) for t in sd.values())  # read every byte once (no copy), as any use will
        out = {"lazy_s": lazy, "n": len(sd), "check": total}
    else:
        dtype = torch.float32 if kind == "model-fp32" else torch.bfloat16  # bf16: the folder's and .pth's own type
        model = load_model(path, dtype=dtype)
        out = {"n": sum(p.numel() for p in model.parameters()), "format": model.checkpoint_info["format"]}
    out["seconds"] = time.perf_counter() - t0
    out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return out


def run_child(kind: str, path: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--measure", kind, str(path)], capture_output=True, text=True,
                       cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} on {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def write_files(tmp: Path, layers: int, width: int) -> dict[str, Path]:
    """The .pth, the bf16 folder and the q8_0 GGUF, each written by its own process (memory freed between)."""
    pth, folder, gguf_file = tmp / "model.pth", tmp / "hf-bf16", tmp / "model-q8_0.gguf"
    code = ("import torch; from rwkv_core.io.synthetic import write_random_checkpoint as w; "
            f"w({str(pth)!r}, '7', n_layer={layers}, n_embd={width}, head_size=64, vocab_size=65536, "
            "dtype=torch.bfloat16)")
    steps = [
        ("write .pth", [sys.executable, "-c", code]),
        ("rwkv7-hf -> folder", [sys.executable, "-c", "from rwkv7_hf.converter import main; main(" + repr(
            ["--input", str(pth), "--output", str(folder), "--precision", "bf16", "--low-memory",
             "--max-shard-size", "2GB", "--vocab-file", _vocab()]) + ")"]),
        ("llama.cpp -> q8_0 GGUF", [sys.executable, "-c", "from tests.io.format_fixtures import convert_hf_to_gguf; "
                                    f"convert_hf_to_gguf(__import__('pathlib').Path({str(folder)!r}), "
                                    f"__import__('pathlib').Path({str(gguf_file)!r}), 'q8_0')"]),
    ]
    for what, cmd in steps:
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{r.stderr[-3000:]}")
        print(f"{what}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {"pth": pth, "folder": folder, "gguf": gguf_file}


def _vocab() -> str:
    from rwkv_core.io.tokenizer import default_world_vocab_path

    return str(default_world_vocab_path())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--keep", action="store_true", help="keep the files (printed) instead of deleting them")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        files = write_files(tmp, args.layers, args.width)
        gb = 1e9
        print(f"\nRWKV-7 {args.layers} x {args.width}, vocabulary 65536: .pth {size_of(files['pth']) / gb:.2f} GB, "
              f"folder {size_of(files['folder']) / gb:.2f} GB, q8_0 GGUF {size_of(files['gguf']) / gb:.2f} GB")
        rows = [("torch.load(mmap=True) .pth + read every tensor", run_child("torch.load", files["pth"])),
                ("load_model(.pth), bf16", run_child("model", files["pth"])),
                ("load_model(bf16 Hugging Face folder), bf16", run_child("model", files["folder"])),
                ("load_model(q8_0 GGUF), bf16", run_child("model", files["gguf"])),
                ("load_model(q8_0 GGUF), fp32 (its dequantised type)", run_child("model-fp32", files["gguf"]))]
        base = rows[0][1]
        print(f"\n{'load':50s} {'time s':>8s} {'x base':>7s} {'peak GB':>8s} {'x base':>7s}")
        for name, r in rows:
            print(f"{name:50s} {r['seconds']:8.2f} {r['seconds'] / base['seconds']:7.2f} "
                  f"{r['peak_bytes'] / gb:8.2f} {r['peak_bytes'] / base['peak_bytes']:7.2f}")
        print(f"(torch.load itself, before reading: {base['lazy_s']:.2f} s)")
    finally:
        if args.keep:
            print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
