"""Causal tracing, the setup: a prompt tokenised, its subject located, the corruption drawn (noise or subject
replacement), and the clean and corrupted runs computed once and cached for any number of grids (`prepare_trace`):
only their layer inputs, from which `RunWalk` advances the states token by token; their size is `setup_bytes`.
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
from rwkv_core.model.config import ModelConfig

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


# ------------------------------------------------------------------------------------------------ memory, states

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per batch of rows or cells (CPU default)


def row_token_bytes(cfg: ModelConfig) -> int:
    """Estimated bytes of activations that one batch row holds per token in a forward of the model (float32:
    about 30 C + 4 F numbers), what batches of traced cells, ablated layers and corrupted rows are sized by."""
    return 4 * (30 * cfg.n_embd + 4 * cfg.dim_ffn)



def state_bytes(cfg: ModelConfig) -> int:
    """Bytes of one batch row's recurrent state in one layer, float32: both token shifts (2 C) and the WKV state
    (H x N x N; v4: aa, bb, pp, 3 C). What a restored or walked state row costs per layer."""
    wkv = 3 * cfg.n_embd if cfg.version == "4" else cfg.n_head * cfg.head_size ** 2
    return 4 * (2 * cfg.n_embd + wkv)


def setup_bytes(cfg: ModelConfig, T: int, K: int, n: int, *, subject_tokens: int = 0) -> int:
    """Bytes a TraceSetup's caches hold after `prepare_trace` (float32, = `TraceSetup.cache_bytes()`), so a caller
    can tell before tracing whether a prompt fits: T prompt tokens, K answer tokens (S = T + K - 1), n sample rows
    (1 for subject replacement). clean: resid [L+1, S, C] (+ v7 v_first [S, C]); corrupted: resid [L+1, n, S, C]
    (+ v7 v_first [n, S, C]) and logits [n, K, V]; the noise [n, subject_tokens, C] (0 for subject replacement)."""
    S, C = T + K - 1, cfg.n_embd
    per_row = (cfg.n_layer + 1 + (cfg.version == "7")) * S * C  # resid (+ v_first) of one batch row
    return 4 * ((1 + n) * per_row + n * K * cfg.vocab_size + n * subject_tokens * C)


# block i on x [B, Tseg, C] from a layer state (att_shift, wkv, ffn_shift), with extra hooks: (output, state, v_first)
BlockFn = Callable[..., tuple]

# values of a run that `RunWalk` and `TraceSetup.layer_values` recompute: key -> hook point in block l
RUN_VALUES = {"resid_mid": "hook_resid_mid", "att_out": "att.hook_out", "ffn_out": "ffn.hook_out"}


def run_block(model, i: int, x: torch.Tensor, state: tuple, vf: Optional[torch.Tensor], hooks: Sequence = (),
              need_state: bool = True) -> tuple:
    """Block i on x [B, Tseg, C] from `state` (att_shift, wkv, ffn_shift) with `hooks` attached; block 0's x is its
    input after ln0 (forced through hook_resid_pre). The WKV state may be shared by groups of rows (fewer rows
    than x, see `wkv`); need_state=False when the state after the segment is not used (the kernel then skips it).
    Returns (output [B, Tseg, C], state after the segment, v_first)."""
    if i == 0:
        hooks = [("blocks.0.hook_resid_pre", lambda t, h: x)] + list(hooks)
    with model.hooks(hooks):
        y, a, s, f, vf = model.blocks[i](x, state[0], state[1], state[2], vf, (), True, need_state)
    return y, (a, s, f), vf


def zero_layer_states(model, B: int) -> list[tuple]:
    """Every layer's zero state (att_shift [B, C], wkv [B, ...], ffn_shift [B, C]): what a run starts from."""
    z = model.zero_state(B)
    return [(z.att_shift[l], z.wkv[l], z.ffn_shift[l]) for l in range(model.cfg.n_layer)]


