"""Causal tracing and layer ablation for RWKV: where does a prompt's subject reach the answer, up the layers at one
token or forward in time through the recurrent state?

Method (ROME's causal tracing, Meng et al. 2022, adapted to a recurrent model; ../shared/docs/tracing-and-decay.md):

1. Clean run: the prompt plus the answer tokens, teacher-forced. The metric is the answer's log-probability summed
   over its tokens (the first answer token is predicted at the prompt's last token).
2. Corrupted run: Gaussian noise added to the subject tokens' input to block 0 (`noise_site="resid_pre"`, the hook
   `blocks.0.hook_resid_pre`, i.e. after ln0: the default, because RWKV renormalises its small-init embedding with
   ln0 at once; `noise_site="embed"` adds it to the raw embedding `hook_embed` as ROME does). The noise has standard
   deviation `noise * sigma`, where sigma is the standard deviation of *all entries* of that tensor over every row
   of the vocabulary (`emb.weight` for "embed", `ln0(emb.weight)` for "resid_pre"; `emb.weight` itself for models
   without ln0), computed once per model (`noise_sigma`). `samples` draws from `torch.Generator().manual_seed(seed)`,
   generated once, so every cell sees the same noise. Or subject replacement (STR): another subject string with the
   same number of tokens, one deterministic corrupted run.
3. For every prompt token t and layer l, the corrupted run again with something of the clean run restored at t:
   - kind "block", mode "resid": the residual stream after block l (`blocks.{l}.hook_resid_post`) at token t;
   - kind "block", mode "state": layer l's recurrent state after token t (`att.hook_shift`, `att.hook_state`,
     `ffn.hook_shift` at pos t), which reaches only later tokens;
   - kind "block", mode "both" (default): both of the above;
   - kind "att" / "ffn": the time-mix / channel-mix output (`att.hook_out` / `ffn.hook_out`) at token t in every
     layer of ROME's window around l: range(max(0, l - w // 2), min(L, l - (-w // 2))).
   RWKV-7 feeds layer 0's value v_first[t] to every layer. With `restore_v_first` (default on, v7 kind "block",
   modes "resid" and "both") v_first at token t is restored in the layers *above* l (`blocks.{l'}.att.hook_v_first`,
   l' > l), the layers that read it after the restored residual; mode "state" restores nothing at token t itself,
   and the att/ffn windows restore the module outputs only, as in ROME.
4. Metrics per cell, samples aggregated as ROME does (mean of probabilities):
   prob = mean over samples of p(answer) (the product of the answer tokens' probabilities);
   logprob = log(prob); first_prob = mean of p(first answer token); logit_diff = mean of
   logit(answer[0]) - logit(answer2[0]) at the prompt's last token (first tokens; NaN without a second answer);
   recovery = (m - m_corrupt) / (m_clean - m_corrupt) of `recovery_of` ("auto": logit_diff when a second answer is
   given, else prob).

Two implementations give the same numbers:
- the reference path (`method="reference"`): one ordinary forward pass per cell over the whole sequence, ROME style:
  batch row 0 is the clean run, rows 1..n the corrupted ones, hooks copy row 0 into the other rows;
- the fast path (`method="fast"`, default): the clean and corrupted runs are computed once and cached (every layer's
  input, output and module outputs; the clean run's states after every prompt token; the corrupted run's states
  advanced token by token). A restore at token t changes nothing before t and nothing in the layers below the
  restored one, so each cell starts from the corrupted state after token t-1 and runs only the layers that change
  (from l+1 for "resid" and "both" (plus layer l itself over tokens t+1.. from its clean state), from l for "state"
  over tokens t+1..; from the window's first layer for "att", from the layer after it for "ffn", whose first window
  layer changes only its output at t) over tokens t..end. Cells join one batch layer by layer (samples x cells
  along the batch axis, within `memory_budget` bytes); window cells with the same first layer share rows until their
  windows differ. Cells at tokens before the subject are exactly the corrupted run (nothing differs there) and are
  filled without a forward pass (`skip_unaffected`). Agreement with the reference: float32 rounding (~1e-6).

Stopping: `should_stop` (a callable returning True, or a `threading.Event`) is checked between batches; when it
fires the result comes back with `complete=False` and NaN in the cells not computed (no exception).

Layer ablation (`ablate_layers`, noising): the clean run with layer l's time-mix, channel-mix or whole-block
output replaced by zero, by its mean over a reference text, or by the corrupted run's value, or layer l's WKV state
reset at one token; the change of every metric at the answer, per layer.

No Streamlit here. CLI: `add_trace_arguments` / `trace_cli` (`python -m rwkv_core trace ...`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from rwkv_core.errors import InputError
from rwkv_core.io.tokenizer import DIGITS_ALPHABET, CharTokenizer, Encoding, Tokenizer, tokenizer_for_vocab

METRICS = ("prob", "logprob", "first_prob", "logit_diff", "recovery")
MODES = ("resid", "state", "both")
KINDS = ("block", "att", "ffn")
NOISE_SITES = {"resid_pre": "blocks.0.hook_resid_pre", "embed": "hook_embed"}
ABLATION_TARGETS = ("block", "att", "ffn", "state")
ABLATION_REPLACEMENTS = ("zero", "mean", "corrupt", "clean")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per batch of cells (CPU default)

ProgressFn = Callable[[int, int], None]
StopFn = Union[Callable[[], bool], threading.Event, None]


# ------------------------------------------------------------------------------------------------ tokenizers

REVERSE_DIGITS_ALPHABET = DIGITS_ALPHABET  # 260123_reverse_L2_only_rwkv7.pth: '0'-'9' -> 0-9, ',' -> 10, '#' -> 11


def reverse_digits_tokenizer() -> CharTokenizer:
    """The vocabulary of BlinkDL's reverse-digits RWKV-7 task model: '0'-'9' -> 0-9, ',' -> 10, '#' -> 11."""
    return CharTokenizer(REVERSE_DIGITS_ALPHABET)  # kind "digits"; "chars" is accepted as another name


