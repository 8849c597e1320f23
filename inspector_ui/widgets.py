"""Widgets every view uses: the token view, gated calls (wait in line for the shared model), errors, choices kept
valid, switches read from the URL, CSV downloads and progress captions.

The token view is a Streamlit v2 component with inline JavaScript. Token text is set with `textContent`, never parsed
as HTML, so a prompt containing `<script>` or `<b>` shows those characters and runs nothing. Hovering a token shows
the model's top predictions at that position, the actual next token highlighted.
"""
from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st
import torch

from inspector_ui.resources import get_gate
from rwkv_core.durations import duration_text, hours_minutes  # noqa: F401 (the views' formatting)
from rwkv_core.errors import RWKVInspectorError

CSS = """
.tv { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 14px; line-height: 2.0; }
.tv .box { position: relative; overflow-y: auto; overscroll-behavior: contain; white-space: normal;
           word-break: break-all; padding: 0 4px; border: 1px solid #e3e7ee; border-radius: 4px; }
.tv .tok { display: inline; padding: 2px 1px; margin: 0 1px; border-radius: 3px; cursor: pointer;
           white-space: pre; border: 1px solid #d6dbe3; }
.tv .tok.sel { background: #60a5fa !important; color: white; border-color: #1d4ed8; }
.tv .tok:hover { outline: 2px solid #1d4ed8; }
.tv .tip { position: fixed; z-index: 1000; background: #fff; border: 1px solid #8892a0; border-radius: 4px;
           padding: 6px 8px; font-size: 12px; line-height: 1.4; box-shadow: 0 2px 8px rgba(0,0,0,.2); display: none;
           pointer-events: none; }
.tv .tip table { border-collapse: collapse; }
.tv .tip td { padding: 0 6px; white-space: pre; }
.tv .tip tr.next { background: #dbeafe; font-weight: bold; }
.tv .bar { display: inline-block; height: 8px; background: #2563eb; }
"""

JS = """
export default function(component) {
  const { data, setStateValue, parentElement } = component;
  let root = parentElement.querySelector('.tv');
  if (!root) { root = document.createElement('div'); root.className = 'tv'; parentElement.appendChild(root); }
  const old = root.querySelector('.box');
  const kept = old ? old.scrollTop : 0;
  root.replaceChildren();
  const tip = document.createElement('div'); tip.className = 'tip'; root.appendChild(tip);
  const box = document.createElement('div'); box.className = 'box'; box.setAttribute('data-testid', 'token-box');
  if (data.max_lines) box.style.maxHeight = (data.max_lines * 28 + 4) + 'px';
  const tokens = data.tokens || [], tips = data.tips, breaks = new Set(data.breaks || []);
  const shown = (i) => (data.values && data.values[i] !== null && data.values[i] !== undefined)
    ? `token ${i}: ${data.value_name || 'value'} = ${Number(data.values[i]).toPrecision(4)}` : `token ${i}`;
  const bytes = (b64) => { const s = atob(b64 || ''), b = new Uint8Array(s.length);
    for (let j = 0; j < s.length; j++) b[j] = s.charCodeAt(j); return b.buffer; };
  const tipIds = tips && tips.ids ? (tips.id_bytes === 4 ? new Uint32Array(bytes(tips.ids)) : new Uint16Array(bytes(tips.ids))) : null;
  const tipP = tipIds ? new Uint16Array(bytes(tips.p)) : null;
  const rows = (i) => {  // [id, text, probability, is the actual next token] of the top-k at token i
    if (!tipIds) return [];
    const k = tips.k, out = [];
    for (let r = 0; r < k && i * k + r < tipIds.length; r++) {
      const id = tipIds[i * k + r];
      out.push([id, tips.text[id], tipP[i * k + r] / tips.scale, tips.next[i] === r]);
    }
    return out;
  };
  const frag = document.createDocumentFragment();
  let selEl = null;
  tokens.forEach((text, i) => {
    if (breaks.has(i)) frag.appendChild(document.createElement('br'));
    const s = document.createElement('span');
    s.className = 'tok' + (i === data.selected ? ' sel' : '');
    s.textContent = text;
    s.dataset.index = String(i);
    s.setAttribute('data-testid', 'token');
    if (data.colors && data.colors[i]) s.style.background = data.colors[i];
    if (i === data.selected) selEl = s;
    frag.appendChild(s);
  });
  box.appendChild(frag);
  root.appendChild(box);
  // one listener for all tokens (4,096 spans): the token under the pointer is found from the event's target
  const tokenOf = (ev) => { const t = ev.target.closest && ev.target.closest('.tok'); return t ? Number(t.dataset.index) : null; };
  box.onclick = (ev) => { const i = tokenOf(ev); if (i !== null) setStateValue('selected', i); };
  box.onmouseover = (ev) => {
    const i = tokenOf(ev); if (i === null) { tip.style.display = 'none'; return; }
    tip.replaceChildren();
    const head = document.createElement('div'); head.textContent = shown(i); tip.appendChild(head);
    const rs = rows(i);
    if (rs.length) {
      const t = document.createElement('table');
      rs.forEach((r, k) => {
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
    const below = ev.clientY + 16, h = tip.offsetHeight;  // below the pointer, or above it where it would not fit
    tip.style.top = (below + h <= window.innerHeight ? below : Math.max(4, ev.clientY - 16 - h)) + 'px';
  };
  box.onmouseleave = () => { tip.style.display = 'none'; };
  box.onscroll = () => { tip.style.display = 'none'; };
  // the selection in the middle of the box, after every rerun; the page itself does not scroll
  if (selEl) box.scrollTop = Math.max(0, selEl.offsetTop - (box.clientHeight - selEl.offsetHeight) / 2);
  else box.scrollTop = kept;
}
"""

