"""Two prompts for patching: a clean one and a corrupted one that differs in the fact ("The Eiffel Tower is in" /
"The Colosseum is in"), the clean answer and the corrupted one (the counter answer), their alignment, and both runs
computed once and cached (`prepare_pair`). The metric is the logit difference LD = logit(answer) -
logit(counter) at the last token, normalised so that the corrupted run is 0 and the clean run 1."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from rwkv_core.analysis.patching.alignment import Alignment, align
from rwkv_core.analysis.tracing.setup import RunWalk, zero_layer_states
from rwkv_core.errors import InputError
from rwkv_core.io.tokenizer import Encoding, Tokenizer
from rwkv_core.model.rwkv import _ln

SITES = ("resid", "att", "ffn", "state")
SITE_LABELS = {"resid": "residual stream (after block l)", "att": "time-mix output", "ffn": "channel-mix output",
               "state": "recurrent state after the token (WKV state and token shifts)"}
# hook point of an activation site in block l
SITE_HOOKS = {"resid": "hook_resid_post", "att": "att.hook_out", "ffn": "ffn.hook_out"}


def check_sites(sites, model=None) -> tuple[str, ...]:
    """The sites as a tuple, each one of SITES (one line naming a wrong one)."""
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",") if s.strip()]
    sites = tuple(sites)
    if not sites:
        raise InputError(f"choose at least one patching site of {', '.join(SITES)}")
    for s in sites:
        if s not in SITES:
            raise InputError(f"unknown patching site {s!r}; this model has {', '.join(SITES)}")
    return sites


def answer_tokens(tokenizer: Tokenizer, prompt: str, answer: str, what: str) -> list[int]:
    """The answer's token ids as they follow the prompt; an answer that does not start a token there (the prompt
    and the answer tokenised together merge across the boundary) is refused in one line."""
    if not answer:
        raise InputError(f"the {what} is empty: give the text that follows the prompt, e.g. ' Paris'")
    ids = list(tokenizer.encode(answer).ids)
    whole = list(tokenizer.encode(prompt + answer).ids)
    head = list(tokenizer.encode(prompt).ids)
    if whole[:len(head)] != head or whole[len(head):len(head) + 1] != ids[:1]:
        raise InputError(f"the {what} {answer!r} does not start a token after the prompt (the tokenizer merges it "
                         "with the prompt's end): move the shared characters into the prompt or the answer")
    return ids


@dataclass
class PatchPair:
    """A clean and a corrupted prompt with their answers, alignment and cached runs (built by `prepare_pair`).

    clean_ids / corrupt_ids: the prompts' tokens followed by the answers' shared start (teacher-forced), so LD is
    read at the last of them where the answers' first different tokens (answer_id, counter_id) are predicted.
    Caches (float32, model device): "resid" [L+1, T, C] (block l's input, block 0's after ln0; resid[L] the last
    output), "att_out" and "ffn_out" [L, T, C], v7's "v_first" [T, C].
    """

    model: Any
    tokenizer: Tokenizer
    clean_text: str
    corrupt_text: str
    clean_enc: Encoding
    corrupt_enc: Encoding
    answer_text: str
    counter_text: str
    shared: list[int]  # the answers' shared first tokens, appended to both prompts
    answer_id: int
    counter_id: int
    alignment: Alignment
    clean_ids: list[int] = field(default_factory=list)
    corrupt_ids: list[int] = field(default_factory=list)
    clean_value: float = 0.0
    corrupt_value: float = 0.0
    clean_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    corrupt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def Tc(self) -> int:
        return len(self.clean_ids)

    @property
    def Tr(self) -> int:
        return len(self.corrupt_ids)

    @property
    def first_difference(self) -> int:
        """How many leading tokens the two prompts share at the same, aligned positions: there both runs compute
        the same values, so every patch there gives the corrupted run (exact patching fills those cells)."""
        n, c2r = 0, self.alignment.clean_to_corrupt
        while n < min(self.Tc, self.Tr) and self.clean_ids[n] == self.corrupt_ids[n] and c2r[n] == n:
            n += 1
        return n

    def token_labels(self, which: str = "clean") -> list[str]:
        ids = self.clean_ids if which == "clean" else self.corrupt_ids
        return [self.tokenizer.display(i) for i in ids]

    def normalise(self, raw):
        """(LD - LD_corrupt) / (LD_clean - LD_corrupt): 0 = the corrupted run, 1 = the clean run."""
        return (raw - self.corrupt_value) / (self.clean_value - self.corrupt_value)

    def metric(self, final_resid: torch.Tensor) -> torch.Tensor:
        """LD from the last block's output at the last token, [..., C] -> [...] (differentiable): the two logits'
        difference as one product with the difference of their head rows, row by row (the same number for a row
        whatever the batch, so a patched cell that restores the clean run gives the clean value bit for bit)."""
        m = self.model
        W, b = m.head.weight, m.head.bias
        x = _ln(m.ln_out, final_resid).to(W.dtype).float()  # what `unembed` multiplies with the head
        out = (x * (W[self.answer_id].float() - W[self.counter_id].float())).sum(-1)
        return out if b is None else out + (b[self.answer_id] - b[self.counter_id]).float()

    def walk(self, run: str) -> RunWalk:
        """The run's per-layer states after any token, advanced from its cached layer inputs."""
        c = self.clean_cache if run == "clean" else self.corrupt_cache
        return RunWalk(self.model, c["resid"][:, None], c["v_first"][None] if "v_first" in c else None)

    def layer_states(self, run: str, l: int) -> list[tuple]:
        """Layer l's state after every token of the run (att_shift [1, C], wkv [1, ...], ffn_shift [1, C]),
        block l run again on its cached input with the state hooks firing at every token."""
        c = self.clean_cache if run == "clean" else self.corrupt_cache
        return block_states_after_every_token(self.model, l, c["resid"][l][None],
                                              c["v_first"][None] if ("v_first" in c and l > 0) else None)

    def settings(self) -> dict:
        cfg = self.model.cfg
        return {"clean": self.clean_text, "corrupt": self.corrupt_text, "answer": self.answer_text,
                "counter": self.counter_text, "answer_id": self.answer_id, "counter_id": self.counter_id,
                "shared_answer_start": self.shared, "alignment": self.alignment.to_json(),
                "first_difference": self.first_difference,
                "tokenizer": self.tokenizer.kind,
                "model": {"version": cfg.version, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                          "vocab_size": cfg.vocab_size, "file": getattr(self.model, "checkpoint_info", {}).get("file")}}