def tokenizer_for_model(model, *, kind: Optional[str] = None, path: Optional[str] = None,
                        utf16: bool = False) -> Tokenizer:
    """The tokenizer for a loaded model: the reverse-digits character tokenizer for a 12-row v7 model (or
    kind="chars"), otherwise `rwkv_core.tokenizer.tokenizer_for_vocab` (bytes for 256 rows, World for 65536, a
    Hugging Face file from `path` otherwise)."""
    cfg = model.cfg
    if kind == "chars" or (kind is None and path is None and cfg.vocab_size == len(REVERSE_DIGITS_ALPHABET)):
        return reverse_digits_tokenizer()
    return tokenizer_for_vocab(cfg.vocab_size, kind=kind, path=path, utf16=utf16)


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


@contextlib.contextmanager
def _attached(model, hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Attach hook functions by exact hook-point name (no regex), always removed afterwards."""
    done = []
    try:
        for name, fn in hooks:
            hp = model.hook_points[name]
            hp.add(fn)
            done.append((hp, fn))
        yield
    finally:
        for hp, fn in done:
            hp.remove(fn)


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
        if not alt_subject:
            raise InputError("subject replacement needs an alternative subject")
        cs, ce = chars
        alt_enc = tokenizer.encode(prompt[:cs] + alt_subject + prompt[ce:])
        same_len = len(alt_enc) == len(enc)
        alt_span = alt_enc.tokens_in_char_span(cs, cs + len(alt_subject)) if same_len else None
        if not same_len or alt_span != (s0, s1) or alt_enc.ids[:s0] != enc.ids[:s0] or alt_enc.ids[s1:] != enc.ids[s1:]:
            raise InputError(f"the alternative subject {alt_subject!r} must replace the subject's {s1 - s0} token(s) "
                             "in place (same number of tokens, the rest of the prompt tokenised the same)")
        alt_ids = list(alt_enc.ids)
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
    with _attached(model, hooks):
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


# ------------------------------------------------------------------------------------------------ result


@dataclass
class TraceResult:
    """One causal-tracing grid: every metric per (prompt token, layer), baselines and settings.

    grids[m] [T, L]; clean[m] / corrupt[m] baselines; `metric` the chosen one (`grid`); `subject` (start, end)
    token indices, end exclusive; `complete` False when stopped early (NaN in the cells not computed).
    """

    grids: dict[str, np.ndarray]
    clean: dict[str, float]
    corrupt: dict[str, float]
    metric: str
    tokens: list[int]
    token_labels: list[str]
    subject: tuple[int, int]
    answer_label: str
    kind: str
    mode: str
    window: int
    settings: dict
    complete: bool = True
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def grid(self) -> np.ndarray:
        return self.grids[self.metric]

    @property
    def clean_value(self) -> float:
        return self.clean[self.metric]

    @property
    def corrupt_value(self) -> float:
        return self.corrupt[self.metric]

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def with_metric(self, metric: str) -> "TraceResult":
        if metric not in self.grids:
            raise InputError(f"unknown metric {metric!r}; expected one of {', '.join(self.grids)}")
        from dataclasses import replace
        return replace(self, metric=metric)

    def to_npz(self, path) -> None:
        """Keys: grid [T, L] (the chosen metric), clean, corrupt, metric, tokens [T], subject (2,), grid_<m> and
        clean_<m> / corrupt_<m> for every metric, token_labels, answer, kind, mode, window, complete, and
        settings (a JSON string)."""
        arrays = {"grid": self.grid, "clean": np.float64(self.clean_value), "corrupt": np.float64(self.corrupt_value),
                  "metric": np.str_(self.metric), "tokens": np.asarray(self.tokens, dtype=np.int64),
                  "subject": np.asarray(self.subject, dtype=np.int64),
                  "token_labels": np.asarray(self.token_labels, dtype=np.str_), "answer": np.str_(self.answer_label),
                  "kind": np.str_(self.kind), "mode": np.str_(self.mode), "window": np.int64(self.window),
                  "complete": np.bool_(self.complete), "settings": np.str_(json.dumps(self.settings)),
                  "warnings": np.str_(json.dumps(self.warnings)), "seconds": np.float64(self.seconds)}
        for m, g in self.grids.items():
            arrays[f"grid_{m}"] = g
            arrays[f"clean_{m}"] = np.float64(self.clean[m])
            arrays[f"corrupt_{m}"] = np.float64(self.corrupt[m])
        np.savez(path, **arrays)

    @classmethod
    def from_npz(cls, path) -> "TraceResult":
        with np.load(path, allow_pickle=False) as z:
            metrics = [k[5:] for k in z.files if k.startswith("grid_")]
            return cls(grids={m: z[f"grid_{m}"] for m in metrics},
                       clean={m: float(z[f"clean_{m}"]) for m in metrics},
                       corrupt={m: float(z[f"corrupt_{m}"]) for m in metrics}, metric=str(z["metric"]),
                       tokens=[int(t) for t in z["tokens"]], token_labels=[str(s) for s in z["token_labels"]],
                       subject=(int(z["subject"][0]), int(z["subject"][1])), answer_label=str(z["answer"]),
                       kind=str(z["kind"]), mode=str(z["mode"]), window=int(z["window"]),
                       settings=json.loads(str(z["settings"])), complete=bool(z["complete"]),
                       warnings=json.loads(str(z["warnings"])), seconds=float(z["seconds"]))

    def to_csv(self) -> str:
        """The chosen grid as CSV: one row per token (index, label, subject flag), one column per layer (from 1)."""
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        T, L = self.grid.shape
        w.writerow(["token_index", "token", "subject"] + [f"layer_{l + 1}" for l in range(L)])
        s0, s1 = self.subject
        for t in range(T):
            w.writerow([t, self.token_labels[t], int(s0 <= t < s1)] + [repr(float(v)) for v in self.grid[t]])
        return buf.getvalue()


@dataclass
class TraceSpec:
    """What one grid restores: kind "block" with a mode, or a window of att / ffn outputs."""

    kind: str = "block"
    mode: str = "both"
    window: int = 10
    restore_v_first: bool = True

    def check(self, n_layer: int) -> "TraceSpec":
        if self.kind not in KINDS:
            raise InputError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if int(self.window) < 1:
            raise InputError("the window must be at least 1 layer")
        return self

    def label(self) -> str:
        return f"block/{self.mode}" if self.kind == "block" else f"{self.kind} window {self.window}"


# ------------------------------------------------------------------------------------------------ fast path


@dataclass
class _Cell:
    """One cell's rows in a fast batch: they join the batch at layer `join` with input x [n, Tseg, C]."""

    layer: int
    join: int
    x: Optional[torch.Tensor]
    vf: Optional[torch.Tensor] = None  # [n, Tseg, C] v7 v_first for the layers from `join` on
    state: Optional[tuple] = None  # state of layer `join` at the segment start (replaces the corrupted one)
    patch: frozenset = frozenset()  # layers whose att/ffn output at the segment's first token is restored


class _FastTracer:
    """The fast path: cached clean/corrupted runs, corrupted states advanced token by token, cells batched."""

    def __init__(self, setup: TraceSetup, memory_budget: int):
        self.s = setup
        self.model = setup.model
        cfg = self.model.cfg
        self.L, self.C, self.n = cfg.n_layer, cfg.n_embd, setup.n
        self.v7 = cfg.version == "7"
        cc = setup.corrupt_cache
        # layer inputs of the corrupted run: xin[i] for i < L is block i's input (block 0: after ln0 and the
        # noise), xin[L] the last block's output
        self.xin = list(cc["resid_pre"]) + [cc["resid_post"][-1]]  # L+1 x [n, S, C]
        per_row_token = 4 * (30 * self.C + 4 * cfg.dim_ffn)
        state_bytes = 4 * (2 * self.C + (3 * self.C if cfg.version == "4" else cfg.n_head * cfg.head_size ** 2))
        self.per_row = lambda Tseg: per_row_token * max(Tseg, 1) + 3 * state_bytes
        self.budget = memory_budget
        self._state_pos = -1  # corrupted states are those after token _state_pos
        self._states = [self._zero_layer_state(l) for l in range(self.L)]
        self._hist = {-1: self._states}

    # -------------------------------------------------------------- states

    def _zero_layer_state(self, l: int) -> tuple:
        z = self.model.zero_state(self.n)
        return z.att_shift[l], z.wkv[l], z.ffn_shift[l]

    def _block(self, i: int, x, state: tuple, vf, patch: Optional[tuple] = None, need_state: bool = True):
        """Block i on x [B, Tseg, C] (block 0: x is its input after ln0, forced through hook_resid_pre).
        The WKV state may be shared by groups of rows (fewer rows than x, see `wkv`); need_state=False when the
        state after the segment is not used (the kernel then skips forming it)."""
        model = self.model
        hooks = []
        if i == 0:
            hooks.append(("blocks.0.hook_resid_pre", lambda t, h: x))
        if patch is not None:
            hooks.append(patch)
        with _attached(model, hooks):
            y, a, s, f, vf = model.blocks[i](x, state[0], state[1], state[2], vf, (), True, need_state)
        return y, (a, s, f), vf

    def corrupt_states_after(self, p: int) -> list[tuple]:
        """The corrupted run's state of every layer after token p (p = -1: the zero state), advanced one token at a
        time from the cached layer inputs, so that each layer's state is consistent with the cached activations.
        The last two positions are kept (a grid asks for t - 1 and t while it works on token t)."""
        if p in self._hist:
            return self._hist[p]
        if p < self._state_pos:
            self._state_pos, self._states = -1, [self._zero_layer_state(l) for l in range(self.L)]
            self._hist = {-1: self._states}
        vfc = self.s.corrupt_cache.get("v_first")
        while self._state_pos < p:
            q = self._state_pos + 1
            new = []
            for i in range(self.L):
                vf = vfc[:, q:q + 1] if (self.v7 and i > 0) else None
                _, st, _ = self._block(i, self.xin[i][:, q:q + 1], self._states[i], vf)
                new.append(st)
            self._states, self._state_pos = new, q
            self._hist = {k: v for k, v in self._hist.items() if k >= q - 1}
            self._hist[q] = new
        return self._states

    def clean_state(self, l: int, t: int) -> tuple:
        c = self.s.clean_cache
        n = self.n
        return (c["att_shift"][l, t].expand(n, -1).clone(), c["wkv"][l, t][None],  # WKV: one row, shared
                c["ffn_shift"][l, t].expand(n, -1).clone())

    # -------------------------------------------------------------- cells

    def cells(self, spec: TraceSpec, t: int) -> tuple[int, list[_Cell]]:
        """Segment start and the cells of token t (x filled in lazily by `_materialise`)."""
        L = self.L
        if spec.kind == "block":
            if spec.mode == "state":
                return t + 1, [_Cell(l, l, None) for l in range(L)]
            return t, [_Cell(l, l + 1, None) for l in range(L)]
        cells = []
        for l in range(L):
            win = window_layers(l, L, spec.window)
            if spec.kind == "ffn":  # layer win[0] differs from the corrupted run only in its output at token t
                cells.append(_Cell(l, win[0] + 1, None, patch=frozenset(win[1:])))
            else:
                cells.append(_Cell(l, win[0], None, patch=frozenset(win)))
        return t, cells

    def _materialise(self, spec: TraceSpec, t: int, seg0: int, cell: _Cell) -> None:
        s, n, l = self.s, self.n, cell.layer
        cc, clc = s.corrupt_cache, s.clean_cache
        vfc = cc.get("v_first")
        clean_vf_restore = self.v7 and spec.kind == "block" and spec.restore_v_first
        if spec.kind == "block" and spec.mode == "state":
            cell.x = self.xin[l][:, seg0:]
            cell.state = self.clean_state(l, t)
            cell.vf = vfc[:, seg0:] if (self.v7 and l > 0) else None
            return
        if spec.kind == "block":
            top = clc["resid_post"][l, t].expand(n, 1, -1)  # [n, 1, C] the clean residual after block l at t
            vf = None
            if self.v7:
                vf_t = clc["v_first"][t].expand(n, 1, -1) if clean_vf_restore else vfc[:, t:t + 1]
                vf = torch.cat([vf_t, vfc[:, t + 1:]], 1)
            if spec.mode == "resid" or t + 1 >= s.S:
                rest = self.xin[l + 1][:, t + 1:]
            else:  # both: layer l runs tokens t+1.. from its clean state after t
                vf_side = vfc[:, t + 1:] if (self.v7 and l > 0) else None
                rest, _, vf_out = self._block(l, self.xin[l][:, t + 1:], self.clean_state(l, t), vf_side,
                                              need_state=False)
                if self.v7 and l == 0:
                    vf = torch.cat([vf[:, :1], vf_out], 1)
            cell.x = torch.cat([top, rest], 1)
            cell.vf = vf
            return
        a = cell.join
        cell.x = self.xin[a][:, t:]
        if spec.kind == "ffn":  # the layer below: corrupted until its channel-mix output at t, then the clean one
            cell.x = cell.x.clone()
            cell.x[:, 0] = cc["resid_mid"][a - 1][:, t] + clc["ffn_out"][a - 1, t]
        cell.vf = vfc[:, t:] if (self.v7 and a > 0) else None

    def run_cells(self, spec: TraceSpec, t: int, seg0: int, cells: list[_Cell], base: list[tuple]) -> torch.Tensor:
        """Stream the cells' rows up the layers; returns logits at the answer positions [len(cells) * n, K, V].

        Rows come in groups of n (one per noise sample). Window cells that join at the same layer have the same
        input and share one group until their windows differ (a group forks, rows copied, at the first layer
        where some of its cells restore and others do not); every block cell has its own group.
        """
        s, n, L = self.s, self.n, self.L
        Tseg = s.S - seg0
        ans_pos = s.answer_positions
        by_join: dict[int, list[_Cell]] = {}
        for c in cells:
            by_join.setdefault(c.join, []).append(c)
        x = vf = None
        groups: list[list[_Cell]] = []
        if Tseg > 0:
            for i in range(L + 1):
                joining = by_join.get(i, [])
                if joining:
                    new = [[c] for c in joining] if spec.kind == "block" else [joining]
                    for g in new:
                        self._materialise(spec, t, seg0, g[0])
                    x = torch.cat(([x] if x is not None else []) + [g[0].x for g in new], 0)
                    if self.v7 and i > 0:
                        vf = torch.cat(([vf] if vf is not None else []) + [g[0].vf for g in new], 0)
                    for g in new:
                        g[0].x = g[0].vf = None
                    groups += new
                if i == L or x is None:
                    continue
                split, src = [], []
                for j, g in enumerate(groups):
                    for part in ([c for c in g if i not in c.patch], [c for c in g if i in c.patch]):
                        if part:
                            split.append(part)
                            src.append(j)
                if len(split) != len(groups):  # fork: copy the shared rows
                    idx = torch.tensor([j * n + r for j in src for r in range(n)], device=x.device)
                    x = x[idx]
                    vf = vf[idx] if vf is not None else None
                groups = split
                if any(g[0].join == i and g[0].state is not None for g in groups):
                    st = [_rep(part, len(groups)) for part in base[i]]
                else:  # every group starts from the corrupted WKV state: shared, not copied (see `wkv`)
                    st = [_rep(base[i][0], len(groups)), base[i][1], _rep(base[i][2], len(groups))]
                for j, g in enumerate(groups):
                    c = g[0]
                    if c.join == i and c.state is not None:
                        for part, val in zip(st, c.state):
                            part[j * n:(j + 1) * n] = val
                        c.state = None
                patch = None
                rows = [j * n + r for j, g in enumerate(groups) if i in g[0].patch for r in range(n)]
                if rows:
                    name = f"blocks.{i}.{spec.kind}.hook_out"
                    clean_out = s.clean_cache[f"{spec.kind}_out"][i, t]
                    idx = torch.tensor(rows, device=x.device)

                    def restore_out(o, hook, idx=idx, clean_out=clean_out):
                        o = o.clone()
                        o[idx, 0] = clean_out
                        return o

                    patch = (name, restore_out)
                x, _, vf = self._block(i, x, st, vf, patch, need_state=False)
        # logits at the answer positions: computed ones from the segment, earlier ones from the corrupted run
        order = {id(c): j for j, g in enumerate(groups) for c in g}
        rel = [p - seg0 for p in ans_pos if p >= seg0]
        pre = [q for q, p in enumerate(ans_pos) if p < seg0]
        out = torch.empty(len(cells) * n, len(ans_pos), self.model.cfg.vocab_size, device=self.model.device)
        lg = self.model.unembed(x[:, rel]) if (rel and x is not None) else None
        for ci, c in enumerate(cells):
            dst = slice(ci * n, (ci + 1) * n)
            if pre:
                out[dst, :len(pre)] = s.corrupt_cache["logits"][:, pre]
            if rel:
                j = order[id(c)]
                out[dst, len(pre):] = lg[j * n:(j + 1) * n]
        return out


# ------------------------------------------------------------------------------------------------ grids


def _empty_grids(T: int, L: int) -> dict[str, np.ndarray]:
    return {m: np.full((T, L), np.nan) for m in METRICS}


def _fill(grids, t: int, l: int, m: dict[str, float]) -> None:
    for k, v in m.items():
        grids[k][t, l] = v


def _finish(setup: TraceSetup, spec: TraceSpec, grids, metric: str, complete: bool, seconds: float,
            method: str) -> TraceResult:
    base = setup.recovery_base()
    den = setup.clean[base] - setup.corrupt[base]
    with np.errstate(divide="ignore", invalid="ignore"):
        grids["recovery"] = (grids[base] - setup.corrupt[base]) / den if den != 0 else np.full_like(grids[base], np.nan)
    clean, corrupt = dict(setup.clean), dict(setup.corrupt)
    clean["recovery"], corrupt["recovery"] = 1.0, 0.0
    settings = setup.settings()
    settings.update({"kind": spec.kind, "mode": spec.mode, "window": int(spec.window),
                     "restore_v_first": bool(spec.restore_v_first and setup.model.cfg.version == "7"),
                     "method": method, "metric": metric})
    return TraceResult(grids, clean, corrupt, metric, list(setup.encoding.ids), setup.token_labels, setup.subject,
                       setup.answer_text, spec.kind, spec.mode, int(spec.window), settings, complete,
                       list(setup.warnings), seconds)


def _run_cells_splitting(tracer: _FastTracer, setup: TraceSetup, spec: TraceSpec, t: int, seg0: int, batch: list,
                         base) -> list[tuple]:
    """(cell, metrics) for a batch of cells; on a GPU out of memory the batch is split in halves and retried, so a
    shared GPU under pressure slows a trace down instead of failing it. A single cell that does not fit is an error."""
    try:
        logits = tracer.run_cells(spec, t, seg0, batch, base)
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch) == 1:
            raise InputError("the GPU ran out of memory even for one traced cell: use a shorter prompt, fewer "
                             "noise samples or bf16 weights") from None
        half = len(batch) // 2
        return (_run_cells_splitting(tracer, setup, spec, t, seg0, batch[:half], base)
                + _run_cells_splitting(tracer, setup, spec, t, seg0, batch[half:], base))
    return list(zip(batch, setup.metrics_from_logits(logits, setup.n)))