_component = st.components.v2.component("rwkv_inspector.token_view", css=CSS, js=JS)

TOKEN_VIEW_LINES = 8  # the token view's box is at most this many lines tall, and scrolls
TIP_SCALE = 65_535  # hover probabilities travel as uint16 in units of 1 / TIP_SCALE


def shown_text(text: str) -> str:
    """A token as the token view shows it: newline ↵, tab ⇥, an empty token ∅."""
    return text.replace("\n", "↵").replace("\t", "⇥") if text else "∅"


def token_view(texts: Sequence[str], *, key: str, colors: Optional[Sequence[Optional[str]]] = None,
               values: Optional[Sequence[Optional[float]]] = None, value_name: str = "score",
               selected: Optional[int] = None, tips: Optional[dict] = None,
               max_lines: int = TOKEN_VIEW_LINES) -> Optional[int]:
    """Draw the tokens in a box at most `max_lines` lines tall (its own scroll bar; the selected token scrolled into
    its middle after every rerun); return the index of the token the user clicked last (or None).

    `tips`: the hover rows, as `prediction_tips` builds them. Values travel to 4 significant digits (what the hover
    shows), so that 4,096 tokens stay a small message."""
    data = {"tokens": [shown_text(t) for t in texts], "colors": list(colors) if colors is not None else None,
            "selected": selected, "value_name": value_name, "tips": tips, "max_lines": max_lines,
            "values": [None if v is None or not math.isfinite(v) else float(f"{v:.4g}") for v in values]
            if values is not None else None,
            "breaks": [i for i in range(1, len(texts)) if "\n" in texts[i - 1]]}
    res = _component(data=data, key=key, default={"selected": selected}, on_selected_change=lambda: None)
    sel = getattr(res, "selected", None)
    return None if sel is None else int(sel)


def take_token_click(view_key: Callable[[str, int], str], lengths: dict[str, int], state_key: str = "tok") -> None:
    """A click in a token view of the last run moves the selection `state_key`, before any widget of this run is
    drawn. The views are keyed by what they showed, view_key(run label, drawn selection) (a run shorter than the
    selection shows its last token), so a click is a state that differs from what its view was drawn with."""
    tok = st.session_state.get(state_key)
    if not isinstance(tok, int) or isinstance(tok, bool):
        return
    for label, T in lengths.items():
        drawn = min(tok, T - 1)
        state = st.session_state.get(view_key(label, drawn))
        sel = state.get("selected") if hasattr(state, "get") else None
        if sel is not None and int(sel) != drawn:
            st.session_state[state_key] = int(sel)
            return


