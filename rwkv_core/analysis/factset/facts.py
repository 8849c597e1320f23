"""A fact set: JSONL lines of {"prompt", "subject", "answer", optional "id"} read and checked line by line.

A line that cannot be traced (malformed JSON, a missing or empty field, a subject not in the prompt, an id given
twice) is kept as a `BadLine` with its one-line reason and skipped; the good lines go on. Ids name the per-fact
files, so they are made safe for a file name (the line number when none is given)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from rwkv_core.errors import InputError

MAX_FACTSET_BYTES = 8 * 2**20  # an uploaded fact set larger than this is refused (about 50,000 facts)
MAX_FACTS = 20_000
MAX_PROMPT_CHARS = 4_000
DEMO_FACTS_PATH = Path(__file__).resolve().parents[2] / "demo" / "data" / "facts-heldout.jsonl"
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class FactLine:
    """One fact to trace: `subject` occurs in `prompt` (its first occurrence is corrupted), `answer` follows it."""

    id: str  # safe as a file name
    prompt: str
    subject: str
    answer: str
    line: int  # 1-based line of the JSONL file


@dataclass(frozen=True)
class BadLine:
    """A line skipped, and why (one line)."""

    line: int
    reason: str
    text: str = ""  # the line itself, cut to 200 characters


def safe_id(raw: str) -> str:
    """An id usable as a file name: runs of other characters become "_", at most 80 characters."""
    s = _SAFE_ID.sub("_", raw).strip("._")[:80]
    return s or "fact"


def parse_facts(text: str) -> tuple[list[FactLine], list[BadLine]]:
    """The good facts and the bad lines of a JSONL text (blank lines and lines starting with # are ignored)."""
    facts: list[FactLine] = []
    bad: list[BadLine] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(facts) >= MAX_FACTS:
            bad.append(BadLine(n, f"more than {MAX_FACTS} facts: the rest of the file is skipped", line[:200]))
            break
        reason, fact = _check_line(n, line)
        if fact is not None and fact.id in seen:
            reason, fact = f"the id {fact.id!r} is used by an earlier line", None
        if fact is None:
            bad.append(BadLine(n, reason or "unreadable", line[:200]))
            continue
        seen.add(fact.id)
        facts.append(fact)
    return facts, bad


def _check_line(n: int, line: str) -> tuple[Optional[str], Optional[FactLine]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg} at column {e.colno})", None
    if not isinstance(obj, dict):
        return "not a JSON object: expected {\"prompt\": ..., \"subject\": ..., \"answer\": ...}", None
    fields = {}
    for key in ("prompt", "subject", "answer"):
        v = obj.get(key)
        if not isinstance(v, str) or not v.strip():
            return f"{key!r} is missing or empty", None
        fields[key] = v
    if len(fields["prompt"]) > MAX_PROMPT_CHARS:
        return f"the prompt is longer than {MAX_PROMPT_CHARS} characters", None
    if fields["subject"] not in fields["prompt"]:
        return f"the subject {fields['subject']!r} is not in the prompt", None
    raw_id = obj.get("id", n)
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        return "'id' must be a string or a number", None
    return None, FactLine(safe_id(str(raw_id)), fields["prompt"], fields["subject"], fields["answer"], n)


def read_facts(source: Union[str, Path, bytes]) -> tuple[list[FactLine], list[BadLine]]:
    """Facts from a JSONL file (path) or its bytes (an upload), refused in one line when too big or not text."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if len(data) > MAX_FACTSET_BYTES:
        raise InputError(f"the fact set is {len(data) / 2**20:.1f} MB; the limit is {MAX_FACTSET_BYTES // 2**20} MB: "
                         "split it into several files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the fact set is not UTF-8 text: expected JSONL, one JSON object per line") from None
    facts, bad = parse_facts(text)
    if not facts:
        first = f" (line {bad[0].line}: {bad[0].reason})" if bad else ""
        raise InputError(f"the fact set has no usable fact{first}: expected JSONL lines like "
                         '{"prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower", "answer": " Paris"}')
    return facts, bad


def demo_facts() -> tuple[list[FactLine], list[BadLine]]:
    """The demo corpus's held-out fact phrasings (never seen with their subject in training)."""
    return read_facts(DEMO_FACTS_PATH)


def write_demo_facts(path: Union[str, Path] = DEMO_FACTS_PATH) -> int:
    """Write the demo fact set from the corpus's held-out phrasings (`rwkv_core.demo.corpus.eval_fact_prompts`):
    first one phrasing of every fact, then the other, relations interleaved, so that the first lines already cover
    every relation with distinct facts; returns the line count."""
    from itertools import zip_longest

    from rwkv_core.demo.corpus import eval_fact_prompts

    by_relation: dict[str, list[dict]] = {}
    for p in eval_fact_prompts():
        f = p.fact
        subject = next(s for s in (f.subject, "t" + f.subject[1:]) if s in p.prompt)  # as written in the phrasing
        rows = by_relation.setdefault(f.relation, [])
        n = sum(1 for x in rows if x["fact"] == f.subject)
        rows.append({"id": safe_id(f"{f.relation}-{f.subject}-{n}"), "prompt": p.prompt, "subject": subject,
                     "answer": p.answer, "relation": f.relation, "fact": f.subject})
    lines = [row for group in zip_longest(*by_relation.values()) for row in group if row is not None]
    lines.sort(key=lambda row: row["id"].endswith("-1"))  # stable: every fact's first phrasing comes first
    text = "".join(json.dumps({k: v for k, v in row.items() if k != "fact"}) + "\n" for row in lines)
    Path(path).write_text(text, encoding="utf-8")
    return len(lines)
