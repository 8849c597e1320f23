"""Sequence forward WITH FULL CAPTURE (every hook point of every layer, stored on the CPU) against the official
`rwkv` package's sequence forward (strategy `cpu fp32`), same machine, same run.

Random official-layout v6 and v7 checkpoints: 12 layers, width 768, 12 heads of 64, vocabulary 65536.
Each measurement runs in its own subprocess so that peak memory (max RSS) is that run's alone.

    python bench/bench_forward.py                 # T = 128, 512, 2048 on the CPU
    python bench/bench_forward.py --T 128 512     # fewer lengths
    python bench/bench_forward.py --cuda          # also the project's CUDA path (fp32 and bf16), where a GPU is at hand
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def _child(args: argparse.Namespace) -> None:
    import resource

    import torch

    tokens = [int(t) for t in torch.randint(0, 65536, (args.T,), generator=torch.Generator().manual_seed(0))]
    if args.who == "official":
        os.environ["RWKV_JIT_ON"] = "1"
        os.environ["RWKV_CUDA_ON"] = "0"
        if args.version == "7":
            os.environ["RWKV_V7_ON"] = "1"
        from rwkv.model import RWKV as Official

        model = Official(args.ckpt[:-4], "cpu fp32", verbose=False) if args.version != "7" else Official(args.ckpt[:-4], "cpu fp32")
        run = lambda: model.forward(tokens, None, full_output=True)
    else:
        from rwkv_core.io.checkpoint import load_model

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
        model = load_model(args.ckpt, device=args.device, dtype=dtype)

        def run():
            out = model.run_with_cache(tokens)  # every hook point, stored on the CPU
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return out
    with torch.no_grad():
        run()  # warm-up (JIT, allocator)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else 0.0
    print(json.dumps({"time_s": min(times), "peak_rss_mib": peak, "gpu_peak_mib": gpu_peak}))


def measure(who: str, version: str, ckpt: str, T: int, repeat: int, device="cpu", dtype="fp32") -> dict:
    cmd = [sys.executable, __file__, "--child", who, "--version", version, "--ckpt", ckpt, "--T", str(T),
           "--repeat", str(repeat), "--device", device, "--dtype", dtype]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{who} v{version} T={T} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", default=None)
    ap.add_argument("--who", default=None)
    ap.add_argument("--version", default="6")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--T", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--versions", nargs="+", default=["6", "7"])
    args = ap.parse_args()
    if args.child:
        args.who, args.T = args.child, args.T[0]
        return _child(args)

    import torch

    from rwkv_core.io.synthetic import write_random_checkpoint

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; 12 layers x 768, 12 heads of 64, V=65536")
    print(f"{'model':6} {'T':>5} {'ours (s)':>9} {'official (s)':>12} {'ratio':>6} {'ours MiB':>9} {'official MiB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions:
            ckpt = str(Path(tmp) / f"bench_v{version}.pth")
            write_random_checkpoint(ckpt, version, n_layer=12, n_embd=768, head_size=64, vocab_size=65536, seed=0)
            for T in args.T:
                ours = measure("ours", version, ckpt, T, args.repeat)
                ref = measure("official", version, ckpt, T, args.repeat)
                print(f"v{version:5} {T:5d} {ours['time_s']:9.3f} {ref['time_s']:12.3f} "
                      f"{ours['time_s'] / ref['time_s']:6.2f} {ours['peak_rss_mib']:9.0f} {ref['peak_rss_mib']:12.0f}",
                      flush=True)
                if args.cuda and torch.cuda.is_available():
                    for dt in ("fp32", "bf16"):
                        g = measure("ours", version, ckpt, T, args.repeat, device="cuda", dtype=dt)
                        print(f"  cuda {dt}: {g['time_s']:.3f} s, GPU peak {g['gpu_peak_mib']:.0f} MiB", flush=True)
    print("ratio = ours / official (below 1: the project is faster); ours includes capturing every hook point.")


if __name__ == "__main__":
    main()