def _cells_per_batch(tracer: _FastTracer, Tseg: int, L: int) -> int:
    return max(1, min(L, tracer.budget // max(1, tracer.per_row(Tseg) * tracer.n)))


@torch.no_grad()
def trace_grids(setup: TraceSetup, specs: Sequence[TraceSpec], *, metric: str = "prob", method: str = "fast",
                progress: Optional[ProgressFn] = None, should_stop: StopFn = None,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, skip_unaffected: bool = True) -> list[TraceResult]:
    """Every (token, layer) cell of each spec; one TraceResult per spec, sharing the cached runs.

    method "fast" (batched, prefix reuse) or "reference" (one full forward pass per cell, ROME style).
    progress(done, total) is called after every batch (cells); should_stop is checked between batches.
    memory_budget: bytes of activations per fast batch. skip_unaffected: cells at tokens before the subject are
    the corrupted run exactly (nothing differs before the subject) and are filled without a forward pass.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if method not in ("fast", "reference"):
        raise InputError(f"unknown method {method!r}; expected 'fast' or 'reference'")
    L, T = setup.model.cfg.n_layer, setup.T
    specs = [sp.check(L) for sp in specs]
    stop = _stop_check(should_stop)
    grids = [_empty_grids(T, L) for _ in specs]
    total, done = len(specs) * T * L, 0
    start = time.perf_counter()
    stopped = False
    s0 = setup.subject[0]

    def report(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)

    if method == "fast":
        tracer = _FastTracer(setup, memory_budget)
        for t in range(T):
            if stopped:
                break
            for si, spec in enumerate(specs):
                if stop():
                    stopped = True
                    break
                if skip_unaffected and t < s0:
                    for l in range(L):
                        _fill(grids[si], t, l, setup.corrupt)
                    report(L)
                    continue
                seg0, cells = tracer.cells(spec, t)
                if seg0 >= setup.S:  # a state restore after the last token changes nothing
                    for l in range(L):
                        _fill(grids[si], t, l, setup.corrupt)
                    report(L)
                    continue
                base = tracer.corrupt_states_after(seg0 - 1)
                per = _cells_per_batch(tracer, setup.S - seg0, L)
                for b in range(0, L, per):
                    if b > 0 and stop():
                        stopped = True
                        break
                    batch = cells[b:b + per]
                    for c, m in _run_cells_splitting(tracer, setup, spec, t, seg0, batch, base):
                        _fill(grids[si], t, c.layer, m)
                    report(len(batch))
                if stopped:
                    break
    else:
        for si, spec in enumerate(specs):
            for t in range(T):
                for l in range(L):
                    if stop():
                        stopped = True
                        break
                    _fill(grids[si], t, l, reference_cell(setup, spec, t, l))
                    report(1)
                if stopped:
                    break
            if stopped:
                break
    seconds = time.perf_counter() - start
    return [_finish(setup, sp, g, metric, not stopped, seconds, method) for sp, g in zip(specs, grids)]


@torch.no_grad()
def reference_cell(setup: TraceSetup, spec: TraceSpec, t: int, l: int) -> dict[str, float]:
    """One cell the slow, plainly correct way: a full forward pass of batch 1 + n (row 0 clean, rows 1..n
    corrupted) over the whole sequence, hooks copying row 0's restored values into the other rows."""
    model = setup.model
    L = model.cfg.n_layer
    n = setup.n
    tokens = torch.cat([setup.seq[None], setup.corrupt_seq[None].expand(n, -1)], 0)  # [1 + n, S]
    hooks = [h for h in [_noise_hook(setup, slice(1, None))] if h]

    def copy_seq(x, hook):
        x = x.clone()
        x[1:, t] = x[0, t]
        return x

    def copy_state(x, hook):
        if hook.pos != t:
            return None
        x = x.clone()
        x[1:] = x[0]
        return x

    positions: tuple[int, ...] = ()
    if spec.kind == "block":
        if spec.mode in ("state", "both"):
            positions = (t,)
            hooks += [(f"blocks.{l}.att.hook_shift", copy_state), (f"blocks.{l}.att.hook_state", copy_state),
                      (f"blocks.{l}.ffn.hook_shift", copy_state)]
        if spec.mode in ("resid", "both"):
            hooks.append((f"blocks.{l}.hook_resid_post", copy_seq))
            if spec.restore_v_first and model.cfg.version == "7":
                hooks += [(f"blocks.{j}.att.hook_v_first", copy_seq) for j in range(l + 1, L)]
    else:
        hooks += [(f"blocks.{j}.{spec.kind}.hook_out", copy_seq) for j in window_layers(l, L, spec.window)]
    final = {}
    hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, h: final.__setitem__("x", x)))
    with _attached(model, hooks):
        model(tokens, state_positions=positions, logits="none")
    logits = model.unembed(final["x"][1:, setup.answer_positions])
    return setup.metrics_from_logits(logits, n)[0]


