"""Durations as a person reads them, shared by the command line's progress and the pages' costs and progress bars."""
from __future__ import annotations

import math


def duration_text(seconds: float) -> str:
    """A duration as a person reads it: "42 s", "3 min 20 s", "2 h 05 min", "5 d 1 h"; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def hours_minutes(seconds: float) -> str:
    """A long duration in hours and minutes, days counted as hours so that costs compare at a glance ("121 h 05
    min", "2 h 00 min"); below an hour as `duration_text` ("3 min 20 s")."""
    if seconds is None or not math.isfinite(seconds) or seconds < 3600:
        return duration_text(seconds)
    m = int(round(seconds / 60))
    return f"{m // 60:,} h {m % 60:02d} min"