class RunWalk:
    """A cached run's per-layer states after token p, advanced one token at a time from its cached layer inputs,
    instead of keeping the states after every token (the clean run's WKV states alone were [L, T, H, N, N]).

    Each step runs every block on one token from its state before it, so a state is consistent with the cached
    activations; the steps also capture `values` (keys of RUN_VALUES) at that token, L x [B, C]. The last two
    positions are kept (a grid asks for t - 1 and t while it works on token t); an earlier one is recomputed from
    the zero state. resid [L+1, B, S, C], v_first [B, S, C] (v7) or None: `TraceSetup.run_inputs`.
    """

    def __init__(self, model, resid: torch.Tensor, v_first: Optional[torch.Tensor], values: Sequence[str] = (),
                 block: Optional[BlockFn] = None):
        self.model, self.resid, self.v_first = model, resid, v_first
        self.values = tuple(values)
        self.block = block if block is not None else (lambda *a, **kw: run_block(model, *a, **kw))
        self._reset()

    def _reset(self) -> None:
        self._pos = -1  # states are those after token _pos
        self._hist: dict[int, tuple[list[tuple], dict]] = {-1: (zero_layer_states(self.model, self.resid.shape[1]), {})}

    def _advance(self) -> None:
        q = self._pos + 1
        prev = self._hist[self._pos][0]
        vals: dict[str, list[torch.Tensor]] = {k: [] for k in self.values}
        states = []
        for i in range(len(prev)):
            hooks = [(f"blocks.{i}.{RUN_VALUES[k]}", lambda x, h, k=k: vals[k].append(x[:, 0])) for k in self.values]
            vf = self.v_first[:, q:q + 1] if (self.v_first is not None and i > 0) else None
            _, st, _ = self.block(i, self.resid[i][:, q:q + 1], prev[i], vf, hooks)
            states.append(st)
        self._hist = {k: v for k, v in self._hist.items() if k >= q - 1}
        self._hist[q] = (states, vals)
        self._pos = q

    def _at(self, p: int) -> tuple[list[tuple], dict]:
        if p not in self._hist:
            if p < self._pos:
                self._reset()
            while self._pos < p:
                self._advance()
        return self._hist[p]

    def states_after(self, p: int) -> list[tuple]:
        """Every layer's state (att_shift [B, C], wkv [B, ...], ffn_shift [B, C]) after token p (-1: zero)."""
        return self._at(p)[0]

    def values_at(self, q: int) -> dict[str, list[torch.Tensor]]:
        """The walk's `values` at token q, each L x [B, C] (the step that advances to the state after q)."""
        return self._at(q)[1]


# ------------------------------------------------------------------------------------------------ setup


