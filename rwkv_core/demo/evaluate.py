"""Metrics of the demo models (issue 7): fact recall on held-out phrasings, retrieval accuracy and the copying head,
causal tracing on a fact prompt.

`python -m rwkv_core.demo.evaluate models/demo-v7.pth [--probes 200] [--probe-seed 1000]` prints them as JSON.
The functions are what tests/test_demo_models.py and the model cards use. Byte-level models only (token = byte).
No Streamlit.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from rwkv_core.demo.card import write_card
from rwkv_core.demo.corpus import (KV_FORMATS, eval_fact_prompts, retrieval_probes, tracing_examples,
                                   train_fact_prompts)

PROBE_SEED = 1000  # fresh probes: training episodes come from the corpus stream, probes from their own rng


def encode(text: str) -> list[int]:
    """Byte-level tokens (the demo models' vocabulary is the 256 bytes)."""
    return list(text.encode("utf-8"))


@torch.no_grad()
def greedy_batch(model, prompts: Sequence[str], n_new: int, batch_size: int = 64) -> list[str]:
    """Greedy continuation of `n_new` bytes for every prompt, from the zero state.

    Prompts of equal byte length share a batch (no padding, so the result equals one prompt at a time).
    """
    out: list[Optional[str]] = [None] * len(prompts)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(encode(p))].append(i)
    for _, idxs in sorted(by_len.items()):
        for b0 in range(0, len(idxs), batch_size):
            sel = idxs[b0:b0 + batch_size]
            toks = torch.tensor([encode(prompts[i]) for i in sel], dtype=torch.long)  # [B, T]
            logits, state = model(toks, logits="last")  # [B, 1, V]
            gen = []
            for step in range(n_new):
                nxt = logits[:, -1].argmax(-1)  # [B]
                gen.append(nxt)
                if step + 1 < n_new:
                    logits, state = model(nxt[:, None], state, logits="last")
            g = torch.stack(gen, 1)  # [B, n_new]
            for j, i in enumerate(sel):
                out[i] = bytes(g[j].tolist()).decode("latin-1")
    return out  # type: ignore[return-value]


def fact_recall(model, prompts=None) -> dict:
    """Greedy completion of fact prompts (default: the held-out phrasings); right when the continuation starts
    with " object". Returns the accuracy over prompts, over facts (both held-out phrasings right) and examples."""
    prompts = eval_fact_prompts() if prompts is None else prompts
    n_new = max(len(p.answer) for p in prompts)
    gens = greedy_batch(model, [p.prompt for p in prompts], n_new)
    ok = [g.startswith(p.answer) for g, p in zip(gens, prompts)]
    per_fact: dict[tuple, list[bool]] = defaultdict(list)
    for p, o in zip(prompts, ok):
        per_fact[(p.fact.relation, p.fact.subject)].append(o)
    by_rel: dict[str, list[bool]] = defaultdict(list)
    for p, o in zip(prompts, ok):
        by_rel[p.fact.relation].append(o)
    wrong = [{"prompt": p.prompt, "expected": p.answer, "got": g} for p, g, o in zip(prompts, gens, ok) if not o]
    return {"accuracy": sum(ok) / len(ok), "n_prompts": len(ok),
            "facts_all_right": sum(all(v) for v in per_fact.values()) / len(per_fact),
            "facts_any_right": sum(any(v) for v in per_fact.values()) / len(per_fact),
            "by_relation": {r: round(sum(v) / len(v), 4) for r, v in by_rel.items()},
            "wrong_examples": wrong[:5]}


def retrieval_accuracy(model, probes) -> dict:
    """Greedy answer of retrieval probes (right when the continuation starts with the answer)."""
    n_new = max(len(p.answer) for p in probes)
    gens = greedy_batch(model, [p.prompt for p in probes], n_new)
    ok = [g.startswith(p.answer) for g, p in zip(gens, probes)]
    return {"accuracy": sum(ok) / len(ok), "n": len(ok),
            "wrong_examples": [{"prompt": p.prompt[-40:], "expected": p.answer, "got": g}
                               for p, g, o in zip(probes, gens, ok) if not o][:3]}


