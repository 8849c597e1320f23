"""Which token of the corrupted prompt stands for each token of the clean prompt, when the two differ in length.

"end": the prompts are aligned from their last tokens (clean t <-> corrupted t - Tc + Tr). "spans": the user marks
one span in each prompt (e.g. the subject, "The Eiffel Tower" / "The Colosseum"); the tokens before the spans,
the spans themselves and the tokens after them are three segments, each aligned from its end, so the last span
token meets the last span token and the last prompt token the last prompt token. A clean token with no partner
(its segment is longer in the clean prompt) is not patched: its grid cells are NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from rwkv_core.errors import InputError
from rwkv_core.io.tokenizer import Encoding

ALIGNMENTS = ("end", "spans")


@dataclass(frozen=True)
class Alignment:
    """clean_to_corrupt[t] = the corrupted token aligned with clean token t, or -1 (none)."""

    how: str
    clean_to_corrupt: tuple[int, ...]
    n_corrupt: int
    clean_span: Optional[tuple[int, int]] = None  # token ranges, end exclusive ("spans" only)
    corrupt_span: Optional[tuple[int, int]] = None

    @property
    def n_clean(self) -> int:
        return len(self.clean_to_corrupt)

    def pairs(self) -> list[tuple[int, int]]:
        """(clean t, corrupted p) for every aligned clean token, in order (p increases with t)."""
        return [(t, p) for t, p in enumerate(self.clean_to_corrupt) if p >= 0]

    def corrupt_to_clean(self) -> np.ndarray:
        """[Tr] the clean token aligned with each corrupted token, or -1."""
        out = np.full(self.n_corrupt, -1, dtype=np.int64)
        for t, p in self.pairs():
            out[p] = t
        return out

    def to_json(self) -> dict:
        return {"how": self.how, "clean_to_corrupt": list(self.clean_to_corrupt), "n_corrupt": self.n_corrupt,
                "clean_span": list(self.clean_span) if self.clean_span else None,
                "corrupt_span": list(self.corrupt_span) if self.corrupt_span else None}


def _right_aligned(c0: int, c1: int, r0: int, r1: int, out: list[int]) -> None:
    """Align clean tokens c0..c1-1 with corrupted r0..r1-1 from their ends."""
    n = min(c1 - c0, r1 - r0)
    for k in range(1, n + 1):
        out[c1 - k] = r1 - k


def span_tokens(encoding: Encoding, span: str, which: str) -> tuple[int, int]:
    """Token range of the first occurrence of `span` in the prompt (the tokens holding its characters)."""
    if not span:
        raise InputError(f"align by spans needs a span in the {which} prompt (e.g. its subject)")
    cs = encoding.text.find(span)
    if cs < 0:
        raise InputError(f"the span {span!r} does not occur in the {which} prompt {encoding.text!r}")
    return encoding.tokens_in_char_span(cs, cs + len(span))


def align(clean: Encoding, corrupt: Encoding, how: str = "end", clean_span: Optional[str] = None,
          corrupt_span: Optional[str] = None, n_clean: Optional[int] = None,
          n_corrupt: Optional[int] = None) -> Alignment:
    """The alignment of two tokenised prompts ("end" or "spans", see the module docstring). n_clean / n_corrupt:
    the token counts when tokens follow the prompts (a shared start of the two answers), aligned with each other
    as the prompts' ends are."""
    if how not in ALIGNMENTS:
        raise InputError(f"unknown alignment {how!r}; expected one of {', '.join(ALIGNMENTS)}")
    Tc = len(clean) if n_clean is None else n_clean
    Tr = len(corrupt) if n_corrupt is None else n_corrupt
    out = [-1] * Tc
    if how == "end":
        _right_aligned(0, Tc, 0, Tr, out)
        return Alignment(how, tuple(out), Tr)
    cs = span_tokens(clean, clean_span or "", "clean")
    rs = span_tokens(corrupt, corrupt_span or "", "corrupted")
    if (cs[1] == len(clean)) != (rs[1] == len(corrupt)):
        raise InputError("the spans cannot be aligned: one ends its prompt and the other does not; mark spans that "
                         "both end the prompt or both stand before its last token")
    _right_aligned(0, cs[0], 0, rs[0], out)
    _right_aligned(cs[0], cs[1], rs[0], rs[1], out)
    _right_aligned(cs[1], Tc, rs[1], Tr, out)
    return Alignment(how, tuple(out), Tr, cs, rs)
