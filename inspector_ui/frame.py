"""The shared frame of every page: sidebar (model or trace file, prompt, compare mode), URL state, and the cached,
gated access to what a prompt did inside the model.

Every page starts with `ctx = page_setup("Title")`; `ctx.runs` holds one run (or two in compare mode), each able
to give its token labels, top-k predictions and per-layer captures, from the shared model or from an uploaded trace.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import streamlit as st
import torch

from inspector_ui.registry import ModelEntry, default_model_name, list_models
from inspector_ui.runtime import LoadedModel, ModelPool, WorkGate, default_budget_bytes
from rwkv_core.model.config import ModelConfig
from rwkv_core.errors import CheckpointError, RWKVInspectorError
from rwkv_core.io.trace_file import Trace, TraceFileError, build_trace, load_trace

MAX_TOKENS = int(os.environ.get("RWKV_INSPECTOR_MAX_TOKENS", "4096"))  # longest prompt a page will run
HOSTED = os.environ.get("RWKV_INSPECTOR_HOSTED", "0") == "1"  # a shared server: uploads and hub downloads off
ALLOW_UPLOAD = os.environ.get("RWKV_INSPECTOR_ALLOW_UPLOAD", "0" if HOSTED else "1") == "1"
ALLOW_HUB = os.environ.get("RWKV_INSPECTOR_ALLOW_HUB", "0" if HOSTED else "1") == "1"
MAX_UPLOAD_MB = int(os.environ.get("RWKV_INSPECTOR_MAX_UPLOAD_MB", "200"))
UPLOAD_DIR = Path(tempfile.gettempdir()) / "rwkv-inspector-uploads"
URL_PROMPT_CHARS = 400  # longer prompts travel in the URL as a server-side id
PROMPT_STORE = Path.home() / ".cache" / "rwkv-inspector" / "prompts"
# The store keeps the most recently stored or opened prompts (links in use stay); the oldest beyond this go.
PROMPT_STORE_MAX_FILES = int(os.environ.get("RWKV_INSPECTOR_PROMPT_STORE_MAX_FILES", "20000"))
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
PLOTLY_CONFIG_SVG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg"}}


# ------------------------------------------------------------------------------------------------ shared resources


@st.cache_resource
def get_pool() -> ModelPool:
    return ModelPool(default_budget_bytes())


@st.cache_resource
def get_gate() -> WorkGate:
    return WorkGate(slots=1)


@st.cache_resource(ttl=60)
def get_registry() -> dict[str, ModelEntry]:
    return list_models()


@st.cache_resource
def get_extra_models() -> dict[str, ModelEntry]:
    """Models added at run time (uploads, hub downloads), by a name that carries their content hash."""
    return {}


def all_models() -> dict[str, ModelEntry]:
    return {**get_registry(), **get_extra_models()}


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


def device_choices() -> list[str]:
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


# ------------------------------------------------------------------------------------------------ cached numbers


def _loaded(model_key: tuple[str, str, str]) -> LoadedModel:
    name, device, dtype = model_key
    entry = all_models().get(name) or list_models().get(name)
    if entry is None:
        raise RWKVInspectorError(f"model {name!r} is not offered by this server")
    return get_pool().get(entry, device, dtype)


def top_k(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k next-token ids and probabilities of logits [T, V]: [T, k] each."""
    probs = torch.softmax(logits.float(), -1)
    p, i = probs.topk(min(k, probs.shape[-1]), -1)
    return i.cpu().numpy(), p.cpu().numpy()


# Top-k predictions that another forward already produced (the score pages' capture returns its logits), waiting for
# `predictions` to take them instead of running its own forward of the same prompt. Small and process-wide.
_OFFERED: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray]]" = OrderedDict()
_OFFERED_LOCK = threading.Lock()


def offer_predictions(model_key: tuple, tokens: tuple[int, ...], logits: torch.Tensor, k: int = 16) -> None:
    """Leave the top-k of `logits` [T, V] (a forward of `tokens` on `model_key`) for the next `predictions` call."""
    with _OFFERED_LOCK:
        _OFFERED[(tuple(model_key), tuple(tokens), k)] = top_k(logits, k)
        while len(_OFFERED) > 8:
            _OFFERED.popitem(last=False)


