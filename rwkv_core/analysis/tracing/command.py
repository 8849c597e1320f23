"""`python -m rwkv_core trace ...`: its options and what it runs (a grid written as .npz, a one-screen summary).

Kept beside the tracing modules for now; its natural home is `rwkv_core.cli`."""
from __future__ import annotations

import argparse

import numpy as np

from rwkv_core.analysis.tracing.fast import trace
from rwkv_core.analysis.tracing.results import KINDS, METRICS, MODES
from rwkv_core.analysis.tracing.setup import NOISE_SITES


def add_trace_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of `python -m rwkv_core trace CHECKPOINT ...`."""
    p = parser
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model file (.pth, .safetensors, rwkv.cpp .bin)")
    p.add_argument("--prompt", required=True, help="the prompt, e.g. 'The Eiffel Tower is located in the city of'")
    p.add_argument("--subject", required=True, help="the subject, first occurrence in the prompt (e.g. 'The Eiffel Tower')")
    p.add_argument("--answer", required=True, help="the expected continuation, tokenised on its own (e.g. ' Paris')")
    p.add_argument("--answer2", default=None, help="a second answer for the logit difference (e.g. ' Rome')")
    p.add_argument("--alt-subject", default=None, help="corrupt by subject replacement with this string (same token "
                                                       "count) instead of noise")
    p.add_argument("--mode", choices=MODES, default="both", help="kind block: what is restored at (token, layer)")
    p.add_argument("--kind", choices=KINDS, default="block",
                   help="block: residual/state of one layer; att/ffn: time-mix/channel-mix output over a window")
    p.add_argument("--samples", type=int, default=10, help="noise samples (default 10)")
    p.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the embedding std (default 3)")
    p.add_argument("--noise-site", choices=tuple(NOISE_SITES), default="resid_pre",
                   help="where noise is added: resid_pre (block 0 input after ln0, default) or embed (ROME)")
    p.add_argument("--window", type=int, default=10, help="layers per att/ffn window (default 10)")
    p.add_argument("--seed", type=int, default=1, help="noise seed (default 1, as ROME)")
    p.add_argument("--metric", choices=METRICS, default="prob", help="metric written as `grid` (default prob)")
    p.add_argument("--no-v-first", action="store_true", help="v7: do not restore v_first with the residual")
    p.add_argument("--method", choices=("fast", "reference"), default="fast", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer kind (bytes, bytes-utf16le, world, hf, digits, ids) or a vocabulary/tokenizer file")
    p.add_argument("--utf16", action="store_true", help="byte models trained on UTF-16-LE (the tiny v6 models)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    return p


def trace_cli(args: argparse.Namespace) -> int:
    """Run `trace` from parsed arguments, write the npz, print a one-screen summary. Returns the exit code."""
    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.tokenizer import KINDS as TOKENIZER_KINDS, tokenizer_for

    model = load_model(args.checkpoint, device=args.device)
    kind = path = None
    if args.tokenizer:
        if args.tokenizer in TOKENIZER_KINDS:
            kind = args.tokenizer
        else:
            path = args.tokenizer
    tok = tokenizer_for(model.cfg.vocab_size, kind=kind, path=path, utf16=args.utf16)
    corruption = "replace" if args.alt_subject else "noise"
    res = trace(model, tok, args.prompt, args.subject, args.answer, answer2=args.answer2, corruption=corruption,
                alt_subject=args.alt_subject, samples=args.samples, noise=args.noise, noise_site=args.noise_site,
                seed=args.seed, kind=args.kind, mode=args.mode, window=args.window,
                restore_v_first=not args.no_v_first, metric=args.metric, method=args.method)
    res.to_npz(args.out)
    T, L = res.grid.shape
    t_best, l_best = np.unravel_index(np.nanargmax(res.grid), res.grid.shape)
    print(f"{res.kind}/{res.mode if res.kind == 'block' else f'window {res.window}'}: {T} tokens x {L} layers, "
          f"metric {res.metric}: clean {res.clean_value:.4g}, corrupted {res.corrupt_value:.4g}, "
          f"max {res.grid[t_best, l_best]:.4g} at token {t_best} {res.token_labels[t_best]!r}, layer {l_best}")
    for w in res.warnings:
        print("warning:", w)
    print(f"wrote {args.out} ({res.seconds:.1f} s)")
    return 0
