"""What a page draws from: a run (one prompt on one model, or one uploaded trace) with its cached, gated numbers,
and the page's state in the URL (so a copied link restores the view)."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import streamlit as st
import torch

from inspector_ui import settings
from inspector_ui.prompt_store import load_prompt, store_prompt
from inspector_ui.resources import LoadedModel, loaded_model
from inspector_ui.widgets import clamp_choice, gated, prediction_tips
from rwkv_core.analysis.scores import topk_predictions
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.io.trace_file import Trace, build_trace
from rwkv_core.model.config import ModelConfig


# ------------------------------------------------------------------------------------------------ cached numbers


def top_k(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`scores.topk_predictions` of logits [T, V] as numpy for the token view's hover: ids and probabilities [T, k]."""
    ids, probs = topk_predictions(logits, k)
    return ids.cpu().numpy(), probs.cpu().numpy()


_OFFERED_LOCK = threading.Lock()
# the top-k predictions of the last prompts (a few hundred kB each), whoever made them: a page whose capture runs a
# forward anyway leaves them here, and a capture that finds them here skips the head (the unembedding is a quarter
# of a 0.1B forward at 1,000 tokens)
_OFFERED: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray]]" = OrderedDict()
# the greedy next token of every prompt whose predictions were made (top-1 at the last position), so that a page
# asking only for it (Causal tracing's default answer) runs no forward of its own after the home page's
_NEXT_TOKEN: "OrderedDict[tuple, int]" = OrderedDict()


def _keep(key: tuple, value: tuple[np.ndarray, np.ndarray]) -> None:
    with _OFFERED_LOCK:
        _OFFERED[key] = value
        _OFFERED.move_to_end(key)
        while len(_OFFERED) > 8:
            _OFFERED.popitem(last=False)


def offer_predictions(model_key: tuple, tokens: tuple[int, ...], logits: torch.Tensor, k: int = 16) -> None:
    """Leave the top-k of `logits` [T, V] (a forward of `tokens` on `model_key`) for `predictions`."""
    _keep((tuple(model_key), tuple(tokens), k), top_k(logits, k))


def has_predictions(model_key: tuple, tokens: tuple[int, ...], k: int = 16) -> bool:
    """Whether `predictions` of this prompt are at hand without a forward (a capture may then skip the head)."""
    with _OFFERED_LOCK:
        return (tuple(model_key), tuple(tokens), k) in _OFFERED


# the residual stream after the last block of a prompt that a page captured anyway (the Logit lens): its logits are
# the head's product alone, so `predictions` needs no forward of its own (weak: gone with the capture)
_FINAL_RESIDUAL: "OrderedDict[tuple, weakref.ref]" = OrderedDict()


def offer_final_residual(model_key: tuple, tokens: tuple[int, ...], stages: torch.Tensor) -> None:
    """Leave the residual stream of `tokens` on `model_key` at every stage [S, T, C] (the last: after the last
    block), for `predictions` to unembed if it is asked (nothing is computed here; not kept alive here)."""
    with _OFFERED_LOCK:
        _FINAL_RESIDUAL[(tuple(model_key), tuple(tokens))] = weakref.ref(stages)
        while len(_FINAL_RESIDUAL) > 8:
            _FINAL_RESIDUAL.popitem(last=False)


