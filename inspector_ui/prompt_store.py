"""Long prompts kept on the server under a content id, so a page's link stays short and still carries the prompt.

Bounded: the least recently stored or opened prompts beyond `settings.settings.PROMPT_STORE_MAX_FILES` are deleted; writes are
atomic, and only our own ids name a file. No Streamlit here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Optional

from inspector_ui import settings

def _prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_prompt(text: str) -> str:
    """Keep a long prompt under its content id (for a URL); the store is bounded (`settings.PROMPT_STORE_MAX_FILES`)."""
    settings.PROMPT_STORE.mkdir(parents=True, exist_ok=True)
    pid = _prompt_id(text)
    p = settings.PROMPT_STORE / f"{pid}.txt"
    if p.is_file():
        os.utime(p)  # already stored (every rerun publishes it): mark it recent
        return pid
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)  # readers never see a half-written prompt
    except OSError:
        tmp.unlink(missing_ok=True)  # e.g. disk full: leave no partial file behind
        raise
    _prune_prompt_store(keep=p)
    return pid


STALE_TMP_S = 3600  # a temp file this old was left by a process that died between writing and renaming


def _prune_prompt_store(keep: Path) -> None:
    """Delete the least recently used prompts beyond `settings.PROMPT_STORE_MAX_FILES`, and stale temp files."""
    now = time.time()
    for f in settings.PROMPT_STORE.glob("*.tmp"):
        with contextlib.suppress(OSError):
            if now - f.stat().st_mtime > STALE_TMP_S:
                f.unlink()
    files = []
    for f in settings.PROMPT_STORE.glob("*.txt"):
        with contextlib.suppress(OSError):
            files.append((f.stat().st_mtime, f))
    files.sort()
    for _, f in files[:max(0, len(files) - settings.PROMPT_STORE_MAX_FILES)]:
        if f != keep:
            with contextlib.suppress(OSError):
                f.unlink()


def load_prompt(pid: str) -> Optional[str]:
    if not pid.isalnum() or len(pid) != 16:  # only our own ids: no path can be formed from a parameter
        return None
    p = settings.PROMPT_STORE / f"{pid}.txt"
    if not p.is_file():
        return None
    with contextlib.suppress(OSError):
        os.utime(p)  # a link in use: keep it longest
    return p.read_text(encoding="utf-8")
