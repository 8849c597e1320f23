"""Command line: `python -m rwkv_core {info,export,decay,trace,patch,train,evaluate-demo} ...`, one argparse tree.

Each command's options are defined once: here for info, export, decay, trace and patch, beside their code for train (`rwkv_core.demo.train`, also `python -m rwkv_core.train`) and evaluate-demo
(`rwkv_core.demo.evaluate`). Errors the project anticipates (a bad checkpoint, a bad prompt, an unwritable output)
print one line `error: ...` to stderr and exit with status 2, as argparse does for bad options.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from rwkv_core.analysis.tracing.results import KINDS, METRICS, MODES
from rwkv_core.analysis.tracing.setup import NOISE_SITES
from rwkv_core.errors import InputError, RWKVInspectorError, TokenizerError
from rwkv_core.model.rwkv import DTYPES


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="bytes | bytes-utf16le | world | hf | digits | ids (default: from the vocabulary size)")
    p.add_argument("--tokenizer-file", default=None, help="tokenizer file for kind hf (e.g. 20B_tokenizer.json)")


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model file (.pth, .safetensors, rwkv.cpp .bin, "
                   ".gguf) or Hugging Face folder")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="storage type of the weight matrices")


# ------------------------------------------------------------------------------------------------ commands


def cmd_info(args: argparse.Namespace) -> None:
    from rwkv_core.io.checkpoint import load_checkpoint

    print(json.dumps(load_checkpoint(args.checkpoint).info(), indent=2))


def export_prompt(args: argparse.Namespace, vocab_size: int) -> tuple[list[int], list[str], str]:
    """The prompt of `export` as (ids, token texts, tokenizer kind).

    --text needs the tokenizer (given, or the one the vocabulary size implies). --tokens needs none: the ids are
    checked against the vocabulary and shown through the given or implied tokenizer when one loads, else as the
    ids themselves (kind "ids"), so a checkpoint whose vocabulary matches no tokenizer still exports.
    """
    from rwkv_core.io.tokenizer import tokenizer_for

    if args.tokens is None:
        tok = tokenizer_for(vocab_size, kind=args.tokenizer, path=args.tokenizer_file)
        enc = tok.encode(args.text)
        return list(enc.ids), list(enc.token_texts), tok.kind
    try:
        ids = list(tokenizer_for(vocab_size, kind="ids").encode(args.tokens).ids)
    except InputError as e:
        raise InputError(f"--tokens: {e}") from None
    try:
        tok = tokenizer_for(vocab_size, kind=args.tokenizer, path=args.tokenizer_file)
    except TokenizerError:
        if args.tokenizer is not None:
            raise
        tok = tokenizer_for(vocab_size, kind="ids")
    return ids, [tok.display(i) for i in ids], tok.kind


def cmd_export(args: argparse.Namespace) -> None:
    from rwkv_core.io.checkpoint import load_checkpoint, load_model
    from rwkv_core.io.trace_file import build_trace, save_trace

    ckpt = load_checkpoint(args.checkpoint, dtype=DTYPES[args.dtype])
    if args.tokenizer is None and args.tokenizer_file is None and ckpt.tokenizer:
        args.tokenizer, args.tokenizer_file = ckpt.tokenizer  # a folder's or a GGUF's own tokenizer
    ids, texts, kind = export_prompt(args, ckpt.config.vocab_size)
    if not ids:
        raise InputError("the prompt is empty: give --text or --tokens")
    try:
        layers = None if args.layers is None else [int(x) for x in args.layers.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers must be layer indices separated by commas, e.g. 0,5, not {args.layers!r}") from None
    positions = None
    if args.state_positions is not None:
        from rwkv_core.analysis.state import parse_positions

        positions = parse_positions(args.state_positions, len(ids))
    model = load_model(ckpt, device=args.device, dtype=DTYPES[args.dtype], take=True)
    try:
        arrays = build_trace(model, ids, layers=layers, token_texts=texts, tokenizer_kind=kind,
                             checkpoint_name=model.checkpoint_info["file"], scores=args.scores,
                             logits_topk=args.logits_topk, float16=args.float16, residual=args.residual,
                             lens=args.lens, state=args.state, state_positions=positions)
    except ValueError as e:
        raise InputError(str(e)) from None
    save_trace(arrays, args.out)
    size = f", {os.path.getsize(args.out) / 2**20:.1f} MB" if os.path.isfile(args.out) else ""
    print(f"wrote {args.out}: {len(ids)} tokens, {len(arrays)} arrays{size}")


def cmd_decay(args: argparse.Namespace) -> None:
    from rwkv_core.analysis.decay import write_static_csv

    if args.out in (None, "-"):
        write_static_csv(args.checkpoint, sys.stdout)
    else:
        n = write_static_csv(args.checkpoint, args.out)
        print(f"wrote {args.out}: {n} rows")


def add_trace_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of `python -m rwkv_core trace CHECKPOINT ...`."""
    p = parser
    _checkpoint_arg(p)
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
    p.add_argument("--tokens", default=None,
                   help="trace only these prompt token positions, comma-separated, ranges allowed (e.g. 3-5,9,30): "
                        "the other rows of the grid are NaN and settings.tokens in the npz lists them; "
                        "'proposed': the subject's tokens, the one after, 4 in between and the last (default: all)")
    p.add_argument("--method", choices=("fast", "reference"), default="fast", help=argparse.SUPPRESS)
    _model_args(p)
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    return p


