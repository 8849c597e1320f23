"""Benchmark of rwkv_core.analysis.scores against a faithful NumPy port of web-rwkv-inspector's pairwise loop.

One run, one machine (issue 4, "Speed and memory"). Random inputs of realistic magnitude, no model forward:
  1. one v6 head (N = 64) at T = 256, 1024, 4096: the project (full A, full S, both) against the port, which
     computes both per pair like the original (inspector-reference §3: for each source i, kvec = k_i; for j > i:
     rwk = kvec . r_j, then kvec *= w_j, wk = ||kvec||). Where the port would take too long (T = 4096 by default)
     it runs on an evenly spaced subset of sources and is extrapolated by the number of pairs (said so in the table);
  2. v7 against the same-size v6 (full A of one head);
  3. all 12 x 12 heads of a 12-layer model (C = 768) at T = 1024: the selected token's rows and columns.
Goals (CPU): one head at T = 1024 <= 100 ms; all selected-token rows of 12 x 12 at T = 1024 <= 1 s; v7 <= 5x v6.

Times are the minimum over repeats (wall clock, torch threads as printed; CPU time of the process beside it, which
is what a busy machine does not inflate). Run: python bench/bench_scores.py [--threads 1] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from rwkv_core.analysis import scores as S

N = 64


# ------------------------------------------------------------------------------------------------ inputs


def v6_inputs(T: int, H: int = 1, seed: int = 0, device: str = "cpu") -> S.ScoreInputs:
    """Realistic v6 magnitudes: r, k ~ N(0, 1); per-channel decay rate exp(d), d ~ N(-2.5, 1.5) (lambda from ~0.999
    to ~1e-4), moved per token by a factor e^{N(0, 0.3)} (the data-dependent LoRA); u ~ N(0, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    d = -2.5 + 1.5 * torch.randn(1, H, N, generator=g) + 0.3 * torch.randn(T, H, N, generator=g)
    si = S.ScoreInputs("6", torch.randn(T, H, N, generator=g), torch.randn(T, H, N, generator=g),
                       torch.randn(T, H, N, generator=g), -torch.exp(d), u=0.5 * torch.randn(H, N, generator=g))
    return si.to(device)


def v7_inputs(T: int, H: int = 1, seed: int = 0, device: str = "cpu") -> S.ScoreInputs:
    """Realistic v7 magnitudes: log w = -e^-0.5 sigmoid(N(0, 2)), kk unit per head, a = sigmoid(N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda: torch.randn(T, H, N, generator=g)  # noqa: E731
    si = S.ScoreInputs("7", rn(), rn(), rn(), -math.exp(-0.5) * torch.sigmoid(2 * rn()),
                       kk=torch.nn.functional.normalize(rn(), dim=-1), a=torch.sigmoid(rn()),
                       r_k=0.1 * torch.randn(H, N, generator=g))
    return si.to(device)


# ------------------------------------------------------------------------------------------------ the port


def inspector_pairwise(r: np.ndarray, k: np.ndarray, w: np.ndarray, sources=None):
    """web-rwkv-inspector v0.1.9 `inspect` (main.rs:665-695) for one head, ported to NumPy: for each source i,
    kvec = k_i; for j = i+1 .. T-1: rwk[j, i] = kvec . r_j; kvec *= w_j; wk[j, i] = ||kvec||.
    (The original sends each pair through a channel into two hash maps; dense arrays here are kinder to it.)
    r, k, w [T, N] float32 (w: the per-step decay). Returns rwk, wk [T, T] and the number of pairs done."""
    T = r.shape[0]
    rwk = np.zeros((T, T), np.float32)
    wk = np.zeros((T, T), np.float32)
    pairs = 0
    for i in (range(T) if sources is None else sources):
        kvec = k[i].copy()
        for j in range(i + 1, T):
            rwk[j, i] = np.dot(kvec, r[j])
            kvec *= w[j]
            wk[j, i] = np.sqrt(np.dot(kvec, kvec))
            pairs += 1
    return rwk, wk, pairs


# ------------------------------------------------------------------------------------------------ timing


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 3, warmup: int = 1) -> tuple[float, float]:
    """(min wall seconds, CPU seconds of that run) over `repeat` runs after `warmup`."""
    for _ in range(warmup):
        fn()
        sync(device)
    best = (math.inf, math.inf)
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if t < best[0]:
            best = (t, c)
    return best


def ms(x: float) -> str:
    return f"{x * 1e3:10.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: like the NumPy port)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the port always runs on the CPU)")
    ap.add_argument("--port-full-max-T", type=int, default=1024,
                    help="largest T at which the port does every source (above: a subset, extrapolated)")
    ap.add_argument("--port-subset", type=int, default=32, help="every n-th source in the subset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    dev = args.device
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load0[0]:.2f}; python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; "
          f"torch threads {torch.get_num_threads()}; device {dev}")
    print("times: min over repeats, wall (cpu = CPU seconds of the process in that run)\n")

    goals = []
    # ---------------------------------------------------------------- 1. one v6 head vs the NumPy port
    print("1. one v6 head (N = 64): project full A and full S vs the NumPy port of the inspector's pairwise loop")
    print(f"{'T':>6} {'A ms':>10} {'S ms':>10} {'A+S ms':>10} {'(cpu ms)':>10} {'port ms':>12} {'port':>22} "
          f"{'speed-up':>9}")
    v6_A = {}
    for T in (256, 1024, 4096):
        si = v6_inputs(T, device=dev)
        rep = 3 if T <= 1024 else 2
        tA, _ = timed(lambda: S.full_scores(si, 0), dev, rep)
        tS, _ = timed(lambda: S.full_spans(si, 0), dev, rep)
        tAS, cAS = timed(lambda: (S.full_scores(si, 0), S.full_spans(si, 0)), dev, rep)
        v6_A[T] = tA
        r, k = si.r[:, 0].cpu().numpy(), si.k[:, 0].cpu().numpy()
        w = np.exp(si.logw[:, 0].cpu().numpy())
        total_pairs = T * (T - 1) // 2
        if T <= args.port_full_max_T:
            t0 = time.perf_counter()
            rwk, wk, pairs = inspector_pairwise(r, k, w)
            t_port = time.perf_counter() - t0
            how = "all sources"
            # same numbers: the port's rwk is A below the diagonal, its wk is S below the diagonal
            A, Sp = S.full_scores(si, 0).cpu().numpy(), S.full_spans(si, 0).cpu().numpy()
            low = np.tril_indices(T, -1)
            errA = np.abs(rwk[low] - A[low]).max() / np.abs(A[low]).max()
            errS = np.abs(wk[low] - Sp[low]).max() / np.abs(Sp[low]).max()
            how += f" (max diff {max(errA, errS):.1e})"
        else:
            sources = range(0, T, args.port_subset)
            t0 = time.perf_counter()
            _, _, pairs = inspector_pairwise(r, k, w, sources)
            t_port = (time.perf_counter() - t0) * total_pairs / pairs
            how = f"EXTRAPOLATED: {len(sources)}/{T} sources"
        print(f"{T:>6} {ms(tA)} {ms(tS)} {ms(tAS)} {ms(cAS)} {ms(t_port):>12} {how:>22} {t_port / tAS:>8.0f}x")
        if T == 1024:
            goals.append(("one v6 head, full A, T = 1024", tA, 0.100))

    # ---------------------------------------------------------------- 2. v7 vs v6
    print("\n2. v7 vs the same-size v6 (one head, N = 64)")
    print(f"{'T':>6} {'v6 A ms':>10} {'v7 A ms':>10} {'ratio':>7} {'v6 S ms':>10} {'v7 S ms':>10} {'ratio':>7}")
    for T in (256, 1024, 4096):
        s6, s7 = v6_inputs(T, device=dev), v7_inputs(T, device=dev)
        rep = 3 if T <= 1024 else 1
        t7, _ = timed(lambda: S.full_scores(s7, 0), dev, rep)
        t6 = v6_A[T]
        if T <= 1024:
            tS6, _ = timed(lambda: S.full_spans(s6, 0), dev, rep)
            tS7, _ = timed(lambda: S.full_spans(s7, 0), dev, 1)
            span_cols = f"{ms(tS6)} {ms(tS7)} {tS7 / tS6:>6.1f}x"
        else:
            span_cols = f"{'-':>10} {'-':>10} {'-':>7}"
        print(f"{T:>6} {ms(t6)} {ms(t7)} {t7 / t6:>6.1f}x {span_cols}")
        goals.append((f"v7 / v6 full A, T = {T}", t7 / t6, 5.0))

    # ---------------------------------------------------------------- 3. 12 x 12 selected-token rows
    print("\n3. 12 layers x 12 heads (C = 768), T = 1024: the selected token's row and column of every head")
    print(f"{'version':>8} {'A rows+cols ms':>15} {'(cpu ms)':>10} {'+ span col ms':>14} {'+ span row ms':>14}")
    T, L, H, sel = 1024, 12, 12, 700
    for version, make in (("6", v6_inputs), ("7", v7_inputs)):
        layers = [make(T, H, seed=l, device=dev) for l in range(L)]
        t, c = timed(lambda: S.row_and_column(layers, sel, spans=False), dev, 3)
        tc, _ = timed(lambda: S.row_and_column(layers, sel, spans="col"), dev, 2)
        ts, _ = timed(lambda: S.row_and_column(layers, sel, spans=True), dev, 1, warmup=0)
        print(f"{'v' + version:>8} {ms(t):>15} {ms(c)} {ms(tc):>14} {ms(ts):>14}")
        goals.append((f"all 12 x 12 selected-token rows, v{version}, T = 1024", t, 1.0))

    load1 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\ngoals (load average now {load1[0]:.2f}):")
    for name, value, limit in goals:
        unit = "x" if "v7 / v6" in name else " s"
        shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.3f}{unit}"
        print(f"  {'MET ' if value <= limit else 'MISSED'} {name}: {shown} (goal <= {limit:g}{unit.strip()})")


if __name__ == "__main__":
    main()