def block_states_after_every_token(model, l: int, x: torch.Tensor, vf: Optional[torch.Tensor]) -> list[tuple]:
    """Block l on its input x [1, T, C] from the zero state, its state kept after every token: T x (att_shift,
    wkv, ffn_shift), detached copies."""
    T = x.shape[1]
    got: dict[str, list] = {"a": [], "s": [], "f": []}
    keep = lambda k: (lambda t, h: got[k].append(t.detach().clone()))  # noqa: E731
    hooks = [(f"blocks.{l}.att.hook_shift", keep("a")), (f"blocks.{l}.att.hook_state", keep("s")),
             (f"blocks.{l}.ffn.hook_shift", keep("f"))]
    if l == 0:  # block 0's x is its input after ln0 (forced through hook_resid_pre)
        hooks.append(("blocks.0.hook_resid_pre", lambda t, h: x))
    state = zero_layer_states(model, 1)[l]
    with torch.no_grad(), model.hooks(hooks):
        model.blocks[l](x, *state, vf, tuple(range(T)), True, True)
    return list(zip(got["a"], got["s"], got["f"]))


def record_run(model, ids: list[int]) -> dict[str, torch.Tensor]:
    """One forward keeping every block's input and the last output (resid [L+1, T, C]), the time-mix and
    channel-mix outputs (att_out, ffn_out [L, T, C]) and v7's v_first [T, C]."""
    L = model.cfg.n_layer
    got: dict[str, Any] = {"resid": [None] * (L + 1), "att_out": [None] * L, "ffn_out": [None] * L}
    put = lambda k, i: (lambda t, h: got[k].__setitem__(i, t[0].detach()))  # noqa: E731
    hooks = [(f"blocks.{l}.hook_resid_pre", put("resid", l)) for l in range(L)]
    hooks += [(f"blocks.{L - 1}.hook_resid_post", put("resid", L))]
    hooks += [(f"blocks.{l}.att.hook_out", put("att_out", l)) for l in range(L)]
    hooks += [(f"blocks.{l}.ffn.hook_out", put("ffn_out", l)) for l in range(L)]
    if model.cfg.version == "7":
        hooks.append(("blocks.0.att.hook_v", lambda t, h: got.__setitem__("v_first", t[0].detach())))
    with torch.no_grad(), model.hooks(hooks):
        model(torch.tensor([ids], device=model.device), logits="none")
    return {k: (torch.stack(v) if isinstance(v, list) else v) for k, v in got.items()}