@torch.no_grad()
def answer_rows(model, probes) -> list[torch.Tensor]:
    """Per probe, the R·W·K scores from the answer position (the prompt's last token, which predicts the answer's
    first byte) on every token: `rwkv_core.analysis.scores` rows, diagonal included, signed. [L, H, T] each."""
    from rwkv_core.analysis.scores import capture_score_inputs, row_and_column

    rows = []
    for p in probes:
        toks = encode(p.prompt)
        rows.append(row_and_column(capture_score_inputs(model, toks), len(toks) - 1, spans=False)["row"])
    return rows


def _best(share: torch.Tensor) -> dict:
    bl, bh = divmod(int(share.argmax()), share.shape[1])
    return {"best_layer": bl, "best_head": bh, "best_share": float(share[bl, bh]),
            "share": [[round(float(x), 4) for x in row] for row in share]}


def copying_heads(model, probes, rows: Optional[list[torch.Tensor]] = None) -> dict:
    """For every (layer, head): the share of probes where the R·W·K score from the answer position that is largest
    in magnitude is on the source token (the answer's first byte in the list). `rows`: `answer_rows(model, probes)`
    if already computed.

    Magnitude, not signed value: a head's score has no meaningful sign. Negating a head's keys and values
    (k -> -k, v -> -v) leaves the model's function exactly as it was (the WKV output sums score * v) and flips every
    score of the head, so a head may read its source through a large negative score (a trained v6 lookup head does).
    `negative_share`: of the hits, the share whose score is negative.
    """
    rows = answer_rows(model, probes) if rows is None else rows
    hits = torch.zeros(model.cfg.n_layer, model.cfg.n_head)
    negative = torch.zeros_like(hits)
    for p, row in zip(probes, rows):
        hit = (row.abs().argmax(-1) == p.source_char_index).float()  # [L, H]
        hits += hit
        negative += hit * (row[:, :, p.source_char_index] < 0).float()
    out = _best(hits / len(probes))
    out["negative_share"] = [[round(float(n / h), 4) if h else 0.0 for n, h in zip(nr, hr)]
                             for nr, hr in zip(negative, hits)]
    return out


def _word_starts(text: str, offset: int) -> dict[str, int]:
    """Start index of each space-separated word of `text` (which starts at `offset` in the prompt)."""
    out, i = {}, offset
    for w in text.split(" "):
        if w:
            out.setdefault(w, i)
        i += len(w) + 1
    return out


def queue_heads(model, probes, rows: Optional[list[torch.Tensor]] = None) -> dict:
    """For every (layer, head), on "repeat" probes: the share of probes where the NET R·W·K score of a listed word,
    its score at its first-letter in the list plus its score at its first letter in the repeat so far, is largest
    for the word to be said next.

    A delta-rule (v7) head can keep the list as a queue: each word is written at its first occurrence and erased
    again where it is repeated (a negative score of about the same size), so what is left in the state is the words
    not yet repeated. The per-token argmax of such a head is on the list's first word (its positive score is
    cancelled by its repeat's negative one), so `copying_heads` misses it; this measure sees it. `rows`:
    `answer_rows(model, probes)` if already computed.
    """
    from rwkv_core.demo.corpus import REPEAT_AGAIN, REPEAT_HEADER

    keep = [i for i, p in enumerate(probes) if p.kind == "repeat"]
    rows = answer_rows(model, [probes[i] for i in keep]) if rows is None else [rows[i] for i in keep]
    probes = [probes[i] for i in keep]
    hits = torch.zeros(model.cfg.n_layer, model.cfg.n_head)
    for p, row in zip(probes, rows):
        again = p.prompt.index("\n" + REPEAT_AGAIN) + 1
        first = _word_starts(p.prompt[len(REPEAT_HEADER) + 1:again - 1], len(REPEAT_HEADER) + 1)
        second = _word_starts(p.prompt[again + len(REPEAT_AGAIN) + 1:], again + len(REPEAT_AGAIN) + 1)
        words = list(first)
        net = row[:, :, [first[w] for w in words]].clone()  # [L, H, W]
        for j, w in enumerate(words):
            if w in second:
                net[:, :, j] += row[:, :, second[w]]
        best = net.argmax(-1)  # [L, H]
        hits += (torch.tensor([first[w] for w in words])[best] == p.source_char_index).float()
    return _best(hits / max(1, len(probes)))