def prediction_tips(pred_ids, pred_probs, tokens: Sequence[int], display: Callable[[int], str]) -> dict:
    """The hover rows of every position, compact: 16 rows x 4,096 tokens as JSON rows [id, text, p, is_next] were
    3.2 MB per rerun, these are about 0.45 MB. {"k": k, "ids": base64 of [T * k] little-endian uint16 (uint32 for a
    vocabulary past 65,536; "id_bytes" says which), "p": base64 of [T * k] uint16 probabilities x "scale",
    "text": {id: display text} once per id, "next": [T] the row of the actual next token or -1}. `tip_rows` reads
    one position back; the token view decodes them once per render."""
    ids = np.asarray(pred_ids, dtype=np.int64).reshape(len(tokens), -1)
    probs = np.asarray(pred_probs, dtype=np.float64).reshape(ids.shape)
    T, k = ids.shape
    nxt = np.full(T, -1, dtype=np.int64)
    if T > 1:
        hit = ids[:-1] == np.asarray(tokens[1:], dtype=np.int64)[:, None]
        nxt[:-1] = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    id_bytes = 2 if ids.size == 0 or int(ids.max()) < 2 ** 16 else 4
    p = np.rint(np.clip(probs, 0.0, 1.0) * TIP_SCALE).astype("<u2")
    return {"k": int(k), "id_bytes": id_bytes, "scale": TIP_SCALE,
            "ids": base64.b64encode(ids.astype(f"<u{id_bytes}").tobytes()).decode("ascii"),
            "p": base64.b64encode(p.tobytes()).decode("ascii"),
            "text": {int(i): display(int(i)) for i in np.unique(ids)}, "next": nxt.tolist()}


def tip_rows(tips: dict, i: int) -> list[list]:
    """The hover rows of position i, [token id, text, probability, is the actual next token] each (from the dict
    or its JSON form, whose `text` is keyed by the id as a string)."""
    k = tips["k"]
    ids = np.frombuffer(base64.b64decode(tips["ids"]), dtype=f"<u{tips['id_bytes']}")[i * k:(i + 1) * k]
    p = np.frombuffer(base64.b64decode(tips["p"]), dtype="<u2")[i * k:(i + 1) * k]
    text = tips["text"]
    return [[int(t), text.get(int(t), text.get(str(int(t)))), float(q) / tips["scale"], tips["next"][i] == r]
            for r, (t, q) in enumerate(zip(ids, p))]


GOTO_HELP = ("A position (517) selects that token; any other text selects the next token, after the selected one "
             "and wrapping round, where that text starts (case-insensitive; it may span several tokens). Quote it "
             "(\"2024\", \" the\") to look for digits or spaces. Go again for the next match.")


@dataclass
class GotoResult:
    """Where "go to token" went: the token (None: stay) and a one-line message (empty: nothing to say)."""

    index: Optional[int]
    message: str = ""
    problem: bool = False  # the message says why nothing was selected


