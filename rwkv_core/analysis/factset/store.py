"""The output folder of a fact-set trace, the only record of its progress (so a killed run resumes from it):

    run.json          the model, the settings and their key (a rerun with other settings is refused)
    facts.jsonl       the facts of the run (the good lines), so that the folder alone can be resumed and shown
    facts/<id>.npz    one file per traced fact, written whole or not at all (a temporary file renamed)
    events.jsonl      one line per fact finished, failed or stopped, appended as it happens
    bad_lines.jsonl   the fact-set lines skipped, with their reason
    facts.csv         the table of facts (status, known, clean and corrupted probability), rewritten at the end
    aie.npz           the average indirect effect per restore kind, rewritten at the end

A fact file holds, for each restore kind K, the arrays of `python -m rwkv_core trace --out` under "K/" (K/grid,
K/grid_prob, K/tokens, ...), plus `fact` (its JSONL record as JSON) and `run_key`."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from rwkv_core.analysis.factset.effects import TOKEN_CLASSES, AverageEffect, average_effects, class_effects
from rwkv_core.analysis.factset.facts import BadLine, FactLine
from rwkv_core.analysis.tracing import TraceResult
from rwkv_core.errors import InputError


@dataclass
class FactRecord:
    """One traced fact read back: its line and one TraceResult per restore kind."""

    fact: FactLine
    results: dict[str, TraceResult]

    @property
    def clean_prob(self) -> float:
        return next(iter(self.results.values())).clean["prob"]

    @property
    def corrupt_prob(self) -> float:
        return next(iter(self.results.values())).corrupt["prob"]


def _atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it over `path` (never half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FactSetFolder:
    """The output folder (see the module docstring)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.facts_dir = self.path / "facts"

    # ---------------------------------------------------------------- the run

    def begin(self, run: dict, run_key: str, facts: Sequence[FactLine], bad: Sequence[BadLine] = ()) -> None:
        """Create the folder, or check that the run it holds has the same key (resume); record the facts and the
        bad lines."""
        self.facts_dir.mkdir(parents=True, exist_ok=True)
        old = self.run_info()
        if old is not None and old.get("run_key") != run_key:
            raise InputError(f"{self.path} holds a fact-set run with other settings or another model: choose "
                             "another output folder, or delete that one to start again")
        info = dict(run, run_key=run_key, started=old.get("started") if old else time.time())
        payload = json.dumps(info, indent=1).encode()
        _atomic_write(self.path / "run.json", lambda f: f.write(payload))
        text = "".join(json.dumps(asdict(b)) + "\n" for b in bad).encode()
        _atomic_write(self.path / "bad_lines.jsonl", lambda f: f.write(text))
        lines = "".join(json.dumps(asdict(f)) + "\n" for f in facts).encode()
        _atomic_write(self.path / "facts.jsonl", lambda f: f.write(lines))

    def facts(self) -> list[FactLine]:
        """The facts of the run recorded by `begin` (none before)."""
        p = self.path / "facts.jsonl"
        return [FactLine(**json.loads(x)) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] \
            if p.exists() else []

    def run_info(self) -> Optional[dict]:
        p = self.path / "run.json"
        return json.loads(p.read_text()) if p.exists() else None

    # ---------------------------------------------------------------- facts

    def fact_path(self, fact_id: str) -> Path:
        return self.facts_dir / f"{fact_id}.npz"

    def save_fact(self, fact: FactLine, results: Sequence[TraceResult], kinds: Sequence[str], run_key: str) -> Path:
        arrays: dict[str, np.ndarray] = {"fact": np.str_(json.dumps(asdict(fact))), "run_key": np.str_(run_key),
                                         "kinds": np.asarray(list(kinds), dtype=np.str_)}
        for k, r in zip(kinds, results):
            arrays.update(r.to_arrays(prefix=f"{k}/"))
        path = self.fact_path(fact.id)
        _atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def load_fact(self, fact_id: str) -> FactRecord:
        with np.load(self.fact_path(fact_id), allow_pickle=False) as z:
            fact = FactLine(**json.loads(str(z["fact"])))
            return FactRecord(fact, {str(k): TraceResult.from_arrays(z, f"{k}/") for k in z["kinds"]})

    def done_ids(self, run_key: str) -> set[str]:
        """Ids of the facts whose file is whole, complete and of this run (others are computed again)."""
        done = set()
        for p in self.facts_dir.glob("*.npz"):
            try:
                with np.load(p, allow_pickle=False) as z:
                    if str(z["run_key"]) == run_key and all(bool(z[f"{k}/complete"]) for k in z["kinds"]):
                        done.add(p.stem)
            except Exception:  # a damaged file: computed again
                continue
        return done

    # ---------------------------------------------------------------- events

    def log_event(self, fact_id: str, event: str, **extra) -> None:
        """Append one line: a fact done, failed, stopped (appended whole: one write of one line)."""
        line = json.dumps(dict(id=fact_id, event=event, time=time.time(), **extra)) + "\n"
        with open(self.path / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line)

    def events(self) -> list[dict]:
        p = self.path / "events.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return out

    def bad_lines(self) -> list[BadLine]:
        p = self.path / "bad_lines.jsonl"
        return [BadLine(**json.loads(x)) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    # ---------------------------------------------------------------- summary

    def summarise(self, facts: Sequence[FactLine], threshold: float, *, n_boot: int = 1000
                  ) -> tuple[dict[str, AverageEffect], list[dict]]:
        """The AIE per restore kind over the known facts done, and one table row per fact (done or not)."""
        info = self.run_info() or {}
        run_key = info.get("run_key", "")
        done = self.done_ids(run_key)
        last_event = {e["id"]: e for e in self.events()}
        rows, effects = [], {}
        for f in facts:
            row = {"id": f.id, "line": f.line, "status": "pending", "known": "", "clean_prob": "", "corrupt_prob": "",
                   "subject_tokens": "", "tokens": "", "reason": "", "prompt": f.prompt, "subject": f.subject,
                   "answer": f.answer}
            if f.id in done:
                rec = self.load_fact(f.id)
                first = next(iter(rec.results.values()))
                known = rec.clean_prob >= threshold
                row.update(status="done", known=known, clean_prob=rec.clean_prob, corrupt_prob=rec.corrupt_prob,
                           subject_tokens=first.subject[1] - first.subject[0], tokens=len(first.tokens))
                if known:
                    for k, r in rec.results.items():
                        effects.setdefault(k, []).append(class_effects(r.grids["prob"], r.corrupt["prob"], r.subject))
            elif f.id in last_event:
                e = last_event[f.id]
                row.update(status=e["event"], reason=e.get("reason", ""))
            rows.append(row)
        for b in self.bad_lines():
            rows.append({"id": "", "line": b.line, "status": "skipped", "reason": b.reason, "prompt": b.text})
        L = int(info.get("n_layer", 0))
        aie = {k: average_effects(np.asarray(effects.get(k, []), dtype=np.float64).reshape(-1, len(TOKEN_CLASSES), L),
                                  n_boot=n_boot) for k in info.get("kinds", sorted(effects))}
        return aie, rows

    def write_summary(self, facts: Sequence[FactLine], threshold: float, *, n_boot: int = 1000
                      ) -> tuple[dict[str, AverageEffect], list[dict]]:
        """Write aie.npz and facts.csv from the fact files on disk (every run so far, resumed ones included)."""
        aie, rows = self.summarise(facts, threshold, n_boot=n_boot)
        n_known = sum(1 for r in rows if r.get("known") is True)
        arrays = aie_arrays(aie, n_known, threshold)
        _atomic_write(self.path / "aie.npz", lambda f: np.savez(f, **arrays))
        text = facts_csv(rows).encode()
        _atomic_write(self.path / "facts.csv", lambda f: f.write(text))
        return aie, rows

    def zip_bytes(self) -> bytes:
        """The folder as a zip (run.json, facts/, the tables), for a download."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(self.path.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    z.write(p, p.relative_to(self.path).as_posix())
        return buf.getvalue()


def aie_arrays(aie: dict[str, AverageEffect], n_known: int, threshold: float) -> dict[str, np.ndarray]:
    """aie.npz: per kind K, K [6, L] (mean), K_low / K_high [6, L] (bootstrap interval), K_count [6] (facts averaged
    per class); `classes` (the six names), `kinds`, `n_facts` (known facts done) and `threshold`."""
    arrays: dict[str, np.ndarray] = {"classes": np.asarray(TOKEN_CLASSES, dtype=np.str_),
                                     "kinds": np.asarray(list(aie), dtype=np.str_), "n_facts": np.int64(n_known),
                                     "threshold": np.float64(threshold)}
    for k, a in aie.items():
        arrays[k], arrays[f"{k}_low"], arrays[f"{k}_high"], arrays[f"{k}_count"] = a.mean, a.low, a.high, a.count
    return arrays


def aie_csv(aie: dict[str, AverageEffect]) -> str:
    """The AIE as a long table: kind, token class, layer, mean, low, high, facts."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "token_class", "layer", "aie", "low", "high", "facts"])
    for k, a in aie.items():
        for c, name in enumerate(TOKEN_CLASSES):
            for l in range(a.mean.shape[1]):
                w.writerow([k, name, l, repr(float(a.mean[c, l])), repr(float(a.low[c, l])),
                            repr(float(a.high[c, l])), int(a.count[c])])
    return buf.getvalue()


FACT_COLUMNS = ("id", "line", "status", "known", "clean_prob", "corrupt_prob", "subject_tokens", "tokens", "reason",
                "prompt", "subject", "answer")


def facts_csv(rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FACT_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def run_key_of(run: dict) -> str:
    """The key of what the per-fact numbers depend on (model file, tokenizer, tracing settings)."""
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]
