"""Causal tracing of a subset of the prompt's tokens: which rows of the grid to compute on a long prompt, and token
positions as a person types them.

A full grid costs one patched run per (token, layer) cell over the tokens from the cell's token to the end, so at
1,000 tokens and 12 layers it is ~12,000 cells per grid and days of CPU. Most of the picture is in a few rows
(ROME, Meng et al. 2022): the subject's tokens (where the fact is read), the first token after the subject, the
last token (where the answer is predicted), and a few rows in between (how the information travels). The other
rows are left NaN (`trace_grids(..., tokens=...)`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from rwkv_core.errors import InputError

DEFAULT_BETWEEN = 4  # rows evenly spaced between the subject's end and the last token


def propose_tokens(T: int, subject: tuple[int, int], n_between: int = DEFAULT_BETWEEN) -> list[int]:
    """The rows worth tracing on a long prompt of T tokens whose subject is tokens [s0, s1) (end exclusive):
    the subject's tokens, the first token after it, `n_between` tokens evenly spaced strictly between that one and
    the last token, and the last token, T - 1. Sorted, without repeats; every token when that is no more than the
    proposal would hold anyway (a short prompt). Tokens before the subject are not proposed: restoring them
    changes nothing (they are the corrupted run exactly)."""
    T, n_between = int(T), max(0, int(n_between))
    s0, s1 = int(subject[0]), int(subject[1])
    if T <= 0:
        return []
    if not 0 <= s0 < s1 <= T:
        raise InputError(f"the subject's tokens {s0}..{s1 - 1} are not within the prompt's {T} tokens")
    if T <= (s1 - s0) + n_between + 2:  # no more than the proposal holds: a short prompt, every token
        return list(range(T))
    picks = set(range(s0, s1)) | {T - 1}
    if s1 < T - 1:  # the first token after the subject, then n_between rows strictly between it and the last
        after = s1
        picks.add(after)
        gap = (T - 1) - after
        if gap - 1 <= n_between:
            picks.update(range(after + 1, T - 1))
        else:  # spacing gap / (n_between + 1) >= 1: the rounded rows are distinct and strictly inside
            picks.update(after + round(k * gap / (n_between + 1)) for k in range(1, n_between + 1))
    return sorted(picks)


def parse_positions(text: str, T: int, where: str = "the prompt") -> Optional[list[int]]:
    """Token positions as typed ("3, 7, 10-12"), sorted without repeats; None for an empty text (every token).
    InputError (one line) for a malformed list or a position outside 0..T-1."""
    text = (text or "").strip()
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise InputError(f"list token positions as numbers and ranges, e.g. 3, 7, 10-12, not {text!r}") from None
    bad = [t for t in out if not 0 <= t < T]
    if bad:
        raise InputError(f"token position {bad[0]} is outside {where} (positions 0 to {T - 1})")
    return sorted(set(out))


def format_positions(tokens: Sequence[int]) -> str:
    """Positions as `parse_positions` reads them, runs of consecutive ones as ranges: [3, 4, 5, 9] -> "3-5, 9"."""
    ts = sorted({int(t) for t in tokens})
    parts: list[str] = []
    i = 0
    while i < len(ts):
        j = i
        while j + 1 < len(ts) and ts[j + 1] == ts[j] + 1:
            j += 1
        parts.append(str(ts[i]) if j == i else f"{ts[i]}-{ts[j]}")
        i = j + 1
    return ", ".join(parts)


def check_tokens(tokens: Optional[Sequence[int]], T: int) -> Optional[list[int]]:
    """A subset of rows as `trace_grids` takes it: sorted, without repeats, each within 0..T-1 (InputError
    otherwise); None stays None (every token)."""
    if tokens is None:
        return None
    ts = sorted({int(t) for t in tokens})
    if not ts:
        raise InputError("the token subset is empty: list at least one token position")
    if ts[0] < 0 or ts[-1] >= T:
        bad = ts[0] if ts[0] < 0 else ts[-1]
        raise InputError(f"token position {bad} is outside the prompt (positions 0 to {T - 1})")
    return ts
