"""Widgets every view uses: the token view, gated calls (wait in line for the shared model), errors, choices kept
valid, switches read from the URL, CSV downloads and progress captions.

The token view is a Streamlit v2 component with inline JavaScript. Token text is set with `textContent`, never parsed
as HTML, so a prompt containing `<script>` or `<b>` shows those characters and runs nothing. Hovering a token shows
the model's top predictions at that position, the actual next token highlighted.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import pandas as pd
import streamlit as st
import torch

from inspector_ui.resources import get_gate
from rwkv_core.errors import RWKVInspectorError

CSS = """
.tv { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px; line-height: 2.0;
      white-space: normal; word-break: break-all; }
.tv .tok { display: inline; padding: 2px 1px; margin: 0 1px; border-radius: 3px; cursor: pointer;
           white-space: pre; border: 1px solid #d6dbe3; }
.tv .tok.sel { background: #60a5fa !important; color: white; border-color: #1d4ed8; }
.tv .tok:hover { outline: 2px solid #1d4ed8; }
.tv .tip { position: fixed; z-index: 1000; background: #fff; border: 1px solid #8892a0; border-radius: 4px;
           padding: 6px 8px; font-size: 12px; box-shadow: 0 2px 8px rgba(0,0,0,.2); display: none; }
.tv .tip table { border-collapse: collapse; }
.tv .tip td { padding: 0 6px; }
.tv .tip tr.next { background: #dbeafe; font-weight: bold; }
.tv .bar { display: inline-block; height: 8px; background: #2563eb; }
"""

JS = """
export default function(component) {
  const { data, setStateValue, parentElement } = component;
  let root = parentElement.querySelector('.tv');
  if (!root) { root = document.createElement('div'); root.className = 'tv'; parentElement.appendChild(root); }
  root.replaceChildren();
  const tip = document.createElement('div'); tip.className = 'tip'; root.appendChild(tip);
  const box = document.createElement('div'); root.appendChild(box);
  (data.tokens || []).forEach((text, i) => {
    if (data.breaks && data.breaks[i]) box.appendChild(document.createElement('br'));
    const s = document.createElement('span');
    s.className = 'tok' + (i === data.selected ? ' sel' : '');
    s.textContent = text;
    s.dataset.index = String(i);
    s.setAttribute('data-testid', 'token');
    if (data.colors && data.colors[i]) s.style.background = data.colors[i];
    s.onclick = () => setStateValue('selected', i);
    s.onmouseenter = (ev) => {
      const rows = (data.tips && data.tips[i]) || [];
      tip.replaceChildren();
      const head = document.createElement('div');
      head.textContent = (data.values && data.values[i] !== null && data.values[i] !== undefined)
        ? `token ${i}: ${data.value_name || 'value'} = ${Number(data.values[i]).toPrecision(4)}` : `token ${i}`;
      tip.appendChild(head);
      if (rows.length) {
        const t = document.createElement('table');
        rows.forEach((r, k) => {
          const tr = document.createElement('tr'); if (r[3]) tr.className = 'next';
          [String(k + 1), String(r[0]), r[1]].forEach((c) => { const td = document.createElement('td'); td.textContent = c; tr.appendChild(td); });
          const td = document.createElement('td'); const bar = document.createElement('span'); bar.className = 'bar';
          bar.style.width = Math.round(60 * r[2]) + 'px'; td.appendChild(bar);
          td.appendChild(document.createTextNode(' ' + (100 * r[2]).toFixed(1) + '%')); tr.appendChild(td);
          t.appendChild(tr);
        });
        tip.appendChild(t);
      }
      tip.style.display = 'block';
      tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 320) + 'px';
      tip.style.top = (ev.clientY + 16) + 'px';
    };
    s.onmouseleave = () => { tip.style.display = 'none'; };
    box.appendChild(s);
  });
}
"""

_component = st.components.v2.component("rwkv_inspector.token_view", css=CSS, js=JS)


def token_view(texts: Sequence[str], *, key: str, colors: Optional[Sequence[Optional[str]]] = None,
               values: Optional[Sequence[Optional[float]]] = None, value_name: str = "score",
               selected: Optional[int] = None, tips: Optional[Sequence[list]] = None) -> Optional[int]:
    """Draw the tokens; return the index of the token the user clicked last (or None).

    tips[i] is a list of rows [token id, text, probability, is_actual_next] for the hover table."""
    shown = [t.replace("\n", "↵").replace("\t", "⇥") if t else "∅" for t in texts]
    breaks = [i > 0 and "\n" in texts[i - 1] for i in range(len(texts))]
    data = {"tokens": shown, "colors": list(colors) if colors is not None else None, "selected": selected,
            "values": [None if v is None else float(v) for v in values] if values is not None else None,
            "value_name": value_name, "tips": list(tips) if tips is not None else None, "breaks": breaks}
    res = _component(data=data, key=key, default={"selected": selected}, on_selected_change=lambda: None)
    sel = getattr(res, "selected", None)
    return None if sel is None else int(sel)


def prediction_tips(pred_ids, pred_probs, tokens: Sequence[int], display) -> list[list]:
    """Hover rows per position: [[id, text, p, is_actual_next], ...] (16 per token)."""
    tips = []
    T = len(tokens)
    for t in range(T):
        nxt = tokens[t + 1] if t + 1 < T else None
        tips.append([[int(i), display(int(i)), float(p), int(i) == nxt] for i, p in zip(pred_ids[t], pred_probs[t])])
    return tips


def gated(fn: Callable[[], Any], label: str = "Computing", *, show_waiting: bool = True) -> Any:
    """Run `fn` holding the work gate, showing the place in line while waiting. With `show_waiting=False` nothing of
    Streamlit is touched: for work run outside a script run (a download button's data callable, called when the
    user clicks), where an element would only log "missing ScriptRunContext" and show nothing."""
    box = st.empty() if show_waiting else None

    def on_wait(ahead: int) -> None:
        box.info(f"Waiting for the shared model: {ahead} job(s) ahead of you. Press Stop (top right) to cancel.")

    try:
        with get_gate().slot(on_wait if box is not None else None) as compute:
            if box is not None:
                box.empty()
            return compute.call(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise RWKVInspectorError("the GPU ran out of memory: try a shorter prompt, fewer layers or bf16") from None
    finally:
        if box is not None:
            box.empty()


def show_error(e: Exception) -> None:
    st.error(str(e).splitlines()[0])


def run_columns(n: int) -> list:
    """One column per run side by side in compare mode (n > 1), else the page itself."""
    return list(st.columns(n)) if n > 1 else [st.container()]


def clamp_choice(key: str, options: Sequence, fallback: Any) -> None:
    """Keep a choice widget's stored value valid when its options change (another prompt, model or layer): a value
    no longer offered becomes `fallback`. A key not yet in the session state is left to the widget's default."""
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = fallback


def url_bool(text: str) -> bool:
    """A switch as written in the URL: 1/true/yes/on or 0/false/no/off (any case); anything else is malformed
    (ValueError), so `bind` falls back to the default."""
    word = str(text).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a switch value: {text!r}")


def csv_bytes(df: pd.DataFrame) -> bytes:
    """A table as the CSV every download button offers: no index column, floats to 10 significant digits."""
    return df.to_csv(index=False, float_format="%.10g").encode()


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


def progress_text(what: str, done: int, total: int, elapsed: float, unit: str = "steps") -> str:
    """The caption of a progress bar: "Tracing: 12 / 40 cells · 35 s elapsed · about 3 min 20 s left"."""
    text = f"{what}: {done} / {total} {unit} · {duration_text(elapsed)} elapsed"
    if 0 < done < total:
        text += f" · about {duration_text(elapsed / done * (total - done))} left"
    return text