def add_patch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of `python -m rwkv_core patch CHECKPOINT ...`."""
    from rwkv_core.analysis.patching import ALIGNMENTS, METHODS

    p = parser
    _checkpoint_arg(p)
    p.add_argument("--clean", required=True, help="the clean prompt, e.g. 'The Eiffel Tower is located in the city of'")
    p.add_argument("--corrupt", required=True, help="the corrupted prompt, e.g. 'The Colosseum is located in the city of'")
    p.add_argument("--answer", required=True, help="the clean answer, the text that follows the prompt (e.g. ' Paris')")
    p.add_argument("--counter", required=True, help="the corrupted prompt's answer (e.g. ' Rome')")
    p.add_argument("--sites", default="resid,att,ffn,state",
                   help="comma-separated sites: resid (residual stream after block l), att (time-mix output), ffn "
                        "(channel-mix output), state (recurrent state after the token); default all four")
    p.add_argument("--method", choices=METHODS, default="exact",
                   help="exact (one patched run per cell, prefix reused) or atp (attribution patching: first-order "
                        "estimate of every cell from one forward on each prompt and one backward)")
    p.add_argument("--align", choices=ALIGNMENTS, default="end",
                   help="end: prompts aligned from their last tokens; spans: by --clean-span / --corrupt-span")
    p.add_argument("--clean-span", default=None, help="with --align spans: a span of the clean prompt (e.g. its subject)")
    p.add_argument("--corrupt-span", default=None, help="with --align spans: the matching span of the corrupted prompt")
    p.add_argument("--tokens", default=None,
                   help="exact only: comma-separated clean token positions to patch (default: every token)")
    _model_args(p)
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file: grid_{site}, raw_{site} [T, L], "
                   "clean_value, corrupt_value, meta")
    return p


def cmd_patch(args: argparse.Namespace) -> int:
    """Run `patch` from parsed arguments, write the npz, print a one-screen summary. Returns the exit code."""
    from rwkv_core.analysis.patching import check_sites, patch_grids, prepare_pair
    from rwkv_core.analysis.patching.attribution import atp_grids

    sites = check_sites(args.sites)
    try:
        tokens = None if args.tokens is None else [int(x) for x in args.tokens.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--tokens must be token positions separated by commas, e.g. 3,7, not {args.tokens!r}") from None
    if tokens is not None and args.method == "atp":
        raise InputError("--tokens selects cells for exact patching; --method atp estimates every cell at once")
    model, tok = model_and_tokenizer(args)
    pair = prepare_pair(model, tok, args.clean, args.corrupt, args.answer, args.counter, align_by=args.align,
                        clean_span=args.clean_span, corrupt_span=args.corrupt_span)
    if tokens is not None and any(not 0 <= t < pair.Tc for t in tokens):
        raise InputError(f"--tokens: positions must be between 0 and {pair.Tc - 1} (the clean prompt's tokens)")
    res = atp_grids(pair, sites) if args.method == "atp" else patch_grids(pair, sites, tokens=tokens)
    res.to_npz(args.out)
    T, L = pair.Tc, model.cfg.n_layer
    print(f"{args.method}: {T} clean tokens x {L} layers, LD clean {pair.clean_value:.4g}, corrupted "
          f"{pair.corrupt_value:.4g}")
    for s in sites:
        g = res.grid(s)
        if np.isnan(g).all():
            continue
        t, l = np.unravel_index(np.nanargmax(g), g.shape)
        print(f"  {s}: max {g[t, l]:.3f} at token {t} {res.clean_labels[t]!r}, layer {l}")
    for w in res.warnings:
        print("warning:", w)
    print(f"wrote {args.out} ({res.seconds:.1f} s)")
    return 0


def model_and_tokenizer(args: argparse.Namespace):
    """The model on --device and its tokenizer: --tokenizer (a kind or a file), else the checkpoint's own, else the
    one its vocabulary size implies (--utf16: the UTF-16-LE byte models)."""
    model, tokenizer, _ = model_tokenizer_choice(args)
    return model, tokenizer


def model_tokenizer_choice(args: argparse.Namespace):
    """`model_and_tokenizer` plus the tokenizer chosen, as (kind, file) for a job worker's ModelSpec."""
    from rwkv_core.io.checkpoint import load_checkpoint, load_model
    from rwkv_core.io.tokenizer import KINDS as TOKENIZER_KINDS, tokenizer_for

    ckpt = load_checkpoint(args.checkpoint)
    model = load_model(ckpt, device=args.device, take=True)
    kind, path = ckpt.tokenizer if ckpt.tokenizer and not args.tokenizer and not args.utf16 else (None, None)
    if args.tokenizer:
        if args.tokenizer in TOKENIZER_KINDS:
            kind = args.tokenizer
        else:
            path = args.tokenizer
    if args.utf16 and kind in (None, "auto", "bytes"):
        kind = "bytes-utf16le"
    tokenizer = tokenizer_for(model.cfg.vocab_size, kind=kind, path=path, utf16=args.utf16)
    return model, tokenizer, (kind or "auto", None if path is None else str(path))


