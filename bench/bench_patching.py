"""Benchmark: attribution patching (AtP) against exact patching between two prompts, same grids, one run.

For each configuration (a random RWKV checkpoint of L layers x width C, vocabulary 65,536 with the World
tokenizer, prompts of T tokens: "The Eiffel Tower is a famous landmark." / "The Colosseum is a famous landmark.",
a filler text, then " The landmark is located in the city of"; answers " Paris" / " Rome", aligned by the subject
spans), every site (residual
stream, time-mix output, channel-mix output, recurrent state):

- baseline ("fwd+bwd"): one forward of the corrupted prompt with gradients and one backward of LD, no hooks: the
  issue's unit ("the whole AtP grid in at most 3x the time of one forward and backward");
- setup: `prepare_pair` (one forward of each prompt, caches kept), shared by both methods;
- AtP: `atp_grids` for the whole grid (the corrupted forward and backward with every activation kept, and one
  pass per layer with the state perturbed after every token, with the clean states of that layer);
- exact: `patch_grids` on `--sample` clean tokens spread from the subject's first token to the last (every layer
  and site), extrapolated to every aligned token from the subject on (the ones before are the corrupted run): the two runs' token-by-token state walks (timed inside that run, scaled from the furthest
  sampled token to the whole prompt) plus the sampled tokens' cell time (the run minus its walks) per token x
  tokens;
- correlation of AtP with exact over the sampled cells, per site (random weights: a weak test of AtP, reported
  for completeness; the demo models' facts are in README).

Times are wall seconds and CPU seconds of this process (a shared machine: CPU time is the steadier). Run:
`python bench/bench_patching.py [--configs 24x1024:64,12x768:1024] [--sample 3] [--threads 1]`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from rwkv_core.analysis import patching as PA
from rwkv_core.analysis.patching.attribution import atp_grids
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.io.synthetic import random_state_dict
from rwkv_core.io.tokenizer import tokenizer_for
from rwkv_core.model.rwkv import RWKV

FILLER = (" The river runs past the old mill, where the miller counts his sacks of grain each morning and the"
          " children of the village watch the boats go by.")
HEAD_CLEAN, HEAD_CORRUPT = "The Eiffel Tower is a famous landmark.", "The Colosseum is a famous landmark."
QUESTION = " The landmark is located in the city of"


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def prompts(tok, T: int) -> tuple[str, str]:
    """Clean and corrupted prompts, the clean one T tokens: the subject's sentence first, then a filler text (cut at
    a token boundary), then the question, so every token after the subject differs between the two runs (cells
    before it are the corrupted run and cost nothing)."""
    fixed = len(tok.encode(HEAD_CLEAN + QUESTION))
    ids = list(tok.encode(FILLER * (T // 8 + 4)).ids)[:max(0, T - fixed)]
    mid = tok.decode(ids)
    return HEAD_CLEAN + mid + QUESTION, HEAD_CORRUPT + mid + QUESTION


def fwd_bwd(pair: PA.PatchPair) -> None:
    model = pair.model
    with torch.enable_grad():
        x = {}
        hooks = [("hook_embed", lambda t, h: t.detach().requires_grad_()),
                 (f"blocks.{model.cfg.n_layer - 1}.hook_resid_post", lambda t, h: x.__setitem__("y", t))]
        with model.hooks(hooks):
            model(torch.tensor([pair.corrupt_ids]), logits="none")
        pair.metric(x["y"][0, -1]).backward()


def run_config(version: str, L: int, C: int, T: int, sample: int, seed: int) -> dict:
    sd = random_state_dict(version, n_layer=L, n_embd=C, head_size=64, vocab_size=65536, seed=seed)
    model = RWKV.from_state_dict(detect_config(sd), sd)
    del sd
    tok = tokenizer_for(65536, kind="world")
    clean, corrupt = prompts(tok, T)
    pair, w_setup, c_setup = timed(lambda: PA.prepare_pair(model, tok, clean, corrupt, " Paris", " Rome",
                                                           align_by="spans", clean_span="Eiffel Tower",
                                                           corrupt_span="Colosseum"))
    fwd_bwd(pair)  # warm-up
    _, w_fb, c_fb = timed(lambda: fwd_bwd(pair))
    atp, w_atp, c_atp = timed(lambda: atp_grids(pair))
    _, w_atp_act, c_atp_act = timed(lambda: atp_grids(pair, ("resid", "att", "ffn")))
    aligned = [t for t, _p in pair.alignment.pairs()]
    first = pair.first_difference  # cells before the subject cost nothing (filled); sample after it
    after = [t for t in aligned if t >= first]
    picks = sorted({after[int(round(q * (len(after) - 1)))] for q in np.linspace(0.0, 1.0, sample)})
    # exact on the sampled tokens, the time of its token-by-token state walks measured inside the same run
    walked = [0.0, 0.0]
    make_walk = pair.walk

    def timed_walk(run: str):
        w = make_walk(run)
        step = w._advance

        def advance():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            walked[0] += time.perf_counter() - w0
            walked[1] += time.process_time() - c0
        w._advance = advance
        return w

    pair.walk = timed_walk
    exact, w_ex, c_ex = timed(lambda: PA.patch_grids(pair, tokens=picks))
    pair.walk = make_walk
    # the walks go as far as the last sampled token: over the whole prompt they take Tr / (its position + 1) times
    scale = pair.Tr / (pair.alignment.clean_to_corrupt[picks[-1]] + 1)
    walk_full_w, walk_full_c = walked[0] * scale, walked[1] * scale
    per_tok_w = (w_ex - walked[0]) / len(picks)
    per_tok_c = (c_ex - walked[1]) / len(picks)
    ex_full_w = walk_full_w + per_tok_w * len(after)
    ex_full_c = walk_full_c + per_tok_c * len(after)
    w_walk_r, c_walk_r, w_walk_c, c_walk_c = walk_full_w, walk_full_c, 0.0, 0.0
    corr = {}
    for s in PA.SITES:
        a, e = atp.grid(s)[picks], exact.grid(s)[picks]
        ok = np.isfinite(a) & np.isfinite(e)
        corr[s] = float(np.corrcoef(a[ok], e[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    return {"version": version, "layers": L, "width": C, "T": pair.Tc, "T_corrupt": pair.Tr, "aligned": len(aligned),
            "sampled_tokens": picks, "cells": len(aligned) * L * len(PA.SITES), "first_difference": first,
            "setup_s": [w_setup, c_setup], "fwd_bwd_s": [w_fb, c_fb], "atp_s": [w_atp, c_atp],
            "atp_activations_only_s": [w_atp_act, c_atp_act], "walks_s": [w_walk_r + w_walk_c, c_walk_r + c_walk_c],
            "exact_sample_s": [w_ex, c_ex], "exact_extrapolated_s": [ex_full_w, ex_full_c],
            "atp_over_fwd_bwd": [w_atp / w_fb, c_atp / c_fb],
            "exact_over_atp": [ex_full_w / w_atp, ex_full_c / c_atp], "correlation": corr}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="24x1024:64,12x768:1024", help="LxC:T, comma-separated")
    ap.add_argument("--version", default="7", choices=["5.2", "6", "7"])
    ap.add_argument("--sample", type=int, default=3, help="clean tokens exact patching runs on (extrapolated)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on a busy machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"RWKV-{args.version}")
    out = []
    for spec in args.configs.split(","):
        shape, T = spec.split(":")
        L, C = (int(x) for x in shape.split("x"))
        r = run_config(args.version, L, C, int(T), args.sample, args.seed)
        out.append(r)
        w = lambda k: r[k][0]  # noqa: E731
        c = lambda k: r[k][1]  # noqa: E731
        print(f"\n{L} x {C}, T = {r['T']} (corrupted {r['T_corrupt']}), {r['cells']:,} cells (4 sites)")
        print(f"  one forward + backward     {w('fwd_bwd_s'):8.2f} s wall  {c('fwd_bwd_s'):8.2f} s CPU")
        print(f"  setup (both runs, cached)  {w('setup_s'):8.2f}          {c('setup_s'):8.2f}")
        print(f"  AtP, whole grid            {w('atp_s'):8.2f}          {c('atp_s'):8.2f}   "
              f"= {r['atp_over_fwd_bwd'][0]:.2f}x / {r['atp_over_fwd_bwd'][1]:.2f}x fwd+bwd (wall / CPU)")
        print(f"    of which activation sites {w('atp_activations_only_s'):7.2f}          "
              f"{c('atp_activations_only_s'):8.2f}")
        print(f"  exact, {len(r['sampled_tokens'])} tokens {r['sampled_tokens']} {w('exact_sample_s'):8.2f}  "
              f"{c('exact_sample_s'):8.2f}; state walks of the whole prompt {w('walks_s'):.2f} / {c('walks_s'):.2f}")
        print(f"  exact, whole grid (extrapolated) {w('exact_extrapolated_s'):10.1f}    "
              f"{c('exact_extrapolated_s'):10.1f}   = {r['exact_over_atp'][0]:.1f}x / {r['exact_over_atp'][1]:.1f}x AtP")
        print("  correlation AtP vs exact on the sampled cells: "
              + ", ".join(f"{s} {v:.3f}" for s, v in r["correlation"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
