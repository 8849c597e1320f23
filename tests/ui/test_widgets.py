"""The small shared pieces of the views: durations and progress captions, switches read from the URL, CSV downloads,
and the figures' common labels and tick settings."""
from __future__ import annotations

import pandas as pd
import pytest

from inspector_ui.widgets import csv_bytes, duration_text, progress_text, url_bool
from rwkv_core.figures.common import MAX_TICK_LABELS, escape_label, image_config, token_axis


def test_long_waits_read_in_days_hours_and_minutes():
    assert duration_text(42.4) == "42 s"
    assert duration_text(200) == "3 min 20 s"
    assert duration_text(2 * 3600 + 5 * 60) == "2 h 05 min"
    assert duration_text(5 * 86400 + 3700) == "5 d 1 h"
    assert duration_text(float("nan")) == "?"
    text = progress_text("Tracing", 1, 12001, 36.3, "cells")
    assert text == "Tracing: 1 / 12001 cells · 36 s elapsed · about 5 d 1 h left"
    assert "left" not in progress_text("Tracing", 0, 10, 0.0, "cells")  # nothing done: no estimate yet


def test_url_switches_and_csv():
    assert url_bool("True") and url_bool("1") and url_bool("on")
    assert not url_bool("false") and not url_bool("0") and not url_bool("OFF")
    with pytest.raises(ValueError):
        url_bool("maybe")  # malformed: bind falls back to the default
    assert csv_bytes(pd.DataFrame({"a": [1 / 3]})) == b"a\n0.3333333333\n"


def test_labels_ticks_and_image_config():
    assert escape_label("<b>&\n\t\x01") == "&lt;b&gt;&amp;↩⇥\\x01"
    assert escape_label("") == "∅" and escape_label("", empty="") == ""
    cats, axis = token_axis(["a", "b"], first=5)
    assert cats == ["5: a", "6: b"] and axis["type"] == "category" and axis["categoryarray"] == cats
    assert axis["tickvals"] == cats and axis["ticktext"] == cats  # every token labelled
    cats, axis = token_axis(["x"] * (MAX_TICK_LABELS + 1))
    assert len(set(cats)) == MAX_TICK_LABELS + 1 and "tickvals" not in axis  # unique; Plotly picks the ticks
    assert image_config("rwkv attn", "png")["toImageButtonOptions"]["filename"] == "rwkv_attn"
    with pytest.raises(ValueError):
        image_config("x", "gif")