def _model_args(p: argparse.ArgumentParser) -> None:
    """--device, --tokenizer and --utf16 of the commands that run a prompt through `model_and_tokenizer`."""
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer kind (bytes, bytes-utf16le, world, hf, digits, ids) or a vocabulary/tokenizer file")
    p.add_argument("--utf16", action="store_true", help="byte models trained on UTF-16-LE (the tiny v6 models)")


def cmd_trace(args: argparse.Namespace) -> int:
    """Run `trace` from parsed arguments, write the npz, print a one-screen summary. Returns the exit code."""
    from rwkv_core.analysis.tracing import (TraceSpec, format_positions, parse_positions, prepare_trace,
                                            propose_tokens, trace_grids)

    model, tok = model_and_tokenizer(args)
    corruption = "replace" if args.alt_subject else "noise"
    setup = prepare_trace(model, tok, args.prompt, args.subject, args.answer, answer2=args.answer2,
                          corruption=corruption, alt_subject=args.alt_subject, samples=args.samples, noise=args.noise,
                          noise_site=args.noise_site, seed=args.seed)
    if (args.tokens or "").strip() == "proposed":
        tokens = propose_tokens(setup.T, setup.subject)
    else:
        tokens = parse_positions(args.tokens, setup.T)
    spec = TraceSpec(args.kind, args.mode, args.window, not args.no_v_first)
    res = trace_grids(setup, [spec], metric=args.metric, method=args.method, tokens=tokens)[0]
    res.to_npz(args.out)
    T, L = res.grid.shape
    t_best, l_best = np.unravel_index(np.nanargmax(res.grid), res.grid.shape)
    rows = f" ({len(tokens)} traced: {format_positions(tokens)})" if tokens is not None else ""
    print(f"{res.kind}/{res.mode if res.kind == 'block' else f'window {res.window}'}: {T} tokens{rows} x {L} layers, "
          f"metric {res.metric}: clean {res.clean_value:.4g}, corrupted {res.corrupt_value:.4g}, "
          f"max {res.grid[t_best, l_best]:.4g} at token {t_best} {res.token_labels[t_best]!r}, layer {l_best}")
    for w in res.warnings:
        print("warning:", w)
    print(f"wrote {args.out} ({res.seconds:.1f} s)")
    return 0