def trace(model, tokenizer: Tokenizer, prompt: str, subject: Optional[str], answer, *, kind: str = "block",
          mode: str = "both", window: int = 10, restore_v_first: bool = True, metric: str = "prob",
          method: str = "fast", progress: Optional[ProgressFn] = None, should_stop: StopFn = None,
          memory_budget: int = DEFAULT_MEMORY_BUDGET, **prepare_kwargs) -> TraceResult:
    """One grid in one call: `prepare_trace(...)` then `trace_grids` for one spec."""
    setup = prepare_trace(model, tokenizer, prompt, subject, answer, **prepare_kwargs)
    spec = TraceSpec(kind, mode, window, restore_v_first)
    return trace_grids(setup, [spec], metric=metric, method=method, progress=progress, should_stop=should_stop,
                       memory_budget=memory_budget)[0]


# ------------------------------------------------------------------------------------------------ ablation


@dataclass
class AblationResult:
    """Change of every metric at the answer when layer l is ablated in the clean run: delta[m] [L] =
    ablated[m] - clean[m]."""

    target: str
    replacement: str
    ablated: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]
    clean: dict[str, float]
    positions: list[int]
    reset_token: Optional[int]
    answer_label: str

    def to_dict(self) -> dict:
        return {"target": self.target, "replacement": self.replacement, "positions": self.positions,
                "reset_token": self.reset_token, "clean": self.clean,
                "delta": {k: v.tolist() for k, v in self.delta.items()},
                "ablated": {k: v.tolist() for k, v in self.ablated.items()}}