def tracing_effect(model, example: Optional[dict] = None, samples: int = 10, noise: float = 3.0) -> dict:
    """Causal tracing (kind block, mode both, metric prob) on a fact prompt (default the Eiffel Tower).

    Returns clean and corrupted answer probability, and at the last subject token the largest restored
    probability over layers and its share of the effect, (max - corrupt) / (clean - corrupt); the same at the
    prompt's last token for comparison.
    """
    from rwkv_core.analysis.tracing import trace
    from rwkv_core.io.tokenizer import tokenizer_for

    ex = example or tracing_examples()[0]
    res = trace(model, tokenizer_for(model.cfg.vocab_size), ex["prompt"], ex["subject"], ex["answer"], kind="block",
                mode="both", metric="prob", samples=samples, noise=noise)
    clean, corrupt = res.clean["prob"], res.corrupt["prob"]
    g = res.grids["prob"]  # [T, L]
    s0, s1 = res.subject
    effect = clean - corrupt
    last_subj = float(g[s1 - 1].max())
    last_tok = float(g[-1].max())
    return {"prompt": ex["prompt"], "answer": ex["answer"], "clean_prob": clean, "corrupt_prob": corrupt,
            "effect": effect, "last_subject_max_prob": last_subj,
            "last_subject_share": (last_subj - corrupt) / effect if effect > 0 else float("nan"),
            "last_subject_best_layer": int(g[s1 - 1].argmax()),
            "last_token_share": (last_tok - corrupt) / effect if effect > 0 else float("nan")}


RETRIEVAL_TASKS = ("kv", "repeat")  # the corpus' two copying tasks (see rwkv_core.demo.corpus)