def add_trace_set_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of `python -m rwkv_core trace-set CHECKPOINT FACTS.jsonl --out DIR ...`."""
    from rwkv_core.analysis.factset import RESTORE_KINDS

    p = parser
    _checkpoint_arg(p)
    p.add_argument("facts", metavar="FACTS.jsonl",
                   help='one fact per line: {"prompt": ..., "subject": ..., "answer": ..., "id": optional}; "demo": '
                        "the demo corpus's held-out facts")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: facts/<id>.npz, aie.npz, facts.csv (a rerun resumes it)")
    p.add_argument("--workers", type=int, default=1,
                   help="Ray workers on this machine (one per GPU when there are GPUs); 0: in this process, no Ray")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join the Ray cluster at ADDR (host:port or auto) instead of starting Ray here; the checkpoint "
                        "path must be readable on every machine")
    p.add_argument("--kinds", default=",".join(RESTORE_KINDS),
                   help="comma-separated restore kinds: block (residual and state), state, resid, att (time-mix "
                        "window), ffn (channel-mix window); default all")
    p.add_argument("--samples", type=int, default=10, help="noise samples per fact (default 10)")
    p.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the embedding std (default 3)")
    p.add_argument("--noise-site", choices=tuple(NOISE_SITES), default="resid_pre", help="where noise is added")
    p.add_argument("--seed", type=int, default=1, help="noise seed (default 1)")
    p.add_argument("--window", type=int, default=None,
                   help="layers per att/ffn window (default 10, or half the layers of a smaller model)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="a fact is averaged when the model knows it: clean p(answer) >= this (default 0.1)")
    p.add_argument("--limit", type=int, default=None, help="trace only the first N facts of the file")
    _model_args(p)
    return p


def cmd_trace_set(args: argparse.Namespace) -> int:
    """Run `trace-set`: every fact not yet in --out, then the AIE; progress on stderr. Returns the exit code."""
    from rwkv_core.analysis import factset as FS
    from rwkv_core.durations import hours_minutes
    from rwkv_core.jobs.specs import ModelSpec

    facts, bad = FS.demo_facts() if args.facts == "demo" else FS.read_facts(args.facts)
    if args.limit is not None:
        facts = facts[:max(0, args.limit)]
    settings = FS.FactSetSettings(kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
                                  samples=args.samples, noise=args.noise, noise_site=args.noise_site, seed=args.seed,
                                  window=args.window, threshold=args.threshold).check()
    model, tok, (kind, path) = model_tokenizer_choice(args)
    facts, bad_tokens = FS.check_fact_tokens(tok, facts)
    bad = list(bad) + bad_tokens
    for b in bad:
        print(f"skipped line {b.line}: {b.reason}", file=sys.stderr)
    spec = ModelSpec(str(Path(args.checkpoint).resolve()), kind, path, args.device)
    n_layer = model.cfg.n_layer
    manager = None
    if args.workers > 0 or args.ray_address:
        from rwkv_core.jobs.manager import ClusterSettings, JobManager

        del model  # the workers load their own copy
        manager = JobManager(ClusterSettings(address=args.ray_address, workers=max(1, args.workers)))
        executor = FS.RayExecutor(manager)
    else:
        executor = FS.InProcessExecutor()

    def progress(p: "FS.FactSetProgress") -> None:
        left = p.seconds_left()
        eta = "" if left is None else f", {hours_minutes(left)} left"
        print(f"\r{p.finished_facts}/{p.total} facts ({p.resumed} already done, {p.failed} failed){eta}   ",
              end="", file=sys.stderr, flush=True)

    try:
        summary = FS.run_fact_set(spec, n_layer, facts, args.out, settings, executor=executor, bad=bad,
                                  progress=progress)
    finally:
        print(file=sys.stderr)
        if manager is not None:
            manager.close()
    known = sum(1 for r in summary.rows if r.get("known") is True)
    done = sum(1 for r in summary.rows if r["status"] == "done")
    print(f"{done} of {len(facts)} facts traced ({len(summary.computed)} by this run, {summary.progress.failed} "
          f"failed, {len(bad)} lines skipped); {known} known (clean p >= {settings.threshold:g}) averaged")
    for k, a in summary.aie.items():
        if known:
            c, l = np.unravel_index(np.nanargmax(a.mean), a.mean.shape) if np.isfinite(a.mean).any() else (0, 0)
            print(f"  {k}: largest AIE {a.mean[c, l]:.3f} at the {FS.TOKEN_CLASSES[c]}, layer {l}")
    print(f"wrote {args.out}/aie.npz, facts.csv, facts/")
    return 0 if summary.progress.failed == 0 else 1


def cmd_train(args: argparse.Namespace) -> None:
    from rwkv_core.demo.train import finish_train_args, train

    train(finish_train_args(args, args.command_argv))


# ------------------------------------------------------------------------------------------------ the tree


def _add(sub, name: str, help: str, fn: Callable, add_arguments: Optional[Callable] = None,
         description: Optional[str] = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description or help)
    if add_arguments is not None:
        add_arguments(p)
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one subcommand per job."""
    from rwkv_core.demo.evaluate import EVALUATE_DESCRIPTION, add_evaluate_arguments, run_evaluate
    from rwkv_core.demo.train import TRAIN_DESCRIPTION, add_train_arguments

    parser = argparse.ArgumentParser(prog="python -m rwkv_core", description="RWKV Inspector engine")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = _add(sub, "info", "print the architecture of a checkpoint as JSON", cmd_info)
    p.add_argument("checkpoint")

    p = _add(sub, "export", "run a prompt and write the trace file (.npz)", cmd_export)
    p.add_argument("checkpoint")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--tokens", help="token ids separated by commas, e.g. 1,2,3 (no tokenizer needed)")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    p.add_argument("--scores", action="store_true", help="also write attn_l{l} and span_l{l} [H, T, T]")
    p.add_argument("--lens", action="store_true",
                   help="also write the logit lens of every exported layer: lens_logp_l{l} [T] (log-prob of token "
                        "t+1 at t, NaN at the last), lens_rank_l{l} [T], lens_top_l{l} [T, 10]; *_embed for the "
                        "embedding after ln0")
    p.add_argument("--state", action="store_true",
                   help="also write state_l{l}, the WKV state after the last token (v5/v6 [H, key, value], v7 [H, "
                        "value, key], v4 [3, C]: aa, bb, pp)")
    p.add_argument("--state-positions", default=None, metavar="P1,P2",
                   help="with --state: the states after these tokens instead (e.g. 3,17): state_l{l} [P, ...]")
    p.add_argument("--logits-topk", type=int, default=None, metavar="K",
                   help="keep the K most likely next tokens per position (ids and log-probabilities) instead of the "
                        "full logits [T, V]; 0: no logits (default: the full logits)")
    p.add_argument("--float16", action="store_true",
                   help="store the [T, C] activations (and full logits, scores) in float16: about half the size (the "
                        "decay is stored as ln w, which float16 holds to 0.05 %%, where w would round to 1)")
    p.add_argument("--no-residual", dest="residual", action="store_false",
                   help="leave out the residual stream resid_l{l} (no page reads it)")
    _tokenizer_args(p)
    _device_args(p)

    p = _add(sub, "decay", "write the static decay table (layer, head, channel, decay, half_life) as CSV", cmd_decay)
    p.add_argument("checkpoint", help="checkpoint (.pth, .safetensors, rwkv.cpp .bin, .gguf or a Hugging Face folder)")
    p.add_argument("--out", "-o", default=None, help="CSV file to write (default or '-': standard output)")

    _add(sub, "trace", "causal tracing grid of a prompt (ROME style) as .npz", cmd_trace, add_trace_arguments)
    _add(sub, "trace-set", "causal tracing of every fact of a JSONL file and ROME's average indirect effect",
         cmd_trace_set, add_trace_set_arguments)
    _add(sub, "patch", "activation patching between a clean and a corrupted prompt (exact or attribution) as .npz",
         cmd_patch, add_patch_arguments)
    _add(sub, "train", "train a byte-level demo model (a training phase)", cmd_train, add_train_arguments,
         TRAIN_DESCRIPTION)
    _add(sub, "evaluate-demo", "metrics of a demo model as JSON", run_evaluate, add_evaluate_arguments,
         EVALUATE_DESCRIPTION)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0, or 2 with one line on stderr for an anticipated error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_argv = argv[1:]  # the top level has no options of its own: argv[0] is the command
    try:
        return int(args.fn(args) or 0)
    except RWKVInspectorError as e:
        print(f"error: {e}", file=sys.stderr)
    except torch.cuda.OutOfMemoryError:
        print("error: the GPU ran out of memory: use fewer layers, a shorter prompt, --dtype bf16 or --device cpu",
              file=sys.stderr)
    except (OSError, ValueError) as e:  # unwritable output, bad numbers in options
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
