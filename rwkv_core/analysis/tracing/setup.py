"""Causal tracing, the setup: a prompt tokenised, its subject located, the corruption drawn (noise or subject
replacement), and the clean and corrupted runs computed once and cached for any number of grids (`prepare_trace`).
Also the per-row metrics every path shares (`TraceSetup.metrics_from_logits`). The method: `rwkv_core.analysis.tracing`.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from rwkv_core.errors import InputError, RWKVInspectorError
from rwkv_core.io.tokenizer import Encoding, Tokenizer

NOISE_SITES = {"resid_pre": "blocks.0.hook_resid_pre", "embed": "hook_embed"}

StopFn = Union[Callable[[], bool], threading.Event, None]


# ------------------------------------------------------------------------------------------------ small helpers


def locate_subject(encoding: Encoding, subject: Optional[str] = None,
                   char_span: Optional[tuple[int, int]] = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Token range (start, end exclusive) and character range of the subject.

    The character range is `char_span` when given, else the first occurrence of `subject` in the prompt; the tokens
    are those holding its characters' bytes (`Encoding.tokens_in_char_span`), never found by re-decoding, so a
    subject in the middle of a token takes the whole token.
    """
    text = encoding.text
    if char_span is not None:
        cs, ce = int(char_span[0]), int(char_span[1])
        if subject is not None and text[cs:ce] != subject:
            raise InputError(f"characters {cs}..{ce} of the prompt are {text[cs:ce]!r}, not the subject {subject!r}")
    else:
        if not subject:
            raise InputError("give a subject (a non-empty part of the prompt) or its character span")
        cs = text.find(subject)
        if cs < 0:
            raise InputError(f"the subject {subject!r} does not occur in the prompt")
        ce = cs + len(subject)
    return encoding.tokens_in_char_span(cs, ce), (cs, ce)


class ReplacementLengthError(InputError):
    """A replacement subject (subject replacement) that takes another number of tokens than the subject: the one-line
    message names both counts."""

    def __init__(self, alt_subject: str, alt_tokens: int, subject: str, subject_tokens: int):
        self.alt_tokens, self.subject_tokens = alt_tokens, subject_tokens
        super().__init__(f"the replacement subject {alt_subject!r} has {alt_tokens} token(s) and the subject {subject!r} "
                         f"{subject_tokens}: subject replacement needs the same number of tokens")


def replacement_ids(tokenizer: Tokenizer, encoding: Encoding, subject: tuple[int, int], subject_chars: tuple[int, int],
                    alt_subject: Optional[str]) -> list[int]:
    """The prompt's token ids with the subject's characters replaced by `alt_subject`, which must take the subject's
    tokens in place (same number, the rest of the prompt tokenised the same): ReplacementLengthError when the count
    differs, InputError when it merges with its neighbours."""
    if not alt_subject:
        raise InputError("subject replacement needs an alternative subject")
    (s0, s1), (cs, ce) = subject, subject_chars
    prompt = encoding.text
    alt_enc = tokenizer.encode(prompt[:cs] + alt_subject + prompt[ce:])
    alt_tokens = len(alt_enc) - (len(encoding) - (s1 - s0))  # the prompt's other tokens stay
    if alt_tokens != s1 - s0:
        raise ReplacementLengthError(alt_subject, alt_tokens, prompt[cs:ce], s1 - s0)
    if (alt_enc.tokens_in_char_span(cs, cs + len(alt_subject)) != (s0, s1) or alt_enc.ids[:s0] != encoding.ids[:s0]
            or alt_enc.ids[s1:] != encoding.ids[s1:]):
        raise InputError(f"the alternative subject {alt_subject!r} must replace the subject's {s1 - s0} token(s) "
                         "in place (same number of tokens, the rest of the prompt tokenised the same)")
    return list(alt_enc.ids)


