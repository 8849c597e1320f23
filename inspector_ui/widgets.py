"""Widgets every view uses: the token view, gated calls (wait in line for the shared model), errors and progress.

The token view is a Streamlit v2 component with inline JavaScript. Token text is set with `textContent`, never parsed
as HTML, so a prompt containing `<script>` or `<b>` shows those characters and runs nothing. Hovering a token shows
the model's top predictions at that position, the actual next token highlighted.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

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


def gated(fn: Callable[[], Any], label: str = "Computing") -> Any:
    """Run `fn` holding the work gate, showing the place in line while waiting."""
    box = st.empty()

    def on_wait(ahead: int) -> None:
        box.info(f"Waiting for the shared model: {ahead} job(s) ahead of you. Press Stop (top right) to cancel.")

    try:
        with get_gate().slot(on_wait):
            box.empty()
            return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise RWKVInspectorError("the GPU ran out of memory: try a shorter prompt, fewer layers or bf16") from None
    finally:
        box.empty()


def show_error(e: Exception) -> None:
    st.error(str(e).splitlines()[0])


def timer_text(done: int, total: int, started: float) -> str:
    """'37% · 12 s left' for progress bars."""
    frac = done / max(total, 1)
    el = time.time() - started
    left = el / frac - el if frac > 0 else float("nan")
    return f"{frac:.0%} · {left:.0f} s left" if frac > 0 else "starting..."