@torch.no_grad()
def reference_means(model, reference_tokens: Sequence[int], states: bool = False) -> dict[str, torch.Tensor]:
    """Means over the tokens of a reference text (run from the zero state), accumulated on the fly: att/ffn outputs
    and the whole block's contribution (resid_post - resid_pre), [L, C]; with `states`, also of the states after
    every token (att_shift, wkv, ffn_shift per layer)."""
    ids = [int(i) for i in reference_tokens]
    if not ids:
        raise InputError("the reference text for mean ablation has no tokens")
    L = model.cfg.n_layer
    sums: dict[tuple[str, int], torch.Tensor] = {}

    def add(key: str, l: int, value: torch.Tensor) -> None:
        sums[(key, l)] = sums[(key, l)] + value if (key, l) in sums else value.clone()

    hooks = []
    for l in range(L):
        b = f"blocks.{l}."
        hooks += [(b + "att.hook_out", lambda x, h, l=l: add("att", l, x[0].sum(0))),
                  (b + "ffn.hook_out", lambda x, h, l=l: add("ffn", l, x[0].sum(0))),
                  (b + "hook_resid_pre", lambda x, h, l=l: add("pre", l, x[0].sum(0))),
                  (b + "hook_resid_post", lambda x, h, l=l: add("post", l, x[0].sum(0)))]
        if states:
            hooks += [(b + "att.hook_shift", lambda x, h, l=l: add("att_shift", l, x[0])),
                      (b + "att.hook_state", lambda x, h, l=l: add("wkv", l, x[0])),
                      (b + "ffn.hook_shift", lambda x, h, l=l: add("ffn_shift", l, x[0]))]
    with _attached(model, hooks):
        model(ids, state_positions=range(len(ids)) if states else (), logits="none")
    n = len(ids)
    mean = lambda key: torch.stack([sums[(key, l)] for l in range(L)]) / n
    out = {"att": mean("att"), "ffn": mean("ffn"), "block": mean("post") - mean("pre")}
    if states:
        out.update({k: mean(k) for k in ("att_shift", "wkv", "ffn_shift")})
    return out