@st.cache_data(max_entries=64, show_spinner=False)
def predictions(model_key: tuple, tokens: tuple[int, ...], k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-k next-token ids and probabilities at every position: [T, k] each (one forward, unless offered)."""
    with _OFFERED_LOCK:
        offered = _OFFERED.pop((tuple(model_key), tuple(tokens), k), None)
    if offered is not None:
        return offered
    lm = _loaded(model_key)

    def run():
        with torch.no_grad():
            logits, _ = lm.model(list(tokens))
        return top_k(logits[0], k)

    return gated(run)


@st.cache_data(max_entries=256, show_spinner=False)
def layer_capture(model_key: tuple, tokens: tuple[int, ...], layer: int) -> dict[str, np.ndarray]:
    """The trace arrays of one layer (r_l, k_l, v_l, w_l, resid_l, bonus; v7 a, kk, ktilde), float32 on the CPU."""
    lm = _loaded(model_key)
    arrays = gated(lambda: build_trace(lm.model, list(tokens), layers=[layer]))
    return {k: v for k, v in arrays.items() if k.endswith(f"_l{layer}")}


@st.cache_data(max_entries=16, show_spinner=False)
def full_trace_bytes(model_key: tuple, tokens: tuple[int, ...], token_texts: tuple[str, ...]) -> bytes:
    """The whole trace file (.npz) of a prompt, for download."""
    import io

    from rwkv_core.io.trace_file import save_trace

    lm = _loaded(model_key)
    arrays = gated(lambda: build_trace(lm.model, list(tokens), token_texts=token_texts,
                                       tokenizer_kind=lm.tokenizer.kind, checkpoint_name=Path(lm.entry.path).name))
    buf = io.BytesIO()
    save_trace(arrays, buf)
    return buf.getvalue()


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
        if self.trace is not None and "logits" in self.trace.arrays:
            return top_k(torch.from_numpy(self.trace.arrays["logits"]), k)
        return None

    def layer(self, l: int) -> dict[str, np.ndarray]:
        """Arrays of layer l, keyed like the trace file (r_l{l}, ...)."""
        if self.model_key is not None:
            return layer_capture(self.model_key, tuple(self.tokens), l)
        if l not in self.trace.layers:
            raise RWKVInspectorError(f"the trace file has no layer {l}: it holds layers {self.trace.layers}")
        return {k: v for k, v in self.trace.arrays.items() if k.endswith(f"_l{l}")}

    def available_layers(self) -> list[int]:
        return list(range(self.cfg.n_layer)) if self.model_key is not None else self.trace.layers

    def token_name(self, i: Optional[int]) -> str:
        return "" if i is None else f"{self.token_texts[i]!r}@{i}"


@dataclass
class PageContext:
    runs: list[Run]
    compare: bool
    compare_what: str

    @property
    def run(self) -> Run:
        return self.runs[0]


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


def bind(key: str, default: Any, cast: Callable = str) -> None:
    """Seed a widget's session-state value from the URL, once per session (so links restore the view).

    Later runs write the value back: a widget with the same key on another page is another widget to Streamlit,
    which would otherwise forget the value on a page switch (the prompt came back empty, the model as default)."""
    if key not in st.session_state:
        st.session_state[key] = qp_get(key, default, cast)
    else:
        st.session_state[key] = st.session_state[key]


def publish(*keys: str) -> None:
    """Write the current values of these session-state keys into the URL."""
    for k in keys:
        v = st.session_state.get(k)
        if v is None or v == "":
            st.query_params.pop(k, None)
        elif str(st.query_params.get(k)) != str(v):
            st.query_params[k] = str(v)


def _prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_prompt(text: str) -> str:
    """Keep a long prompt under its content id (for a URL); the store is bounded (`PROMPT_STORE_MAX_FILES`)."""
    PROMPT_STORE.mkdir(parents=True, exist_ok=True)
    pid = _prompt_id(text)
    p = PROMPT_STORE / f"{pid}.txt"
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
    """Delete the least recently used prompts beyond `PROMPT_STORE_MAX_FILES`, and stale temp files."""
    now = time.time()
    for f in PROMPT_STORE.glob("*.tmp"):
        with contextlib.suppress(OSError):
            if now - f.stat().st_mtime > STALE_TMP_S:
                f.unlink()
    files = []
    for f in PROMPT_STORE.glob("*.txt"):
        with contextlib.suppress(OSError):
            files.append((f.stat().st_mtime, f))
    files.sort()
    for _, f in files[:max(0, len(files) - PROMPT_STORE_MAX_FILES)]:
        if f != keep:
            with contextlib.suppress(OSError):
                f.unlink()


def load_prompt(pid: str) -> Optional[str]:
    if not pid.isalnum() or len(pid) != 16:  # only our own ids: no path can be formed from a parameter
        return None
    p = PROMPT_STORE / f"{pid}.txt"
    if not p.is_file():
        return None
    with contextlib.suppress(OSError):
        os.utime(p)  # a link in use: keep it longest
    return p.read_text(encoding="utf-8")


def _publish_prompt(key: str) -> None:
    text = st.session_state.get(key, "")
    if len(text) > URL_PROMPT_CHARS:
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


def _seed_prompt(key: str, default: str) -> None:
    if key in st.session_state:
        st.session_state[key] = st.session_state[key]  # keep it across a page switch (see bind)
        return
    pid = qp_get(f"{key}_id")
    text = load_prompt(pid) if pid else None
    st.session_state[key] = text if text is not None else qp_get(key, default)


# ------------------------------------------------------------------------------------------------ sidebar


def _model_picker(key: str, models: dict[str, ModelEntry], label: str) -> Optional[ModelEntry]:
    names = list(models)
    bind(key, default_model_name(models))
    if st.session_state[key] not in models:
        if st.session_state[key]:
            st.sidebar.warning(f"Model {st.session_state[key]!r} is not offered here; showing the default.")
        st.session_state[key] = default_model_name(models)
    st.sidebar.selectbox(label, names, key=key, help="Models of the configured folders, the demo models and the "
                                                      "shared test models. Files are chosen by name, never by path.")
    entry = models[st.session_state[key]]
    if entry.description:
        st.sidebar.caption(entry.description)
    return entry


def _add_model_box() -> None:
    """Upload a checkpoint or fetch one from the Hugging Face hub (each can be switched off for a hosted server)."""
    if not (ALLOW_UPLOAD or ALLOW_HUB):
        return
    with st.sidebar.expander("Add a model"):
        if ALLOW_UPLOAD:
            up = st.file_uploader(f"Checkpoint (.pth, .bin, .safetensors; at most {MAX_UPLOAD_MB} MB)",
                                  type=["pth", "bin", "safetensors"], key="ckpt_upload")
            if up is not None:
                try:
                    entry = register_upload(up.name, up.getvalue())
                    st.session_state.model = entry.name
                    st.success(f"Loaded {up.name}")
                except RWKVInspectorError as e:
                    st.error(str(e))
        if ALLOW_HUB:
            repo = st.text_input("Hub repository", placeholder="BlinkDL/rwkv-7-world", key="hub_repo")
            fname = st.text_input("File in it", placeholder="RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth",
                                  key="hub_file")
            if st.button("Download", key="hub_go", disabled=not (repo and fname)):
                try:
                    with st.spinner("Downloading..."):
                        entry = register_hub(repo, fname)
                    st.session_state.model = entry.name
                except RWKVInspectorError as e:
                    st.error(str(e))


def register_upload(name: str, data: bytes) -> ModelEntry:
    """Keep an uploaded checkpoint under a content-hash name, after checking it loads; refuse oversized files."""
    from rwkv_core.io.checkpoint import load_checkpoint

    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise RWKVInspectorError(f"{name}: {len(data) / 2**20:.0f} MB is over the {MAX_UPLOAD_MB} MB upload limit")
    digest = hashlib.sha256(data).hexdigest()[:16]
    suffix = Path(name).suffix.lower()
    if suffix not in (".pth", ".bin", ".safetensors"):
        raise RWKVInspectorError(f"{name}: expected a .pth, .bin or .safetensors checkpoint")
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = UPLOAD_DIR / f"{digest}{suffix}"
    path.write_bytes(data)
    try:
        load_checkpoint(path)  # CheckpointError (one line) for anything wrong, hostile pickles included
    except CheckpointError as e:
        path.unlink(missing_ok=True)
        raise CheckpointError(name, e.problem) from None  # named as the user knows it, not by its digest
    except RWKVInspectorError:
        path.unlink(missing_ok=True)
        raise
    except Exception as e:  # a loader error that slipped through (torch.load reads *.safetensors by name, ...)
        path.unlink(missing_ok=True)
        detail = str(e).splitlines()[0][:120] if str(e) else ""
        raise CheckpointError(name, f"not a usable checkpoint ({type(e).__name__}: {detail})") from None
    entry = ModelEntry(f"upload: {Path(name).name} [{digest[:8]}]", str(path), "auto",
                       prompts=("The Eiffel Tower is located in the city of",))
    get_extra_models()[entry.name] = entry
    return entry


def register_hub(repo: str, filename: str) -> ModelEntry:
    """Fetch an official checkpoint from the Hugging Face hub (cached by huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=repo.strip(), filename=filename.strip())
    except Exception as e:  # no network, unknown repository or file, ...
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise RWKVInspectorError(f"could not download {repo}/{filename} from the hub ({msg}); "
                                 "without network, put the file in a configured model folder") from None
    entry = ModelEntry(f"hub: {repo}/{filename}", path, "auto", prompts=("The Eiffel Tower is located in the city of",))
    get_extra_models()[entry.name] = entry
    return entry


def _prompt_box(key: str, entry: ModelEntry, label: str) -> str:
    default = entry.prompts[0] if entry.prompts else "Hello"
    _seed_prompt(key, default)
    if entry.prompts:
        def use_example():
            st.session_state[key] = st.session_state[f"{key}_example"]
        st.sidebar.selectbox("Example prompts", entry.prompts, key=f"{key}_example", index=None,
                             placeholder="Pick an example...", on_change=use_example)
    st.sidebar.text_area(label, key=key, height=110)
    return st.session_state[key]


def _load_run(label: str, entry: ModelEntry, prompt: str, device: str, dtype: str) -> Run:
    with st.spinner(f"Loading {entry.name}..."):
        lm = get_pool().get(entry, device, dtype)
    enc = lm.tokenizer.encode(prompt)
    if len(enc.ids) == 0:
        raise RWKVInspectorError("the prompt is empty: type some text in the sidebar")
    if len(enc.ids) > MAX_TOKENS:
        raise RWKVInspectorError(f"the prompt has {len(enc.ids)} tokens; the limit here is {MAX_TOKENS}: shorten it")
    texts = [lm.tokenizer.display(i) if a == b else enc.text[a:b] for i, (a, b) in zip(enc.ids, enc.spans)]
    return Run(label, lm.model.cfg, enc.ids, texts, prompt, lm.key, lm, spans=enc.spans)


def _trace_config(raw: dict) -> ModelConfig:
    """The model config of a trace's meta, checked field by field: the meta comes from the file, and a hostile or
    hand-edited one must give a message, not a traceback."""
    import dataclasses

    try:
        cfg = ModelConfig(**raw)
        for f in dataclasses.fields(ModelConfig):
            v = getattr(cfg, f.name)
            if f.type in (int, "int"):
                ok = type(v) is int and (v > 0 if f.name in ("n_layer", "n_embd", "vocab_size", "n_head") else v >= 0)
            elif f.type in (float, "float"):
                ok = type(v) in (int, float) and v >= 0
            elif f.type in (bool, "bool"):
                ok = type(v) is bool
            elif f.name == "lora":
                ok = isinstance(v, dict) and all(isinstance(k, str) and type(n) is int for k, n in v.items())
            else:
                ok = isinstance(v, str)
            if not ok:
                raise ValueError(f"{f.name} = {v!r}")
    except (TypeError, ValueError) as e:
        raise TraceFileError(f"the trace's model config is not usable ({str(e).splitlines()[0][:120]})") from None
    return cfg


def _trace_run(label: str, upload) -> Run:
    try:
        trace = load_trace(upload)
    except RWKVInspectorError:
        raise
    except Exception as e:  # slipped through load_trace (a forged .npy header: TokenError, MemoryError, ...)
        raise TraceFileError(f"not a usable trace file ({type(e).__name__})") from None
    cfg = _trace_config(trace.meta["config"])
    layers = trace.meta.get("layers")
    if not (isinstance(layers, list) and all(type(l) is int and 0 <= l < cfg.n_layer for l in layers)):
        raise TraceFileError(f"the trace's 'layers' must be a list of layer numbers 0..{cfg.n_layer - 1}")
    tokens = [int(t) for t in trace.tokens]
    texts = trace.meta.get("token_texts")
    if not (isinstance(texts, list) and len(texts) == len(tokens) and all(isinstance(t, str) for t in texts)):
        texts = [str(t) for t in tokens]  # no (usable) token texts: show the ids
    return Run(label, cfg, tokens, texts, trace=trace)


def page_setup(title: str, icon: str = "🔎", about: str = "") -> PageContext:
    """Page config, the shared sidebar, and the run(s) the page shows. Stops the page with a one-line message
    when the input is unusable."""
    st.set_page_config(page_title=f"{title} · RWKV Inspector", page_icon=icon, layout="wide")
    st.title(title)
    if about:
        st.caption(about)
    models = all_models()
    sb = st.sidebar
    sb.header("RWKV Inspector")
    bind("source", "model")
    sb.radio("Source", ["model", "trace file"], key="source", horizontal=True,
             help="A live model, or a trace file (.npz) saved earlier: inspect it with no model and no GPU.")
    bind("device", device_choices()[0])
    bind("dtype", "fp32")
    bind("compare", "off")
    runs: list[Run] = []
    try:
        if st.session_state.source == "trace file":
            up = sb.file_uploader("Trace file (.npz)", type=["npz"], key="trace_upload")
            if up is None:
                st.info("Upload a trace file (made with `python -m rwkv_core export` or this app's download).")
                st.stop()
            runs.append(_trace_run("A", up))
            st.session_state.compare = "off"
        else:
            if not models:
                st.error("No models are configured: set RWKV_INSPECTOR_MODEL_DIRS or place ../shared beside the repo.")
                st.stop()
            _add_model_box()
            models = all_models()
            entry = _model_picker("model", models, "Model")
            with sb.expander("Device"):
                if st.session_state.device not in device_choices():
                    st.session_state.device = device_choices()[0]
                st.selectbox("Device", device_choices(), key="device")
                st.selectbox("Weights", ["fp32", "bf16", "fp16"], key="dtype",
                             help="Storage of the weight matrices; decays and states always stay fp32.")
            prompt = _prompt_box("prompt", entry, "Prompt")
            sb.radio("Compare", ["off", "prompt", "model"], key="compare", horizontal=True,
                     help="Show a second prompt, or the same prompt on a second model, side by side.")
            runs.append(_load_run("A", entry, prompt, st.session_state.device, st.session_state.dtype))
            if st.session_state.compare == "prompt":
                prompt_b = _prompt_box("prompt_b", entry, "Prompt B")
                runs.append(_load_run("B", entry, prompt_b, st.session_state.device, st.session_state.dtype))
            elif st.session_state.compare == "model":
                entry_b = _model_picker("model_b", models, "Model B")
                runs.append(_load_run("B", entry_b, prompt, st.session_state.device, st.session_state.dtype))
    except RWKVInspectorError as e:
        st.error(str(e))
        st.stop()
    publish("source", "model", "device", "dtype", "compare", "model_b")
    _publish_prompt("prompt")
    if st.session_state.get("compare") == "prompt":
        _publish_prompt("prompt_b")
    return PageContext(runs, len(runs) > 1, st.session_state.get("compare", "off"))


def show_error(e: Exception) -> None:
    st.error(str(e).splitlines()[0])


def timer_text(done: int, total: int, started: float) -> str:
    """'37% · 12 s left' for progress bars."""
    frac = done / max(total, 1)
    el = time.time() - started
    left = el / frac - el if frac > 0 else float("nan")
    return f"{frac:.0%} · {left:.0f} s left" if frac > 0 else "starting..."