@dataclass
class TraceSetup:
    """A tokenised prompt, its corruption, and the clean and corrupted runs, cached for any number of grids.

    Built by `prepare_trace`. Shapes: S = T + K - 1 tokens (prompt plus all but the last answer token), n sample
    rows of the corrupted run (1 for subject replacement), L layers, C channels.

    The caches keep only every block's input and the last block's output: clean_cache "resid" [L+1, S, C] (resid[l]
    is block l's input, block 0's after ln0, resid[l+1] its output) and v7's "v_first" [S, C]; corrupt_cache
    "resid" [L+1, n, S, C] (block 0's input with the noise), "v_first" [n, S, C] and "logits" at the answer
    positions [n, K, V]. What else a path reads is recomputed from them: the states after a token by `walk`
    (advanced a token at a time, not kept for every token) and a layer's module outputs over the sequence by
    `layer_values`. Their size: `setup_bytes`.
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

    def cache_bytes(self) -> int:
        """Bytes the cached runs hold (every tensor of clean_cache and corrupt_cache, and the noise): what
        `setup_bytes` predicts."""
        tensors = list(self.clean_cache.values()) + list(self.corrupt_cache.values())
        tensors += [self.noise_tensor] if self.noise_tensor is not None else []
        return sum(t.nelement() * t.element_size() for t in tensors)

    def run_inputs(self, run: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The cached layer inputs of the "clean" or "corrupt" run with a batch axis: resid [L+1, B, S, C] and v7's
        v_first [B, S, C] (None before v7); B = 1 clean, n corrupted."""
        if run == "clean":
            c = self.clean_cache
            return c["resid"][:, None], (c["v_first"][None] if "v_first" in c else None)
        return self.corrupt_cache["resid"], self.corrupt_cache.get("v_first")

    def walk(self, run: str, values: Sequence[str] = (), block: Optional[BlockFn] = None) -> "RunWalk":
        """The "clean" or "corrupt" run's states after any token (and `values` at it), advanced from its cached
        layer inputs (`RunWalk`)."""
        resid, vf = self.run_inputs(run)
        return RunWalk(self.model, resid, vf, values, block)

    def layer_values(self, run: str, l: int) -> dict[str, torch.Tensor]:
        """Layer l's resid_mid, att_out and ffn_out over the whole sequence of the "clean" or "corrupt" run,
        [B, S, C] each: block l run again on its cached input from the zero state, the same computation as in the
        run itself (the caches do not keep these; ablation reads them one layer at a time)."""
        resid, vf = self.run_inputs(run)
        vals: dict[str, torch.Tensor] = {}
        hooks = [(f"blocks.{l}.{name}", lambda x, h, k=k: vals.__setitem__(k, x)) for k, name in RUN_VALUES.items()]
        state = zero_layer_states(self.model, resid.shape[1])[l]
        run_block(self.model, l, resid[l], state, vf if l > 0 else None, hooks, need_state=False)
        return vals

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
                  recovery_of: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> TraceSetup:
    """Tokenise, corrupt and run the clean and corrupted passes once (see the module docstring).

    answer / answer2: text (tokenised on its own, so include a leading space where the vocabulary wants one, e.g.
    " Paris") or token ids. corruption: "noise" (Gaussian noise, `samples` draws of std `noise` x `noise_sigma`)
    or "replace" (subject replacement by `alt_subject`, which must tokenise to the same number of tokens in place).
    memory_budget: bytes of activations per forward pass; the corrupted run's rows go through in groups that fit
    (its caches, `setup_bytes`, come on top).
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
    _run_clean(setup, memory_budget)
    _run_corrupt(setup, memory_budget)
    return setup


def _noise_hook(setup: TraceSetup, rows: slice, samples: slice = slice(None)) -> Optional[tuple[str, Callable]]:
    """The hook that adds noise draws `samples` to the subject tokens of batch rows `rows` (None without noise)."""
    if setup.noise_tensor is None:
        return None
    s0, s1 = setup.subject
    noise = setup.noise_tensor[samples]  # [rows, subject tokens, C]

    def add_noise(x, hook):
        x = x.clone()
        x[rows, s0:s1] = x[rows, s0:s1] + noise
        return x

    return NOISE_SITES[setup.noise_site], add_noise


def _record_run(model, tokens: torch.Tensor, hooks_for: Callable[[slice], list],
                memory_budget: int) -> dict[str, torch.Tensor]:
    """A forward of tokens [B, S] keeping what the caches hold: every block's input and the last block's output,
    resid [L+1, B, S, C], and v7's v_first [B, S, C], written in place as the blocks run (no hook cache stacked into
    a second copy). Rows go through in groups whose activations fit `memory_budget` bytes (`row_token_bytes`), each
    with the hooks `hooks_for(rows)` (e.g. the noise) before the recording ones."""
    cfg = model.cfg
    L, (B, S) = cfg.n_layer, tokens.shape
    resid = torch.empty(L + 1, B, S, cfg.n_embd, device=model.device)  # [L+1, B, S, C]
    out = {"resid": resid}
    if cfg.version == "7":
        out["v_first"] = torch.empty(B, S, cfg.n_embd, device=model.device)  # [B, S, C]

    def keep(buf: torch.Tensor) -> Callable:
        def copy(x: torch.Tensor, hook) -> None:
            buf.copy_(x)
        return copy

    per = max(1, min(B, memory_budget // max(1, S * row_token_bytes(cfg))))
    for r0 in range(0, B, per):
        rows = slice(r0, min(B, r0 + per))
        hooks = list(hooks_for(rows)) + [(f"blocks.{l}.hook_resid_pre", keep(resid[l, rows])) for l in range(L)]
        hooks.append((f"blocks.{L - 1}.hook_resid_post", keep(resid[L, rows])))
        if "v_first" in out:
            hooks.append(("blocks.0.att.hook_v", keep(out["v_first"][rows])))
        with model.hooks(hooks):
            model(tokens[rows], logits="none")
    return out


def _run_clean(setup: TraceSetup, memory_budget: int) -> None:
    c = _record_run(setup.model, setup.seq[None], lambda rows: [], memory_budget)
    c = {k: v[:, 0] if k == "resid" else v[0] for k, v in c.items()}  # drop the batch axis
    setup.clean_cache = c  # resid [L+1, S, C]; v_first [S, C]
    logits = setup.model.unembed(c["resid"][-1][setup.answer_positions])[None]  # [1, K, V]
    setup.clean = setup.metrics_from_logits(logits, 1)[0]
    top = torch.softmax(logits[0, 0].double(), -1)
    i = int(top.argmax())
    setup.clean_top = (i, float(top[i]))
    if i != setup.answer_ids[0]:
        setup.warnings.append(
            f"the clean model's greedy prediction after the prompt is {setup.tokenizer.display(i)!r} (p = {top[i]:.3g}), "
            f"not the answer's first token {setup.tokenizer.display(setup.answer_ids[0])!r} (p = "
            f"{top[setup.answer_ids[0]]:.3g}); ROME would skip this case")


def _run_corrupt(setup: TraceSetup, memory_budget: int) -> None:
    n = setup.n
    tokens = setup.corrupt_seq[None].expand(n, -1)
    hooks_for = lambda rows: [h for h in [_noise_hook(setup, slice(None), rows)] if h]  # the rows' own draws
    c = _record_run(setup.model, tokens, hooks_for, memory_budget)  # resid [L+1, n, S, C]; v_first [n, S, C]
    logits = setup.model.unembed(c["resid"][-1][:, setup.answer_positions])  # [n, K, V]
    setup.corrupt_cache = {**c, "logits": logits}
    setup.corrupt = setup.metrics_from_logits(logits, n)[0]
    base = setup.recovery_base()
    if abs(setup.clean[base] - setup.corrupt[base]) < 1e-9:
        setup.warnings.append(f"the corruption does not change the {base} of the answer: nothing to trace "
                              "(recovery is undefined)")