def suggest_replacement(tokenizer: Tokenizer, prompt: str, subject: str, candidates: Sequence[str] = ()) -> Optional[str]:
    """A replacement subject that fits this prompt's subject (`replacement_ids` accepts it), so subject replacement
    works as offered: the first of `candidates` that fits, else the shortest fitting start of the candidates run
    together (a name cut short or padded with the next), else the subject's tokens each moved to the next id (what
    suits a model typed as token ids or a small alphabet). None when nothing fits or the subject is not in the
    prompt."""
    try:
        encoding = tokenizer.encode(prompt)
        span, chars = locate_subject(encoding, subject)
    except RWKVInspectorError:
        return None

    def fits(alt: str) -> bool:
        if not alt or alt == subject:
            return False
        try:
            replacement_ids(tokenizer, encoding, span, chars, alt)
            return True
        except RWKVInspectorError:
            return False

    joined = " and ".join(candidates)
    tried = list(candidates) + [joined[:k].rstrip() for k in range(1, len(joined) + 1)]
    try:
        tried.append(tokenizer.decode([(i + 1) % tokenizer.vocab_size for i in encoding.ids[span[0]:span[1]]]))
    except RWKVInspectorError:
        pass
    return next((alt for alt in tried if fits(alt)), None)


_NOISE_SIGMA: "weakref.WeakKeyDictionary[Any, dict[str, float]]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def noise_sigma(model, site: str = "resid_pre") -> float:
    """Standard deviation of all entries of the noise site's tensor over every vocabulary row, computed once per
    model: "embed" -> emb.weight; "resid_pre" -> ln0(emb.weight) (the input of block 0; emb.weight without ln0)."""
    if site not in NOISE_SITES:
        raise InputError(f"unknown noise site {site!r}; expected one of {', '.join(NOISE_SITES)}")
    cached = _NOISE_SIGMA.setdefault(model, {})
    if site not in cached:
        emb = model.emb.weight.float()  # [V, C]
        block0 = model.blocks[0]
        if site == "resid_pre" and hasattr(block0, "ln0"):
            emb = torch.nn.functional.layer_norm(emb, emb.shape[-1:], block0.ln0.weight.float(), block0.ln0.bias.float())
        cached[site] = float(emb.double().std())
    return cached[site]


