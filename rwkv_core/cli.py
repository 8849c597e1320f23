"""Command line: `python -m rwkv_core {info,export,decay,trace} ...` (one argparse tree).

Errors the project anticipates (a bad checkpoint, a bad prompt) print one line to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from rwkv_core.errors import RWKVInspectorError
from rwkv_core.model.rwkv import DTYPES


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="bytes | bytes-utf16le | world | hf | digits | ids (default: from the vocabulary size)")
    p.add_argument("--tokenizer-file", default=None, help="tokenizer file for kind hf (e.g. 20B_tokenizer.json)")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="storage type of the weight matrices")


def cmd_info(args) -> None:
    from rwkv_core.io.checkpoint import load_checkpoint

    print(json.dumps(load_checkpoint(args.checkpoint).info(), indent=2))


def cmd_export(args) -> None:
    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.errors import InputError
    from rwkv_core.io.tokenizer import tokenizer_for
    from rwkv_core.io.trace_file import build_trace, save_trace

    model = load_model(args.checkpoint, device=args.device, dtype=DTYPES[args.dtype])
    tok = tokenizer_for(model.cfg.vocab_size, kind=args.tokenizer, path=args.tokenizer_file)
    if args.tokens is not None:
        try:
            ids = [int(t) for t in args.tokens.split(",") if t.strip()]
        except ValueError:
            raise InputError("--tokens must be comma-separated integers, e.g. 1,2,3") from None
        texts = [tok.display(i) if 0 <= i < tok.vocab_size else str(i) for i in ids]
    else:
        enc = tok.encode(args.text)
        ids, texts = enc.ids, enc.token_texts
    if not ids:
        raise InputError("the prompt is empty: give --text or --tokens")
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",") if x.strip()]
    try:
        arrays = build_trace(model, ids, layers=layers, token_texts=texts, tokenizer_kind=tok.kind,
                             checkpoint_name=model.checkpoint_info["file"], scores=args.scores)
    except ValueError as e:
        raise InputError(str(e)) from None
    save_trace(arrays, args.out)
    print(f"wrote {args.out}: {len(ids)} tokens, {len(arrays)} arrays")


def cmd_decay(args) -> None:
    from rwkv_core.analysis.decay import write_static_csv

    write_static_csv(args.checkpoint, args.out)
    print(f"wrote {args.out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkv_core", description="RWKV Inspector engine")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("info", help="print the architecture of a checkpoint as JSON")
    p.add_argument("checkpoint")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("export", help="run a prompt and write the trace file (.npz)")
    p.add_argument("checkpoint")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--tokens", help="comma-separated token ids")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    p.add_argument("--scores", action="store_true", help="also write attn_l{l} and span_l{l} [H, T, T]")
    _tokenizer_args(p)
    _device_args(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("decay", help="write the static decay table (layer, head, channel, decay, half_life) as CSV")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_decay)

    try:
        from rwkv_core.analysis.tracing import add_trace_arguments, trace_cli
    except ImportError:
        pass
    else:
        p = sub.add_parser("trace", help="causal tracing grid of a prompt (ROME style) as .npz")
        add_trace_arguments(p)
        p.set_defaults(fn=trace_cli)

    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except RWKVInspectorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print("error: the GPU ran out of memory: use fewer layers, a shorter prompt, --dtype bf16 or --device cpu",
              file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # unwritable output, bad numbers in options
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