@st.cache_data(max_entries=64, show_spinner=False)
def predictions(model_key: tuple, tokens: tuple[int, ...], k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-k next-token ids and probabilities at every position: [T, k] each (one forward, unless offered, or the
    head alone over an offered final residual)."""
    key = (tuple(model_key), tuple(tokens), k)
    with _OFFERED_LOCK:
        offered = _OFFERED.get(key)
        ref = _FINAL_RESIDUAL.get((tuple(model_key), tuple(tokens)))
    stages = ref() if ref is not None else None  # [S, T, C]: the last stage is after the last block
    if offered is None:
        lm = loaded_model(model_key)

        def run():
            with torch.no_grad():
                logits = lm.model.unembed(stages[-1]) if stages is not None else lm.model(list(tokens))[0][0]
            return top_k(logits, k)

        offered = gated(run)
    _keep(key, offered)
    if len(tokens):
        with _OFFERED_LOCK:
            _NEXT_TOKEN[(tuple(model_key), tuple(tokens))] = int(offered[0][-1, 0])
            while len(_NEXT_TOKEN) > 64:
                _NEXT_TOKEN.popitem(last=False)
    return offered


def greedy_tokens(model_key: tuple, tokens: tuple[int, ...], n: int) -> list[int]:
    """The prompt's greedy continuation, n tokens: the first from the prompt's predictions where they were made,
    else from `RWKV.greedy` (no logits but the last token's)."""
    if n == 1:
        with _OFFERED_LOCK:
            known = _NEXT_TOKEN.get((tuple(model_key), tuple(tokens)))
        if known is not None:
            return [known]
    return _greedy(model_key, tokens, n)


@st.cache_data(max_entries=64, show_spinner=False)
def _greedy(model_key: tuple, tokens: tuple[int, ...], n: int) -> list[int]:
    lm = loaded_model(model_key)
    return gated(lambda: lm.model.greedy(list(tokens), n))


@st.cache_data(max_entries=256, show_spinner=False)
def layer_capture(model_key: tuple, tokens: tuple[int, ...], layer: int) -> dict[str, np.ndarray]:
    """The trace arrays of one layer (r_l, k_l, v_l, w_l, resid_l, bonus; v7 a, kk, ktilde), float32 on the CPU."""
    lm = loaded_model(model_key)
    arrays = gated(lambda: build_trace(lm.model, list(tokens), layers=[layer]))
    return {k: v for k, v in arrays.items() if k.endswith(f"_l{layer}")}


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Run:
    """One prompt on one model (or one uploaded trace): what every page draws from."""

    label: str
    cfg: ModelConfig
    tokens: list[int]
    token_texts: list[str]
    prompt: str = ""
    model_key: Optional[tuple] = None  # (name, device, dtype) when a model is live
    loaded: Optional[LoadedModel] = None
    trace: Optional[Trace] = None
    spans: list = field(default_factory=list)

    @property
    def title(self) -> str:
        src = self.model_key[0] if self.model_key else f"trace {self.trace.meta.get('checkpoint', '')}"
        return f"{self.label}: {src}"

    @property
    def has_model(self) -> bool:
        return self.loaded is not None

    def predictions(self, k: int = 16) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if self.model_key is not None:
            return predictions(self.model_key, tuple(self.tokens), k)
        if self.trace is not None:
            return self.trace.predictions(k)  # from the full logits or the stored top-k (format 3)
        return None

    def hover_tips(self) -> Optional[dict]:
        """The token view's hover rows (top-16 predictions at every position, in `prediction_tips`'s compact form),
        or None where there are none: a trace without logits, or predictions that failed (no reason to lose the
        page)."""
        try:
            pred = self.predictions()
        except Exception:  # noqa: BLE001
            return None
        if pred is None:
            return None
        display = self.loaded.tokenizer.display if self.loaded is not None else str
        return prediction_tips(pred[0], pred[1], self.tokens, display)

    def layer(self, l: int) -> dict[str, np.ndarray]:
        """Arrays of layer l, keyed like the trace file (r_l{l}, ...)."""
        if self.model_key is not None:
            return layer_capture(self.model_key, tuple(self.tokens), l)
        if l not in self.trace.layers:
            raise RWKVInspectorError(f"the trace file has no layer {l}: it holds layers {self.trace.layers}")
        return self.trace.layer_arrays(l)  # float32, what a float16 file leaves out recomputed

    def token_name(self, i: Optional[int]) -> str:
        return "" if i is None else f"{self.token_texts[i]!r}@{i}"


@dataclass
class PageContext:
    """What `page_setup` hands a view: run A (and B in compare mode), and what compare mode compares."""

    runs: list[Run]
    compare: bool
    compare_what: str


# ------------------------------------------------------------------------------------------------ URL state


def qp_get(key: str, default: Any = None, cast: Callable = str) -> Any:
    """A value from the URL query parameters, or `default` if absent or malformed."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def bind(key: str, default: Any, cast: Callable = str, *, options: Optional[Sequence] = None,
         bounds: Optional[tuple[Any, Any]] = None) -> None:
    """Seed a widget's session-state value from the URL, once per session (so links restore the view), and keep it
    valid: a value not among `options`, or (cast) outside the closed range `bounds`, becomes `default`.

    Later runs write the value back: a widget with the same key on another page is another widget to Streamlit,
    which would otherwise forget the value on a page switch (the prompt came back empty, the model as default)."""
    if key not in st.session_state:
        st.session_state[key] = qp_get(key, default, cast)
    else:
        st.session_state[key] = st.session_state[key]
    if options is not None:
        clamp_choice(key, options, default)
    if bounds is not None:
        try:
            value = cast(st.session_state[key])
            ok = bounds[0] <= value <= bounds[1]
        except (TypeError, ValueError):
            ok = False
        st.session_state[key] = value if ok else default


def publish(*keys: str) -> None:
    """Write the current values of these session-state keys into the URL."""
    for k in keys:
        v = st.session_state.get(k)
        if v is None or v == "":
            st.query_params.pop(k, None)
        elif str(st.query_params.get(k)) != str(v):
            st.query_params[k] = str(v)


def publish_prompt(key: str) -> None:
    text = st.session_state.get(key, "")
    if len(text) > settings.URL_PROMPT_CHARS:
        st.query_params.pop(key, None)
        try:
            st.query_params[f"{key}_id"] = store_prompt(text)
        except OSError as e:  # a full disk or a read-only home must not stop the page
            st.query_params.pop(f"{key}_id", None)
            st.warning(f"This prompt is too long for the page's link and could not be stored for one "
                       f"({e.strerror or e}); everything works, but a copied link will not carry the prompt.")
    else:
        st.query_params.pop(f"{key}_id", None)
        publish(key)


def seed_prompt(key: str, default: str) -> None:
    if key in st.session_state:
        st.session_state[key] = st.session_state[key]  # keep it across a page switch (see bind)
        return
    pid = qp_get(f"{key}_id")
    text = load_prompt(pid) if pid else None
    st.session_state[key] = text if text is not None else qp_get(key, default)