@torch.no_grad()
def prepare_pair(model, tokenizer: Tokenizer, clean: str, corrupt: str, answer: str, counter: str, *,
                 align_by: str = "end", clean_span: Optional[str] = None,
                 corrupt_span: Optional[str] = None) -> PatchPair:
    """Tokenise, check and align the two prompts, and run both once (see `PatchPair`).

    answer / counter: the clean and the corrupted answer as text that follows the prompts (" Paris" / " Rome");
    a shared start (the space of a byte-level model) is teacher-forced after both prompts and LD compares their
    first different tokens.
    """
    ce, re_ = tokenizer.encode(clean), tokenizer.encode(corrupt)
    if len(ce) == 0 or len(re_) == 0:
        raise InputError("both prompts must be non-empty: give a clean and a corrupted prompt")
    a_ids = answer_tokens(tokenizer, clean, answer, "answer")
    c_ids = answer_tokens(tokenizer, corrupt, counter, "counter answer")
    k = 0
    while k < min(len(a_ids), len(c_ids)) and a_ids[k] == c_ids[k]:
        k += 1
    if k == len(a_ids) or k == len(c_ids):
        raise InputError(f"the answer {answer!r} and the counter answer {counter!r} have no different token to "
                         "compare (one starts the other): give two answers that differ")
    shared = a_ids[:k]
    V = model.cfg.vocab_size
    for i in list(ce.ids) + list(re_.ids) + a_ids[:k + 1] + c_ids[:k + 1]:
        if not 0 <= i < V:
            raise InputError(f"token id {i} is outside the model's vocabulary of {V}")
    al = align(ce, re_, align_by, clean_span, corrupt_span, len(ce) + k, len(re_) + k)
    pair = PatchPair(model, tokenizer, clean, corrupt, ce, re_, answer, counter, shared, a_ids[k], c_ids[k], al,
                     list(ce.ids) + shared, list(re_.ids) + shared)
    pair.clean_cache = record_run(model, pair.clean_ids)
    pair.corrupt_cache = record_run(model, pair.corrupt_ids)
    pair.clean_value = float(pair.metric(pair.clean_cache["resid"][-1, -1]))
    pair.corrupt_value = float(pair.metric(pair.corrupt_cache["resid"][-1, -1]))
    if abs(pair.clean_value - pair.corrupt_value) < 1e-6:
        raise InputError("the two prompts give the same logit difference between the answers: nothing to patch "
                         "(choose prompts whose answers differ)")
    if pair.clean_value < pair.corrupt_value:
        pair.warnings.append(f"the clean prompt prefers the answer less than the corrupted one (LD {pair.clean_value:.3g}"
                             f" < {pair.corrupt_value:.3g}): the normalised scale runs the other way")
    return pair