@torch.no_grad()
def ablate_layers(setup: TraceSetup, target: str = "block", replacement: str = "zero", *,
                  reference_tokens: Optional[Sequence[int]] = None, positions: Optional[Sequence[int]] = None,
                  reset_token: Optional[int] = None, reset_shift: bool = False, method: str = "fast",
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> AblationResult:
    """Noising: the clean run with layer l ablated, for every layer l.

    target "att" / "ffn" / "block": replace that output (for "block" the block's whole contribution
    resid_post - resid_pre, i.e. time-mix + channel-mix + any constant residual bias) at `positions` (default: every
    token of the sequence, answer tokens included) by "zero", "mean" (over `reference_tokens`, run from the zero
    state), "corrupt" (the corrupted run's value, one row per noise sample) or "clean" (the clean value itself: a
    sanity check, the change is 0). target "state": layer l's state after `reset_token` (default: the subject's
    last token) replaced: "zero" resets the WKV state (zero; v4 the empty state aa = bb = 0, pp = -1e30), and also
    the token-shift states when `reset_shift`; "mean"/"corrupt"/"clean" use that value instead.
    method "fast": all layers in one batch (rows grouped by layer, within the memory budget); "reference": one pass
    per layer.
    """
    if target not in ABLATION_TARGETS:
        raise InputError(f"unknown ablation target {target!r}; expected one of {', '.join(ABLATION_TARGETS)}")
    if replacement not in ABLATION_REPLACEMENTS:
        raise InputError(f"unknown replacement {replacement!r}; expected one of {', '.join(ABLATION_REPLACEMENTS)}")
    model = setup.model
    cfg = model.cfg
    L, S = cfg.n_layer, setup.S
    means = None
    if replacement == "mean":
        if reference_tokens is None:
            raise InputError("mean ablation needs a reference text (its token ids)")
        means = reference_means(model, reference_tokens, states=target == "state")
    pos = list(range(S)) if positions is None else sorted({int(p) for p in positions})
    if not pos or pos[0] < 0 or pos[-1] >= S:
        raise InputError(f"ablation positions must lie in 0..{S - 1}")
    rt = setup.subject[1] - 1 if reset_token is None else int(reset_token)
    if target == "state" and not 0 <= rt < setup.T:
        raise InputError(f"the reset token must be a prompt token 0..{setup.T - 1}")
    g = setup.n if replacement == "corrupt" else 1  # rows per layer
    cc, clc = setup.corrupt_cache, setup.clean_cache
    pidx = torch.tensor(pos, device=model.device)
    corrupt_states = (_FastTracer(setup, memory_budget).corrupt_states_after(rt)
                      if target == "state" and replacement == "corrupt" else None)

    def seq_value(l: int) -> torch.Tensor:
        """Replacement of the sequence target at layer l: [g, len(pos), C] or broadcastable."""
        key = {"att": "att_out", "ffn": "ffn_out"}.get(target)
        if replacement == "zero":
            return torch.zeros(1, 1, cfg.n_embd, device=model.device)
        if replacement == "mean":
            return means[target][l].view(1, 1, -1)
        src = cc if replacement == "corrupt" else {k: v[:, None] for k, v in clc.items() if k in
                                                  ("att_out", "ffn_out", "resid_pre", "resid_post")}
        if key:
            return src[key][l][:, pidx]
        return (src["resid_post"][l] - src["resid_pre"][l])[:, pidx]

    def state_value(l: int) -> tuple:
        if replacement == "zero":
            z = model.zero_state(1)
            return (z.att_shift[l] if reset_shift else None, z.wkv[l], z.ffn_shift[l] if reset_shift else None)
        if replacement == "mean":
            return means["att_shift"][l][None], means["wkv"][l][None], means["ffn_shift"][l][None]
        if replacement == "clean":
            return tuple(clc[k][l, rt][None] for k in ("att_shift", "wkv", "ffn_shift"))
        return corrupt_states[l]

    def run(layers: list[int]) -> list[dict[str, float]]:
        k = len(layers)
        tokens = setup.seq[None].expand(k * g, -1)
        hooks = []
        for j, l in enumerate(layers):
            rows = slice(j * g, (j + 1) * g)
            if target in ("att", "ffn"):
                val = seq_value(l)

                def put(x, hook, rows=rows, val=val):
                    x = x.clone()
                    x[rows, pidx] = val.expand(g, len(pos), -1).to(x.dtype)
                    return x

                hooks.append((f"blocks.{l}.{target}.hook_out", put))
            elif target == "block":
                val = seq_value(l)
                pre = {}
                hooks.append((f"blocks.{l}.hook_resid_pre", lambda x, h, pre=pre: pre.__setitem__("x", x)))

                def put_block(x, hook, rows=rows, val=val, pre=pre):
                    x = x.clone()
                    x[rows, pidx] = pre["x"][rows][:, pidx] + val.expand(g, len(pos), -1)
                    return x

                hooks.append((f"blocks.{l}.hook_resid_post", put_block))
            else:
                vals = state_value(l)
                for name, v in zip(("att.hook_shift", "att.hook_state", "ffn.hook_shift"), vals):
                    if v is None:
                        continue

                    def put_state(x, hook, rows=rows, v=v):
                        if hook.pos != rt:
                            return None
                        x = x.clone()
                        x[rows] = v.expand(g, *x.shape[1:])
                        return x

                    hooks.append((f"blocks.{l}.{name}", put_state))
        final = {}
        hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, h: final.__setitem__("x", x)))
        with _attached(model, hooks):
            model(tokens, state_positions=(rt,) if target == "state" else (), logits="none")
        return setup.metrics_from_logits(model.unembed(final["x"][:, setup.answer_positions]), g)

    results: list[dict[str, float]] = []
    if method == "reference":
        for l in range(L):
            results += run([l])
    else:
        per_row = 4 * S * (30 * cfg.n_embd + 4 * cfg.dim_ffn)
        per = max(1, min(L, memory_budget // max(1, per_row * g)))
        for b in range(0, L, per):
            results += run(list(range(b, min(L, b + per))))
    metrics = [m for m in METRICS if m != "recovery"]
    ablated = {m: np.array([r[m] for r in results]) for m in metrics}
    delta = {m: ablated[m] - setup.clean[m] for m in metrics}
    return AblationResult(target, replacement, ablated, delta, {m: setup.clean[m] for m in metrics}, pos,
                          rt if target == "state" else None, setup.answer_text)


# ------------------------------------------------------------------------------------------------ CLI


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
                   help="tokenizer kind (bytes, bytes-utf16le, world, hf, chars) or a vocabulary/tokenizer file")
    p.add_argument("--utf16", action="store_true", help="byte models trained on UTF-16-LE (the tiny v6 models)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    return p


def trace_cli(args: argparse.Namespace) -> int:
    """Run `trace` from parsed arguments, write the npz, print a one-screen summary. Returns the exit code."""
    from rwkv_core.io.checkpoint import load_model
    from rwkv_core.io.tokenizer import KINDS as TOKENIZER_KINDS

    model = load_model(args.checkpoint, device=args.device)
    kind = path = None
    if args.tokenizer:
        if args.tokenizer in TOKENIZER_KINDS or args.tokenizer == "chars":
            kind = args.tokenizer
        else:
            path = args.tokenizer
    tok = tokenizer_for_model(model, kind=kind, path=path, utf16=args.utf16)
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
          f"max {res.grid[t_best, l_best]:.4g} at token {t_best} {res.token_labels[t_best]!r}, layer {l_best + 1}")
    for w in res.warnings:
        print("warning:", w)
    print(f"wrote {args.out} ({res.seconds:.1f} s)")
    return 0