def find_token(query: str, texts: Sequence[str], current: Optional[int]) -> GotoResult:
    """The token that "go to token" selects for `query`: a whole number is a position; other text is looked up in
    the prompt (the token texts joined) from the token after `current` on, wrapping round to the start, and the
    token where the match starts is selected (so a word found across byte-level tokens selects its first byte).
    Quotes around the query make it text even when it is digits, and keep its spaces."""
    q = query.strip()
    T = len(texts)
    if not q:
        return GotoResult(None)
    if len(q) >= 2 and q[0] == q[-1] and q[0] in "\"'":
        q = q[1:-1]
    elif q.lstrip("+-").isdigit():
        pos = int(q)
        if not 0 <= pos < T:
            return GotoResult(None, f"There is no token {pos}: this prompt has tokens 0–{T - 1}.", True)
        return GotoResult(pos)
    if not q:
        return GotoResult(None)
    q = asked = q.replace("↵", "\n").replace("⇥", "\t")
    joined = "".join(texts)
    low = joined.lower()
    if len(low) == len(joined):  # lower() kept every offset: look case-insensitively
        joined, q = low, q.lower()
    starts = np.cumsum([0] + [len(t) for t in texts[:-1]]) if T else np.zeros(0, dtype=np.int64)
    hits = sorted({int(np.searchsorted(starts, m, side="right")) - 1
                   for m in _occurrences(joined, q)})
    if not hits:
        return GotoResult(None, f"No match for {asked!r} in the prompt." if len(q) < 40 else "No match in the prompt.",
                          True)
    after = [h for h in hits if current is None or h > current]
    index = after[0] if after else hits[0]
    n = hits.index(index) + 1
    wrapped = " (from the start again)" if not after and current is not None and len(hits) > 1 else ""
    return GotoResult(index, f"Match {n} of {len(hits)} for {asked!r}{wrapped}." if len(q) < 40 else
                      f"Match {n} of {len(hits)}{wrapped}.")


def _occurrences(text: str, q: str) -> list[int]:
    """Where `q` starts in `text`, overlapping matches included."""
    out, i = [], text.find(q)
    while i >= 0:
        out.append(i)
        i = text.find(q, i + 1)
    return out


def goto_token(state_key: str, texts: Sequence[str], *, key: str) -> None:
    """A "Go to token" box (Enter or Go): `find_token` of what is typed sets `st.session_state[state_key]` before
    the next run, as a click on that token would; the outcome shows in one line below the box."""

    def go() -> None:
        current = st.session_state.get(state_key)
        res = find_token(str(st.session_state.get(f"{key}_q", "")), texts,
                         current if isinstance(current, int) else None)
        if res.index is not None:
            st.session_state[state_key] = res.index
        st.session_state[f"{key}_msg"] = (res.message, res.problem)

    with st.form(f"{key}_form", border=False, enter_to_submit=True):
        c = st.columns([5, 1], vertical_alignment="bottom")
        c[0].text_input("Go to token", key=f"{key}_q", placeholder="a position (517) or text (Paris)",
                        help=GOTO_HELP)
        c[1].form_submit_button("Go", on_click=go, key=f"{key}_go")
    message, problem = st.session_state.pop(f"{key}_msg", ("", False))
    if message:
        (st.warning if problem else st.caption)(md_text(message))


def md_text(text: str) -> str:
    """Text shown literally by Streamlit's Markdown (a token text with * or _ or $ in it): punctuation escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", text)


def token_label(texts: Sequence[str], i: int) -> str:
    """"token 517 ' the'" for captions and headings: the index and the text as the token view shows it, in Markdown
    that shows it literally."""
    return f"token {i} " + md_text(repr(shown_text(texts[i])))


# While a script runs, Streamlit animates its "running" icon (top right) by swapping SVG frames several times a
# second; on a page of large figures every swap costs the browser a repaint. In a browser on the server's own cores
# (a laptop) that took about a seventh of a core from the computation: Chromium used 1.09 CPU-seconds in 8 s of a
# run beside two large figures, 0.11 with the icon replaced by still text (`python -m bench.bench_running_indicator`).
RUNNING_CSS = ("<style>[data-testid=stStatusWidgetRunningIcon] svg { display: none !important; } "
               "[data-testid=stStatusWidgetRunningIcon]::after { content: 'Running…'; font-size: 0.875rem; "
               "margin-right: 0.5rem; white-space: nowrap; }</style>")


def static_running_indicator() -> None:
    """Show "Running…" as still text instead of Streamlit's animated icon (see RUNNING_CSS); no element's space."""
    st.html(RUNNING_CSS)


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


def progress_text(what: str, done: int, total: int, elapsed: float, unit: str = "steps") -> str:
    """The caption of a progress bar: "Tracing: 12 / 40 cells · 35 s elapsed · about 3 min 20 s left"."""
    text = f"{what}: {done} / {total} {unit} · {duration_text(elapsed)} elapsed"
    if 0 < done < total:
        text += f" · about {duration_text(elapsed / done * (total - done))} left"
    return text
