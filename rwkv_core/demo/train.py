"""Train the project's byte-level demo RWKV models (v7 / v6) on the generated demo corpus, on CPU or GPU.

`python -m rwkv_core.demo.train --version 7 --out models/demo-v7.pth --minutes 25 --seed 0`

- model: the project's own `rwkv_core.model.RWKV` (its sequence forward is differentiable), vocabulary = 256 bytes;
  initialised like BlinkDL's RWKV-LM (x060 / x070 `_init_weights`): tiny embedding (uniform +-1e-4, official),
  zero output projections (att.output, ffn.value), orthogonal matrices, decay / mix / bonus vectors spread over the
  channels by layer depth;
- data: `rwkv_core.demo_corpus.training_stream(seed, n_bytes)`; random windows of `ctx_len + 1` bytes, half of them
  starting at a document start (the evaluation prompts start from the zero state at a document start);
- optimiser: AdamW (weight decay on matrices only), linear warmup then cosine decay to `lr_final`, gradient
  clipping; the schedule runs over a fixed number of steps (`--steps`), or over a time budget (`--minutes`): the
  step count is then fixed after a short timing phase so that the cosine ends on time;
- output: the OFFICIAL BlinkDL `.pth` layout: `torch.save(state_dict)` with the official names, fp32, contiguous
  (v7 layer 0 has no v0/v1/v2, as in released checkpoints), loadable by the official `rwkv` package.

Determinism: with `--steps` fixed the run is deterministic for a given seed and thread count (same data windows,
same init, same order). With `--minutes` the step count depends on the machine speed; the chosen count is printed
and stored in the log, so a retraining can pass it as `--steps`.
No Streamlit.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from rwkv_core.model import wkv
from rwkv_core.demo.card import write_card
from rwkv_core.errors import InputError
from rwkv_core.io.checkpoint import detect_config
from rwkv_core.demo.corpus import KV_FORMATS, KV_PAIRS, SEPARATOR, KVLayout, training_stream
from rwkv_core.model.rwkv import RWKV
from rwkv_core.io.synthetic import random_state_dict

VOCAB = 256
# More retrieval and less filler than the corpus default: the demo must show copying heads after a short training.
DEMO_MIX_JSON = '{"facts": 0.5, "kv": 0.3, "repeat": 0.05, "filler": 0.15}'


# ---------------------------------------------------------------------------------------------------- init


def _ortho(shape: tuple[int, ...], gain: float, gen: torch.Generator) -> torch.Tensor:
    """Orthogonal init (RWKV-LM's `ortho_init`): a [rows, cols] matrix scaled by `gain`; 3-D: per slice."""
    if len(shape) == 3:
        return torch.stack([_ortho(shape[1:], gain, gen) for _ in range(shape[0])])
    rows, cols = shape
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique, uniformly distributed
    if rows < cols:
        q = q.T
    return (gain * q[:rows, :cols]).contiguous()


def official_init(sd: dict[str, torch.Tensor], version: str, n_layer: int, seed: int) -> dict[str, torch.Tensor]:
    """Replace the values of an official-layout state_dict by an RWKV-LM style training init (same names/shapes).

    Follows BlinkDL's x060 / x070 `_init_weights` and the blocks' `__init__` (RWKV-LM `RWKV-v5/src/model.py`,
    `RWKV-v7/train_temp/src/model.py`), sized for the small byte-level models trained here.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    out: dict[str, torch.Tensor] = {}
    C = sd["emb.weight"].shape[1]
    V = sd["emb.weight"].shape[0]
    for name, t in sd.items():
        shape = tuple(t.shape)
        if name == "emb.weight":
            out[name] = torch.empty(shape).uniform_(-1e-4, 1e-4, generator=gen)
            continue
        if name == "head.weight":
            out[name] = _ortho(shape, 0.5 * math.sqrt(V / C) if V > C else 0.5, gen)
            continue
        if name.startswith(("ln_out.", )):
            out[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
            continue
        parts = name.split(".")
        layer = int(parts[1])
        leaf = ".".join(parts[2:])
        r01 = layer / max(1, n_layer - 1)  # ratio_0_to_1
        r1a0 = 1.0 - layer / n_layer  # ratio_1_to_almost0
        ddd = torch.arange(C, dtype=torch.float32) / C  # [C]
        n = torch.arange(C, dtype=torch.float32)
        if leaf.endswith(("ln1.weight", "ln2.weight", "ln0.weight")):
            out[name] = torch.ones(shape)
        elif leaf.endswith(("ln1.bias", "ln2.bias", "ln0.bias", "ln_x.bias")):
            out[name] = torch.zeros(shape)
        elif leaf == "att.ln_x.weight":
            out[name] = torch.full(shape, ((1 + layer) / n_layer) ** 0.7)
        elif leaf in ("att.output.weight", "ffn.value.weight"):
            out[name] = torch.zeros(shape)
        elif leaf in ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.gate.weight",
                      "ffn.key.weight", "ffn.receptance.weight"):
            gain = 1.0
            if leaf == "att.key.weight" and version == "7":
                gain = 0.1
            if leaf == "att.value.weight" and version == "7":
                gain = 1.0
            if leaf == "att.gate.weight":
                gain = 0.1
            out[name] = _ortho(shape, gain * math.sqrt(max(shape) / min(shape)) if leaf.startswith("ffn") else gain,
                               gen)
        # ---- v7 vectors and LoRAs
        elif version == "7" and leaf in ("att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g"):
            p = {"att.x_r": 0.2, "att.x_w": 0.9, "att.x_k": 0.7, "att.x_v": 0.7, "att.x_a": 0.9, "att.x_g": 0.2}[leaf]
            base = 1.0 - torch.pow(ddd, p * r1a0)
            if leaf == "att.x_k":
                base = 1.0 - (torch.pow(ddd, 0.9 * r1a0) + 0.4 * r01)
            if leaf == "att.x_v":
                base = 1.0 - (torch.pow(ddd, 0.4 * r1a0) + 0.6 * r01)
            out[name] = base.view(shape)
        elif version == "7" and leaf == "att.w0":
            ds = -7 + 5 * (n / (C - 1)) ** (0.85 + 1.0 * r01 ** 0.5)
            # official: w = -softplus(-(w0 + ...)) - 0.5 and w0 = decay_speed + 0.5; our engine uses the equivalent
            # log w = -e^-0.5 sigmoid(w0 + ...), where the same w0 gives the same spread of slow and fast channels
            out[name] = (ds + 0.5).view(shape)
        elif version == "7" and leaf in ("att.w1", "att.a1", "att.v1", "att.g1"):
            out[name] = torch.zeros(shape)
        elif version == "7" and leaf in ("att.w2", "att.a2", "att.v2", "att.g2"):
            out[name] = _ortho(shape, 0.1, gen)
        elif version == "7" and leaf == "att.a0":
            out[name] = torch.zeros(shape)
        elif version == "7" and leaf == "att.v0":
            out[name] = torch.ones(shape)
        elif version == "7" and leaf == "att.k_k":
            out[name] = torch.full(shape, 0.85)
        elif version == "7" and leaf == "att.k_a":
            out[name] = torch.ones(shape)
        elif version == "7" and leaf == "att.r_k":
            out[name] = torch.full(shape, -0.04)
        elif version == "7" and leaf == "ffn.x_k":
            out[name] = (1.0 - torch.pow(ddd, r1a0 ** 4)).view(shape)
        # ---- v6 vectors and LoRAs
        elif version == "6" and leaf in ("att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v",
                                         "att.time_maa_r", "att.time_maa_g"):
            p = {"att.time_maa_x": r1a0, "att.time_maa_w": r1a0, "att.time_maa_k": r1a0,
                 "att.time_maa_v": r1a0 + 0.3 * r01, "att.time_maa_r": 0.5 * r1a0, "att.time_maa_g": 0.5 * r1a0}[leaf]
            out[name] = (1.0 - torch.pow(ddd, p)).view(shape)
        elif version == "6" and leaf == "att.time_maa_w1":
            out[name] = torch.zeros(shape)
        elif version == "6" and leaf == "att.time_maa_w2":
            out[name] = torch.empty(shape).uniform_(-0.01, 0.01, generator=gen)
        elif version == "6" and leaf == "att.time_decay":
            out[name] = (-6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r01)).view(shape)
        elif version == "6" and leaf == "att.time_decay_w1":
            out[name] = torch.zeros(shape)
        elif version == "6" and leaf == "att.time_decay_w2":
            out[name] = torch.empty(shape).uniform_(-0.01, 0.01, generator=gen)
        elif version == "6" and leaf == "att.time_faaaa":
            nn_ = torch.arange(C, dtype=torch.float32)
            out[name] = (r01 * (1 - nn_ / (C - 1)) + ((nn_ + 1) % 3 - 1) * 0.1).view(shape)
        elif version == "6" and leaf in ("ffn.time_maa_k", "ffn.time_maa_r"):
            out[name] = (1.0 - torch.pow(ddd, r1a0)).view(shape)
        else:
            raise KeyError(f"official_init: no rule for {name} (v{version})")
    return out


def build_model(version: str, n_layer: int, n_embd: int, head_size: int, seed: int,
                dim_ffn: Optional[int] = None) -> RWKV:
    """A trainable RWKV of the given shape with the official names and an RWKV-LM style init."""
    sd = random_state_dict(version, n_layer=n_layer, n_embd=n_embd, head_size=head_size, vocab_size=VOCAB,
                           dim_ffn=dim_ffn, seed=seed)
    sd = official_init(sd, version, n_layer, seed)
    model = RWKV.from_state_dict(detect_config(sd), sd)
    return model.requires_grad_(True).train()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def official_state_dict(model: RWKV) -> dict[str, torch.Tensor]:
    """fp32 contiguous clones with the official names (what `torch.save` writes for BlinkDL's loaders)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model.state_dict().items()}


def save_official(model: RWKV, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(official_state_dict(model), tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- kernel


def wkv7_chunked_train(r, logw, k, v, alpha, beta, state, chunk: int = 16, need_state: bool = True):
    """`rwkv_core.model.wkv.wkv7_chunked` with the chunk loop written for autograd: chunks are taken with `unbind`
    and the outputs joined with `stack` (indexing and slice assignment inside the loop make every backward step
    allocate and add full-size gradient tensors). The same chunk terms (`wkv.v7_chunk_terms`), the same values;
    the state is always formed."""
    B, T, H, N = r.shape
    L = chunk
    if T <= 1 or not wkv.v7_chunk_fits(logw, L):
        return wkv.wkv7_serial(r, logw, k, v, alpha, beta, state)
    rc, kc, vc, ac, bc, lw = (wkv._to_chunks(x, L) for x in (r, k, v, alpha, beta, logw))  # [B, H, nC, L, N]
    ch = wkv.v7_chunk_terms(rc, kc, ac, bc, lw, vc)
    y_local = ch.Q_k @ vc
    ys = []
    for W_j, U_j, r_j, Qb_j, yl_j, dec_j, be_j, ke_j, v_j in zip(
            *(x.unbind(2) for x in (ch.W_a, ch.U, ch.r_t, ch.Q_b, y_local, ch.dec, ch.b_end, ch.k_end, vc))):
        S_T = state.transpose(-1, -2)  # [B, H, key, value]
        Z = W_j @ S_T + U_j  # [B, H, L, value]
        ys.append(r_j @ S_T + Qb_j @ Z + yl_j)
        state = state * dec_j[:, :, None, :] + Z.transpose(-1, -2) @ be_j + v_j.transpose(-1, -2) @ ke_j
    return wkv._from_chunks(torch.stack(ys, 2), T), state


# ---------------------------------------------------------------------------------------------------- data


class Windows:
    """Random training windows of `T + 1` bytes from the seed's stream; a share start at a document start."""

    def __init__(self, data: bytes, T: int, seed: int, doc_start_share: float = 0.5):
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # [n_bytes]
        self.T = T
        sep = SEPARATOR.encode()
        starts, i = [0], data.find(sep)
        while i >= 0:
            starts.append(i + len(sep))
            i = data.find(sep, i + 1)
        limit = len(data) - T - 1
        self.doc_starts = torch.tensor([s for s in starts if s <= limit], dtype=torch.long)
        self.limit = limit
        self.share = doc_start_share
        self.gen = torch.Generator().manual_seed(20_000 + seed)

    def batch(self, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [B, T], targets [B, T])."""
        rand = torch.randint(0, self.limit + 1, (B,), generator=self.gen)
        doc = self.doc_starts[torch.randint(0, len(self.doc_starts), (B,), generator=self.gen)]
        use_doc = torch.rand(B, generator=self.gen) < self.share
        start = torch.where(use_doc, doc, rand)  # [B]
        idx = start[:, None] + torch.arange(self.T + 1)[None]  # [B, T + 1]
        w = self.data[idx]
        return w[:, :-1], w[:, 1:]


# ---------------------------------------------------------------------------------------------------- train


def lr_at(step: int, total: int, warmup: int, lr: float, lr_final: float) -> float:
    """Linear warmup to `lr`, then cosine to `lr_final` at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * p))


def make_optimizer(model: RWKV, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; weight decay only on the big matrices (RWKV-LM: 2-D weights except LoRAs and embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        big = p.dim() == 2 and name.endswith(".weight") and min(p.shape) > 32 and not name.startswith("emb")
        (decay if big else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99), eps=1e-8)


def train(args: argparse.Namespace) -> dict:
    """One training phase (`args` from `parse_args`); returns its summary (with the logged `history`). The thread
    count is set for the run only (restored afterwards), so calling it from a process that does other work is safe."""
    threads = torch.get_num_threads()
    try:
        return _train(args)
    finally:
        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.init_from:  # a second phase: continue from a saved checkpoint (fresh optimizer and schedule)
        sd = torch.load(args.init_from, map_location="cpu", weights_only=True)
        model = RWKV.from_state_dict(detect_config(sd), sd).requires_grad_(True).train()
        print(f"init from {args.init_from}", flush=True)
    else:
        model = build_model(args.version, args.n_layer, args.n_embd, args.head_size, args.seed, args.dim_ffn)
    model.to(device)
    if model.cfg.version == "7":
        for block in model.blocks:  # the same kernel, cheaper backward; set on this model only
            block.att.wkv7_chunked = wkv7_chunked_train
    n_params = count_parameters(model)
    cfg = model.cfg
    print(f"RWKV v{cfg.version}: L={cfg.n_layer} C={cfg.n_embd} H={cfg.n_head} N={cfg.head_size} "
          f"F={cfg.dim_ffn} lora={cfg.lora} params={n_params:,}", flush=True)
    mix = json.loads(args.mix) if args.mix else None
    kv = KVLayout(args.kv_format, tuple(args.kv_pairs))
    data = training_stream(args.seed + args.data_offset, args.data_bytes, mix, kv)
    windows = Windows(data, args.ctx_len, args.seed + args.data_offset, args.doc_start_share)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    tokens_per_step = args.batch * args.ctx_len

    total = args.steps
    t0 = time.time()
    deadline = t0 + 60 * args.minutes if args.minutes else None
    log_f = open(args.log, "a") if args.log else None
    ema, step = None, 0
    bar = None
    try:
        from tqdm import tqdm  # optional
    except ImportError:  # pragma: no cover
        tqdm = None
    history = []
    while True:
        if total is None and step == args.timing_steps:
            # fix the schedule length from the measured speed, so the cosine ends at the deadline
            per_step = (time.time() - t0) / step
            total = max(step + 1, int((deadline - time.time()) / per_step) + step)
            print(f"timing: {per_step:.3f} s/step, {tokens_per_step / per_step:,.0f} tokens/s -> total {total} steps",
                  flush=True)
        if total is not None and step >= total:
            break
        if args.stop_after is not None and step >= args.stop_after:
            break  # a replayed prefix: the same schedule as the full phase, cut short
        if total is not None and bar is None and tqdm is not None and args.progress:
            bar = tqdm(total=total, initial=step, unit="step", mininterval=5, file=sys.stdout)
        lr = lr_at(step, total if total is not None else 10 ** 9, args.warmup, args.lr, args.lr_final)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = windows.batch(args.batch)
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)  # [B, T, V]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        lv = loss.detach().item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.2e}")
        if step % args.log_every == 0 or step == total:
            el = time.time() - t0
            rec = {"step": step, "total": total, "loss": round(lv, 4), "loss_ema": round(ema, 4), "lr": lr,
                   "grad_norm": round(float(gnorm), 3), "elapsed_s": round(el, 1),
                   "tokens": step * tokens_per_step, "tokens_per_s": round(step * tokens_per_step / el)}
            if total:
                rec["eta_s"] = round(el / step * (total - step))
            history.append(rec)
            line = json.dumps(rec)
            if bar is None:
                print(line, flush=True)
            if log_f:
                log_f.write(line + "\n")
                log_f.flush()
        if args.save_every and step % args.save_every == 0:
            save_official(model, Path(args.out))
    if bar is not None:
        bar.close()
    model.eval().requires_grad_(False)
    save_official(model, Path(args.out))
    el = time.time() - t0
    summary = {"version": cfg.version, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "head_size": cfg.head_size,
               "dim_ffn": cfg.dim_ffn, "params": n_params, "steps": step, "batch": args.batch,
               "ctx_len": args.ctx_len, "tokens": step * tokens_per_step, "train_s": round(el, 1),
               "tokens_per_s": round(step * tokens_per_step / el), "final_loss_ema": round(ema, 4),
               "seed": args.seed, "lr": args.lr, "threads": torch.get_num_threads(), "out": str(args.out)}
    summary["history"] = history
    print("done: " + json.dumps({k: v for k, v in summary.items() if k != "history"}), flush=True)
    if log_f:
        log_f.write(json.dumps({"summary": summary}) + "\n")
        log_f.close()
    if args.card:
        record_phase(Path(args.card), args, summary)
    return summary


# Arguments that name files or only change how a run reports: not part of what a phase computes.
_NOT_PHASE_ARGS = {"--out": 1, "--init-from": 1, "--card": 1, "--log": 1, "--save-every": 1, "--progress": 0,
                   "--stop-after": 1}


def phase_args(argv: list[str]) -> list[str]:
    """The arguments of a training command that determine what it computes (`argv` without output paths,
    `--init-from`, logging and progress options), as a model card records them for a replay."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name in _NOT_PHASE_ARGS:
            i += 1 + (_NOT_PHASE_ARGS[name] if "=" not in a else 0)
            continue
        out.append(a)
        i += 1
    return out


def record_phase(card_path: Path, args: argparse.Namespace, summary: dict) -> None:
    """Append this run to the model card's `training.phases` (a run without `--init-from` starts the list anew),
    with its arguments, tokens, time and logged losses, so that a card documents how to retrain its model."""
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    tr = card.setdefault("training", {})
    phases = tr.get("phases", []) if args.init_from else []
    phases.append({"args": phase_args(list(args.argv)), "tokens": summary["tokens"], "train_s": summary["train_s"],
                   "final_loss_ema": summary["final_loss_ema"], "threads": summary["threads"],
                   "loss_log": [[h["step"], h["loss"], h["loss_ema"]] for h in summary["history"]]})
    tr["phases"] = phases
    tr["params"] = summary["params"]
    tr["total_tokens"] = sum(ph["tokens"] for ph in phases)
    tr["total_train_s"] = round(sum(ph["train_s"] for ph in phases), 1)
    write_card(card_path, card)


TRAIN_DESCRIPTION = "Train a byte-level demo RWKV on the generated demo corpus."


def add_train_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a training phase (`python -m rwkv_core train`, `python -m rwkv_core.train`), defined once."""
    ap.add_argument("--version", default="7", choices=("6", "7"))
    ap.add_argument("--out", required=True, help="output .pth (official BlinkDL layout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--head-size", type=int, default=32)
    ap.add_argument("--dim-ffn", type=int, default=None)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (deterministic schedule)")
    ap.add_argument("--minutes", type=float, default=None, help="time budget (sets the step count after timing)")
    ap.add_argument("--timing-steps", type=int, default=20)
    ap.add_argument("--data-bytes", type=int, default=8_000_000)
    ap.add_argument("--mix", default=DEMO_MIX_JSON, help="byte shares per corpus kind, JSON ('' = corpus default)")
    ap.add_argument("--doc-start-share", type=float, default=0.5)
    ap.add_argument("--kv-format", choices=KV_FORMATS, default="word",
                    help="kv lines: 'word' (cat=41) or 'letter' (c41: the key byte right before the value)")
    ap.add_argument("--kv-pairs", type=int, nargs=2, default=list(KV_PAIRS), metavar=("MIN", "MAX"),
                    help="pairs per kv episode (default %(default)s; fewer make a lookup curriculum)")
    ap.add_argument("--init-from", default=None, help="start from this .pth (a further training phase)")
    ap.add_argument("--data-offset", type=int, default=0,
                    help="corpus / window seed = seed + offset (a second phase sees fresh documents)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--log", default=None, help="append JSON lines of the loss here")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="tqdm progress bar instead of log lines on stdout")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps of the --steps schedule (replays the start of a phase)")
    ap.add_argument("--card", default=None,
                    help="append this phase (arguments, tokens, time, losses) to this model card's training.phases")
    return ap


def finish_train_args(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Check what argparse cannot (a step count or a time budget) and keep `argv` for the model card's record of
    the phase; raises InputError."""
    if args.steps is None and args.minutes is None:
        raise InputError("give --steps or --minutes")
    args.argv = list(argv)
    return args


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = add_train_arguments(argparse.ArgumentParser(description=TRAIN_DESCRIPTION))
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return finish_train_args(ap.parse_args(argv), argv)
    except InputError as e:
        ap.error(str(e))


def main(argv: Optional[list[str]] = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