def window_layers(l: int, n_layer: int, window: int) -> range:
    """ROME's window of layers centred on l: range(max(0, l - w // 2), min(L, l - (-w // 2)))."""
    return range(max(0, l - window // 2), min(n_layer, l - (-window // 2)))


def _stop_check(should_stop: StopFn) -> Callable[[], bool]:
    if should_stop is None:
        return lambda: False
    if isinstance(should_stop, threading.Event) or hasattr(should_stop, "is_set"):
        return should_stop.is_set
    return should_stop


def _rep(t: torch.Tensor, k: int) -> torch.Tensor:
    """[n, ...] -> [k * n, ...], cell-major (rows c*n .. c*n+n-1 are cell c's samples)."""
    return t.repeat(k, *([1] * (t.dim() - 1)))


# ------------------------------------------------------------------------------------------------ metrics


def _row_metrics(logits: torch.Tensor, answer: torch.Tensor, answer2_first: Optional[int]) -> dict[str, torch.Tensor]:
    """Per-row metrics from logits at the answer positions [B, K, V] (float64 from here on)."""
    lg = logits.double()
    logp = torch.log_softmax(lg, -1)  # [B, K, V]
    tok = logp.gather(-1, answer.view(1, -1, 1).expand(lg.shape[0], -1, 1))[..., 0]  # [B, K]
    out = {"logP": tok.sum(-1), "logp0": tok[:, 0]}
    if answer2_first is not None:
        out["ld"] = lg[:, 0, int(answer[0])] - lg[:, 0, answer2_first]
    return out


def _aggregate(rows: dict[str, torch.Tensor], n: int) -> list[dict[str, float]]:
    """Metrics of consecutive groups of n sample rows (ROME: the mean of probabilities over the samples)."""
    B = rows["logP"].shape[0]
    out = []
    for c in range(B // n):
        sl = slice(c * n, (c + 1) * n)
        logP = rows["logP"][sl]
        lp = float(torch.logsumexp(logP, 0) - math.log(n))
        m = {"prob": math.exp(lp), "logprob": lp, "first_prob": float(torch.exp(rows["logp0"][sl]).mean()),
             "logit_diff": float(rows["ld"][sl].mean()) if "ld" in rows else float("nan")}
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------------ setup


@dataclass
class TraceSetup:
    """A tokenised prompt, its corruption, and the clean and corrupted runs, cached for any number of grids.

    Built by `prepare_trace`. Shapes: S = T + K - 1 tokens (prompt plus all but the last answer token), n sample
    rows of the corrupted run (1 for subject replacement), L layers, C channels.
    """

    model: Any
    tokenizer: Tokenizer
    prompt: str
    encoding: Encoding
    subject: tuple[int, int]  # token range, end exclusive
    subject_chars: tuple[int, int]
    answer_ids: list[int]
    answer_text: str
    answer2_ids: Optional[list[int]]
    answer2_text: Optional[str]
    corruption: str  # "noise" | "replace"
    alt_subject: Optional[str]
    alt_ids: Optional[list[int]]
    samples: int
    noise: float
    noise_site: str
    sigma: float
    seed: int
    recovery_of: str
    seq: torch.Tensor  # [S] clean tokens
    corrupt_seq: torch.Tensor  # [S]
    noise_tensor: Optional[torch.Tensor]  # [n, subject tokens, C]
    clean: dict[str, float] = field(default_factory=dict)
    corrupt: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    clean_top: tuple[int, float] = (0, 0.0)
    # caches (model device)
    clean_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    corrupt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def T(self) -> int:
        return len(self.encoding.ids)

    @property
    def S(self) -> int:
        return int(self.seq.shape[0])

    @property
    def K(self) -> int:
        return len(self.answer_ids)

    @property
    def n(self) -> int:
        return self.samples if self.corruption == "noise" else 1

    @property
    def answer_positions(self) -> list[int]:
        return list(range(self.T - 1, self.T - 1 + self.K))

    @property
    def answer2_first(self) -> Optional[int]:
        return self.answer2_ids[0] if self.answer2_ids else None

    @property
    def token_labels(self) -> list[str]:
        labels = [self.tokenizer.display(i) for i in self.encoding.ids]
        if self.corruption == "replace" and self.alt_ids is not None:
            for t in range(*self.subject):
                labels[t] = f"{labels[t]}/{self.tokenizer.display(self.alt_ids[t])}"
        return labels

    def metrics_from_logits(self, logits: torch.Tensor, n: int) -> list[dict[str, float]]:
        ans = torch.tensor(self.answer_ids, device=logits.device)
        return _aggregate(_row_metrics(logits, ans, self.answer2_first), n)

    def recovery_base(self) -> str:
        if self.recovery_of == "auto":
            return "logit_diff" if self.answer2_ids else "prob"
        return self.recovery_of

    def settings(self) -> dict:
        cfg = self.model.cfg
        return {
            "prompt": self.prompt, "subject_chars": list(self.subject_chars), "subject_tokens": list(self.subject),
            "answer": self.answer_text, "answer_ids": self.answer_ids, "answer2": self.answer2_text,
            "answer2_ids": self.answer2_ids, "corruption": self.corruption, "alt_subject": self.alt_subject,
            "samples": self.n, "noise": self.noise, "noise_site": self.noise_site, "noise_sigma": self.sigma,
            "noise_std": self.noise * self.sigma, "seed": self.seed, "recovery_of": self.recovery_base(),
            "tokenizer": self.tokenizer.kind,
            "model": {"version": cfg.version, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                      "vocab_size": cfg.vocab_size,
                      "file": getattr(self.model, "checkpoint_info", {}).get("file")},
        }


def _encode_answer(tokenizer: Tokenizer, answer: Union[str, Sequence[int]], what: str) -> tuple[list[int], str]:
    if isinstance(answer, str):
        if not answer:
            raise InputError(f"the {what} is empty")
        ids = list(tokenizer.encode(answer).ids)
        return ids, answer
    ids = [int(i) for i in answer]
    if not ids:
        raise InputError(f"the {what} has no tokens")
    return ids, tokenizer.decode(ids)


@torch.no_grad()
def prepare_trace(model, tokenizer: Tokenizer, prompt: str, subject: Optional[str], answer: Union[str, Sequence[int]],
                  *, answer2: Union[str, Sequence[int], None] = None, subject_span: Optional[tuple[int, int]] = None,
                  corruption: str = "noise", alt_subject: Optional[str] = None, samples: int = 10,
                  noise: float = 3.0, noise_site: str = "resid_pre", seed: int = 1,
                  recovery_of: str = "auto") -> TraceSetup:
    """Tokenise, corrupt and run the clean and corrupted passes once (see the module docstring).

    answer / answer2: text (tokenised on its own, so include a leading space where the vocabulary wants one, e.g.
    " Paris") or token ids. corruption: "noise" (Gaussian noise, `samples` draws of std `noise` x `noise_sigma`)
    or "replace" (subject replacement by `alt_subject`, which must tokenise to the same number of tokens in place).
    """
    if corruption not in ("noise", "replace"):
        raise InputError(f"unknown corruption {corruption!r}; expected 'noise' or 'replace'")
    if noise_site not in NOISE_SITES:
        raise InputError(f"unknown noise site {noise_site!r}; expected one of {', '.join(NOISE_SITES)}")
    if recovery_of not in ("auto", "prob", "logprob", "first_prob", "logit_diff"):
        raise InputError(f"unknown recovery base {recovery_of!r}")
    if corruption == "noise" and (int(samples) < 1 or not math.isfinite(noise) or noise < 0):
        raise InputError("samples must be >= 1 and the noise multiple a finite number >= 0")
    enc = tokenizer.encode(prompt)
    if len(enc) == 0:
        raise InputError("the prompt is empty")
    (s0, s1), chars = locate_subject(enc, subject, subject_span)
    ans, ans_text = _encode_answer(tokenizer, answer, "answer")
    ans2, ans2_text = (None, None)
    if answer2 is not None and answer2 != "":
        ans2, ans2_text = _encode_answer(tokenizer, answer2, "second answer")
        if ans2[0] == ans[0]:
            raise InputError("the two answers start with the same token: their logit difference is always 0")
    V = model.cfg.vocab_size
    for i in list(enc.ids) + ans + (ans2 or []):
        if not 0 <= i < V:
            raise InputError(f"token id {i} is outside the model's vocabulary of {V}")
    dev = model.device
    seq = torch.tensor(list(enc.ids) + ans[:-1], dtype=torch.long, device=dev)  # [S]
    alt_ids = None
    if corruption == "replace":
        alt_ids = replacement_ids(tokenizer, enc, (s0, s1), chars, alt_subject)
        corrupt_seq = torch.tensor(alt_ids + ans[:-1], dtype=torch.long, device=dev)
        sigma, noise_t = noise_sigma(model, noise_site), None
    else:
        corrupt_seq = seq
        sigma = noise_sigma(model, noise_site)
        gen = torch.Generator().manual_seed(int(seed))
        noise_t = (torch.randn(int(samples), s1 - s0, model.cfg.n_embd, generator=gen) * (noise * sigma)).to(dev)
    setup = TraceSetup(model, tokenizer, prompt, enc, (s0, s1), chars, ans, ans_text, ans2, ans2_text, corruption,
                       alt_subject, alt_ids, int(samples), float(noise), noise_site, sigma, int(seed), recovery_of,
                       seq, corrupt_seq, noise_t)
    _run_clean(setup)
    _run_corrupt(setup)
    return setup


def _cache_names(model, states: bool) -> list[str]:
    L = model.cfg.n_layer
    names = []
    for l in range(L):
        b = f"blocks.{l}."
        names += [b + "hook_resid_pre", b + "hook_resid_mid", b + "hook_resid_post", b + "att.hook_out",
                  b + "ffn.hook_out"]
        if states:
            names += [b + "att.hook_shift", b + "att.hook_state", b + "ffn.hook_shift"]
    if model.cfg.version == "7":
        names.append("blocks.0.att.hook_v")
    return names


def _stack_cache(model, cache, states: bool) -> dict[str, torch.Tensor]:
    """Hook caches stacked over layers: resid_pre/mid/post, att/ffn out [L, B, S, C], v_first [B, S, C];
    states after every token att_shift/ffn_shift [L, B, P, C], wkv [L, B, P, ...]."""
    L = model.cfg.n_layer
    out = {}
    for key, name in (("resid_pre", "hook_resid_pre"), ("resid_mid", "hook_resid_mid"),
                      ("resid_post", "hook_resid_post"), ("att_out", "att.hook_out"), ("ffn_out", "ffn.hook_out")):
        out[key] = torch.stack([cache[f"blocks.{l}.{name}"] for l in range(L)])
    if states:
        for key, name in (("att_shift", "att.hook_shift"), ("wkv", "att.hook_state"), ("ffn_shift", "ffn.hook_shift")):
            out[key] = torch.stack([cache[f"blocks.{l}.{name}"] for l in range(L)])
    if model.cfg.version == "7":
        out["v_first"] = cache["blocks.0.att.hook_v"]
    return out


def _noise_hook(setup: TraceSetup, rows: slice) -> Optional[tuple[str, Callable]]:
    if setup.noise_tensor is None:
        return None
    s0, s1 = setup.subject
    noise = setup.noise_tensor

    def add_noise(x, hook):
        x = x.clone()
        x[rows, s0:s1] = x[rows, s0:s1] + noise
        return x

    return NOISE_SITES[setup.noise_site], add_noise


def _run_clean(setup: TraceSetup) -> None:
    model = setup.model
    _, _, cache = model.run_with_cache(setup.seq, _cache_names(model, True), device=None,
                                       state_positions=range(setup.T), logits="none")
    c = _stack_cache(model, cache, True)
    c = {k: v[:, 0] if v.dim() >= 4 and k != "v_first" else v[0] for k, v in c.items()}  # drop the batch axis
    setup.clean_cache = c  # resid_pre ... [L, S, C]; att_shift [L, T, C]; wkv [L, T, ...]; v_first [S, C]
    logits = model.unembed(c["resid_post"][-1][setup.answer_positions])[None]  # [1, K, V]
    setup.clean = setup.metrics_from_logits(logits, 1)[0]
    top = torch.softmax(logits[0, 0].double(), -1)
    i = int(top.argmax())
    setup.clean_top = (i, float(top[i]))
    if i != setup.answer_ids[0]:
        setup.warnings.append(
            f"the clean model's greedy prediction after the prompt is {setup.tokenizer.display(i)!r} (p = {top[i]:.3g}), "
            f"not the answer's first token {setup.tokenizer.display(setup.answer_ids[0])!r} (p = "
            f"{top[setup.answer_ids[0]]:.3g}); ROME would skip this case")


def _run_corrupt(setup: TraceSetup) -> None:
    model = setup.model
    n = setup.n
    tokens = setup.corrupt_seq[None].expand(n, -1)
    hooks = [h for h in [_noise_hook(setup, slice(None))] if h]
    with model.hooks(hooks):
        _, _, cache = model.run_with_cache(tokens, _cache_names(model, False), device=None, logits="none")
    c = _stack_cache(model, cache, False)  # [L, n, S, C]
    setup.corrupt_cache = c
    logits = model.unembed(c["resid_post"][-1][:, setup.answer_positions])  # [n, K, V]
    setup.corrupt_cache["logits"] = logits
    setup.corrupt = setup.metrics_from_logits(logits, n)[0]
    base = setup.recovery_base()
    if abs(setup.clean[base] - setup.corrupt[base]) < 1e-9:
        setup.warnings.append(f"the corruption does not change the {base} of the answer: nothing to trace "
                              "(recovery is undefined)")
