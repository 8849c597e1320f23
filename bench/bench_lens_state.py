"""Benchmark: the logit lens against the plain forward pass, and a click on the State page against rebuilding the
state from the start of the prompt, at the 0.1B shape (random RWKV-7, 12 layers x 768, vocabulary 65,536, built in
memory: nothing written to disk).

Lens (T = --lens-tokens, default 1,024 random ids):
  forward        `model(tokens)`: the plain forward, logits of every position included (the baseline)
  lens           `lens.logit_lens(model, tokens)`: a forward without logits capturing the residual stream, then the
                 13 stages read out (head product, log-softmax normaliser, rank and top-10 per position)
  head products  13 x `model.unembed` of a [T, C] stream alone: what the lens cannot avoid
State page (T = --state-tokens, default 4,096):
  capture        the page's capture of every layer's inputs (`scores.capture_score_inputs`, one forward)
  layer          `state.layer_states` of one layer: every token's norm, effective rank, v7 regression errors
  click          a token click: the state after that token (`LayerStates.at`: checkpoint + replay), its read-out for
                 a query, the nearest earlier values, and the figures the page draws (matrix, curves, regression)
  rebuild        the baseline: the state after that token rebuilt from token 0 (no checkpoints)
(--state-tokens 0 leaves the State part out.)

Each timing is the best of --repeat runs (the machine may be shared: compare the ratios). Goals: lens <= 2x forward;
a click <= 1 s.

    python -m bench.bench_lens_state [--lens-tokens 1024] [--state-tokens 4096] [--repeat 2]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from rwkv_core.analysis import lens as LE
from rwkv_core.analysis import scores as S
from rwkv_core.analysis import state as ST
from rwkv_core.figures import state as FS
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.model.rwkv import RWKV


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lens-tokens", type=int, default=1024)
    ap.add_argument("--state-tokens", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    sd = random_state_dict("7", n_layer=args.layers, n_embd=args.width, head_size=64, vocab_size=65536, seed=0)
    model = RWKV.from_state_dict(detect_config(sd), sd)
    del sd
    L = model.cfg.n_layer
    print(f"random RWKV-7 {L} x {args.width}, vocabulary 65,536; torch threads {torch.get_num_threads()}; load "
          f"average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)

    tokens = [int(t) for t in rng.integers(0, 65536, args.lens_tokens)]
    with torch.no_grad():
        model(tokens[:64])
        resid = LE.capture_residuals(model, tokens)

        def head_products() -> None:  # chunked as the lens reads them, nothing kept ([T, V] per stage is 268 MB)
            for s in range(L + 1):
                for c in range(0, len(tokens), LE.LENS_CHUNK):
                    model.unembed(resid[s, c:c + LE.LENS_CHUNK])

        runs: dict[str, list[float]] = {"forward": [], "lens": [], "capture": [], "heads": [], "reads": [],
                                        "window": [], "step": []}
        mid = (len(tokens) // 2) // 128 * 128  # the page's window around a token in the middle (views.lens)
        lens = None
        for _ in range(args.repeat):  # interleaved, so that a change of the machine's load hits every column
            runs["forward"].append(best(lambda: model(tokens), 1)[0])
            t, lens = best(lambda: LE.logit_lens(model, tokens), 1)
            runs["lens"].append(t)
            runs["capture"].append(best(lambda: LE.capture_residuals(model, tokens), 1)[0])
            runs["heads"].append(best(head_products, 1)[0])
            runs["reads"].append(best(lambda: LE.logit_lens(model, tokens, resid=resid), 1)[0])
            runs["window"].append(best(lambda: LE.logit_lens(model, tokens, resid=resid,
                                                             positions=range(mid - 128, mid + 128)), 1)[0])
            runs["step"].append(best(lambda: LE.logit_lens(model, tokens, resid=resid,
                                                           positions=range(mid + 128, mid + 256)), 1)[0])
        fwd, lens_s, capture_s, heads, reads = (min(runs[k]) for k in ("forward", "lens", "capture", "heads", "reads"))
    print(f"\nLogit lens, T = {len(tokens)}, {L + 1} stages")
    print(f"  forward (logits included)       {fwd:8.2f} s   1.00x   (the baseline)")
    print(f"  lens (forward + {L + 1} read-outs)   {lens_s:8.2f} s   {lens_s / fwd:.2f}x")
    print(f"    of which the capture           {capture_s:8.2f} s")
    print(f"    of which the {L + 1} read-outs      {reads:8.2f} s   ({reads / heads:.2f}x their {L + 1} head products)")
    print(f"  {L + 1} head products alone          {heads:8.2f} s   {heads / fwd:.2f}x the forward")
    window, step = min(runs["window"]), min(runs["step"])
    print(f"  the Logit lens page: read-outs of its window of 256 tokens {window:.2f} s ({reads / window:.1f}x less "
          f"than every token), a step of the window (128 tokens) {step:.2f} s")
    print(f"  goal lens <= 2x forward: {'met' if lens_s <= 2 * fwd else 'NOT met'}; answer forms at stage "
          f"{np.bincount(lens.answer_forms(), minlength=L + 1).tolist()} (tokens per stage)")
    print("  all runs: " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in runs.items()))
    resid = lens = None  # free before the state part

    if args.state_tokens <= 0:
        return 0
    T = args.state_tokens
    tokens = [int(t) for t in rng.integers(0, 65536, T)]
    capture_s, inputs = best(lambda: S.capture_score_inputs(model, tokens), 1)
    si = inputs[L // 2]
    layer_s, ls = best(lambda: ST.layer_states(si), args.repeat)
    texts = [str(t) for t in tokens]
    clicks = [int(t) for t in rng.integers(T // 2, T, 5)]

    def click(t: int) -> None:
        state = ls.at(t)
        out = ST.read_out(state, ST.query_vector(si, t, "key"), "7")
        ST.nearest_values(out, si.v, t)
        FS.state_matrix_figure(state[0].numpy(), rows="value", cols="key")
        FS.head_curves_figure(ls.frobenius, texts, y_name="norm", open_head=0, sel=t)
        FS.head_curves_figure(ls.eff_rank, texts, y_name="effective rank", open_head=0, sel=t)
        FS.regression_figure(ls.err_before[:, 0], ls.err_after[:, 0], texts, head=0, sel=t)

    click_times = [best(lambda t=t: click(t), 1)[0] for t in clicks]
    at_times = [best(lambda t=t: ls.at(t), 1)[0] for t in clicks]
    rebuild_times = [best(lambda t=t: ST.step(si, ST.zero_state(si), 0, t + 1), 1)[0] for t in clicks[:2]]
    print(f"\nState page, T = {T}, layer {L // 2} of {L}, 12 heads of 64")
    print(f"  capture of every layer (one forward)   {capture_s:8.2f} s   (first render)")
    print(f"  layer states (one layer, every token)  {layer_s:8.2f} s   (a layer change)")
    print(f"  click: state + read-out + figures      {max(click_times):8.3f} s   (max of {len(clicks)}; goal <= 1 s: "
          f"{'met' if max(click_times) <= 1 else 'NOT met'})")
    print(f"    of which the state after the token   {max(at_times):8.3f} s")
    print(f"  rebuild from token 0 (baseline)        {max(rebuild_times):8.3f} s   "
          f"({max(rebuild_times) / max(at_times):.0f}x the checkpointed state)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
