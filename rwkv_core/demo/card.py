"""Model cards (`models/*.json`): written as indented JSON with every flat list on one line, so that a card's
training phases (arguments, loss logs) stay short enough to read and to review in a diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def card_json(obj: Any, indent: int = 1, _level: int = 0) -> str:
    """`json.dumps(obj, indent=indent)`, except that lists holding no list or dict are written on one line."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {card_json(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        items = [inner + card_json(v, indent, _level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def write_card(path: Path, card: dict) -> None:
    """Write a model card (see `card_json`), ending with a newline."""
    Path(path).write_text(card_json(card) + "\n")