def evaluate(path: str, n_probes: int = 200, probe_seed: int = PROBE_SEED, n_head_probes: int = 100,
             with_train_phrasings: bool = False, retrieval_task: str = "kv", kv_format: str = "word") -> dict:
    """Every metric of a demo checkpoint, as a JSON-able dict. Both retrieval tasks are measured (accuracy and
    copying heads); `retrieval_task` names the one the model card states as the model's retrieval metric and
    `kv_format` the kv line layout the model was taught last ("word": cat=41, "letter": c41)."""
    if retrieval_task not in RETRIEVAL_TASKS:
        raise ValueError(f"retrieval_task must be one of {RETRIEVAL_TASKS}, not {retrieval_task!r}")
    from rwkv_core.io.checkpoint import load_model

    t0 = time.time()
    model = load_model(path)
    cfg = model.cfg
    out: dict = {"path": str(path), "probe_seed": probe_seed, "probes": n_probes, "head_probes": n_head_probes,
                 "version": cfg.version, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                 "head_size": cfg.head_size, "params": sum(p.numel() for p in model.parameters())}
    out["fact_recall_heldout"] = fact_recall(model)
    if with_train_phrasings:
        out["fact_recall_train_phrasings"] = {k: v for k, v in fact_recall(model, train_fact_prompts()).items()
                                              if k in ("accuracy", "n_prompts")}
    out["retrieval_task"], out["kv_format"] = retrieval_task, kv_format
    for task in RETRIEVAL_TASKS:
        probes = retrieval_probes(probe_seed, n_probes, task, kv_format)
        out[f"retrieval_{task}"] = retrieval_accuracy(model, probes)
        rows = answer_rows(model, probes[:n_head_probes])  # one capture per probe for both head measures
        out[f"copying_head_{task}"] = copying_heads(model, probes[:n_head_probes], rows)
        if task == "repeat":
            out["queue_head_repeat"] = queue_heads(model, probes[:n_head_probes], rows)
    out["tracing"] = tracing_effect(model)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def card_metrics(result: dict) -> dict:
    """The summary of `evaluate` that a model card stores under "metrics" (what the tests compare with)."""
    task, tr = result["retrieval_task"], result["tracing"]
    heads = {t: {"layer": result[f"copying_head_{t}"]["best_layer"], "head": result[f"copying_head_{t}"]["best_head"],
                 "share": round(result[f"copying_head_{t}"]["best_share"], 4)} for t in RETRIEVAL_TASKS}
    out = {"fact_recall_heldout": round(result["fact_recall_heldout"]["accuracy"], 4),
           "fact_recall_heldout_facts_all_right": round(result["fact_recall_heldout"]["facts_all_right"], 4),
           "retrieval_task": task, "kv_format": result.get("kv_format", "word"),
           "retrieval": round(result[f"retrieval_{task}"]["accuracy"], 4),
           "copying_head": heads[task],
           **{f"retrieval_{t}": round(result[f"retrieval_{t}"]["accuracy"], 4) for t in RETRIEVAL_TASKS},
           **{f"copying_head_{t}": heads[t] for t in RETRIEVAL_TASKS},
           "queue_head_repeat": {"layer": result["queue_head_repeat"]["best_layer"],
                                 "head": result["queue_head_repeat"]["best_head"],
                                 "share": round(result["queue_head_repeat"]["best_share"], 4)},
           "tracing": {k: round(tr[k], 4) for k in ("clean_prob", "corrupt_prob", "last_subject_share",
                                                   "last_token_share")},
           "probe_seed": result["probe_seed"], "probes": result["probes"], "head_probes": result["head_probes"]}
    if "fact_recall_train_phrasings" in result:
        out["fact_recall_train_phrasings"] = round(result["fact_recall_train_phrasings"]["accuracy"], 4)
    return out


EVALUATE_DESCRIPTION = "Metrics of a byte-level demo model (recall, retrieval, copying heads, tracing) as JSON."


def add_evaluate_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `python -m rwkv_core evaluate-demo` (and `python -m rwkv_core.demo.evaluate`), defined once."""
    ap.add_argument("path")
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--probe-seed", type=int, default=PROBE_SEED)
    ap.add_argument("--head-probes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--train-phrasings", action="store_true", help="also the accuracy on the training phrasings")
    ap.add_argument("--card", default=None, help="write the summary into this model card's \"metrics\"")
    ap.add_argument("--retrieval-task", choices=RETRIEVAL_TASKS, default=None,
                    help="the card's retrieval metric (default: the card's metrics.retrieval_task, else kv)")
    ap.add_argument("--kv-format", choices=KV_FORMATS, default=None,
                    help="kv probe layout (default: the card's metrics.kv_format, else word)")
    return ap


def run_evaluate(args: argparse.Namespace) -> None:
    """Evaluate the model of parsed arguments, print the JSON and, with --card, write the card's metrics."""
    card = Path(args.card) if args.card else None
    recorded = (json.loads(card.read_text()).get("metrics") or {}) if card and card.exists() else {}
    task = args.retrieval_task or recorded.get("retrieval_task") or "kv"
    kv_format = args.kv_format or recorded.get("kv_format") or "word"
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(args.path, args.probes, args.probe_seed, args.head_probes, args.train_phrasings, task,
                      kv_format)
    print(json.dumps(result, indent=1))
    if card:
        c = json.loads(card.read_text()) if card.exists() else {}
        c["metrics"] = card_metrics(result)
        write_card(card, c)


def main(argv: Optional[list[str]] = None) -> None:
    run_evaluate(add_evaluate_arguments(argparse.ArgumentParser(description=EVALUATE_DESCRIPTION)).parse_args(argv))


if __name__ == "__main__":
    main()
