"""The trace file in the app: the home page's download and an uploaded trace kept open for the session.

Download (`download_section`, one per run with a model): what to include (layers, the logits as the top-k per
position or [T, V], float16, the residual stream), the file's size estimated before anything is computed, a "Prepare
trace file" button that builds it in a background thread with a progress bar per block, then the download button.
The build holds the work gate and computes on its compute thread like every page's work, and touches no Streamlit
element there: it tells a `BuildProgress` (plain attributes), which a fragment of the page polls from the script
thread. Finished files are kept in a small cache shared by all sessions (each file can be hundreds of MB).

Upload (`trace_run`, the sidebar's Source = trace file): the uploaded file is parsed once and kept in the session
(one trace per session), so it stays open on every page (a `st.file_uploader` is a new widget on each page, which
lost the file and the page's selections on every switch); its name and size show in the sidebar with a Close
button. A file over the upload limit is refused with one line in the main area.
"""
from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import streamlit as st

from inspector_ui import settings
from inspector_ui.resources import loaded_model
from inspector_ui.session import Run
from inspector_ui.widgets import gated, progress_text
from rwkv_core.errors import RWKVInspectorError
from rwkv_core.io.trace_file import (COMPACT, PREDICTIONS_K, Trace, TraceFileError, build_trace,
                                     estimate_trace_bytes, load_trace, save_trace, trace_contents)
from rwkv_core.model.config import ModelConfig

MB = 2**20  # Streamlit's upload limit counts megabytes of 2^20 bytes: sizes here are shown in the same unit
FILES_KEPT = 2  # finished trace files kept for their download button (A and B of compare mode)
POLL_S = 0.4  # how often the page looks at a build's progress


# ------------------------------------------------------------------------------------------------ download


@dataclass(frozen=True)
class DownloadOptions:
    """What a downloaded trace holds (see `rwkv_core.io.trace_file.build_trace`)."""

    layers: tuple[int, ...]
    logits_topk: Optional[int] = COMPACT["logits_topk"]  # None: the full logits [T, V]
    float16: bool = COMPACT["float16"]
    residual: bool = COMPACT["residual"]

    def build_kwargs(self) -> dict:
        return {"layers": list(self.layers), "logits_topk": self.logits_topk, "float16": self.float16,
                "residual": self.residual}

    def estimate(self, cfg: ModelConfig, n_tokens: int) -> int:
        """The file's size in bytes before it is built."""
        return estimate_trace_bytes(cfg, n_tokens, **self.build_kwargs())


class BuildCancelled(RWKVInspectorError):
    """A build given up for a newer one of the same session and run."""


class BuildProgress:
    """A build's state, told by the build (compute thread, no Streamlit) and read by the page (script thread).
    phase: waiting (for the shared model), building (done / total blocks of the forward pass, then the logits),
    writing (the .npz), done, failed (error holds one line)."""

    def __init__(self) -> None:
        self.phase, self.done, self.total, self.error = "waiting", 0, 1, ""
        self.started = time.monotonic()
        self.cancelled = False
        self.size = 0  # bytes, once done

    def tell(self, done: int, total: int) -> None:
        """`build_trace`'s progress callback: raises (stopping the build) once the build was cancelled."""
        if self.cancelled:
            raise BuildCancelled("the build was replaced by a newer one")
        self.phase, self.done, self.total = "building", done, total

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    @property
    def fraction(self) -> float:
        return {"waiting": 0.0, "writing": 0.97, "done": 1.0}.get(self.phase, 0.95 * self.done / max(1, self.total))

    def text(self) -> str:
        if self.phase == "waiting":
            return "Trace file: waiting for the shared model..."
        if self.phase == "writing":
            return "Trace file: writing the .npz..."
        return progress_text("Trace file", self.done, self.total, time.monotonic() - self.started,
                             unit="blocks and the logits")


_FILES: "OrderedDict[tuple, bytes]" = OrderedDict()
_BUILDS: dict[tuple, BuildProgress] = {}
_LOCK = threading.Lock()


def _file_key(model_key: tuple, tokens: tuple[int, ...], token_texts: tuple[str, ...],
              options: DownloadOptions) -> tuple:
    return (tuple(model_key), tuple(tokens), tuple(token_texts), options)


def prepared_file(key: tuple) -> Optional[bytes]:
    """The finished file of a build key, or None (not built, or dropped for newer ones)."""
    with _LOCK:
        return _FILES.get(key)


def trace_file_bytes(model_key: tuple, tokens: tuple[int, ...], token_texts: tuple[str, ...],
                     options: DownloadOptions, progress: Optional[BuildProgress] = None) -> bytes:
    """The trace file (.npz) of a prompt with these options, built once and kept (FILES_KEPT files). Touches no
    Streamlit element or cache, so it may run outside a script run (a thread, a download button's callable)."""
    key = _file_key(model_key, tokens, token_texts, options)
    with _LOCK:
        if key in _FILES:
            _FILES.move_to_end(key)
            return _FILES[key]
    progress = progress or BuildProgress()
    lm = loaded_model(model_key)
    arrays = gated(lambda: build_trace(lm.model, list(tokens), token_texts=list(token_texts),
                                       tokenizer_kind=lm.tokenizer.kind, checkpoint_name=Path(lm.entry.path).name,
                                       progress=progress.tell, **options.build_kwargs()),
                   show_waiting=False)
    progress.phase = "writing"
    buf = io.BytesIO()
    save_trace(arrays, buf)
    del arrays
    data = buf.getvalue()
    with _LOCK:
        _FILES[key] = data
        while len(_FILES) > FILES_KEPT:
            _FILES.popitem(last=False)
    progress.size, progress.phase = len(data), "done"
    return data


def start_build(key: tuple, previous: Optional[BuildProgress] = None) -> BuildProgress:
    """Build the file of `key` in a background thread (or join the build of it already running) and return its
    progress; `previous`, this session's earlier build of the run, is cancelled if it is still going."""
    with _LOCK:
        running = _BUILDS.get(key)
        if running is not None and not running.finished and not running.cancelled:
            return running
        progress = _BUILDS[key] = BuildProgress()
    if previous is not None and previous is not progress and not previous.finished:
        previous.cancelled = True

    def work() -> None:
        try:
            trace_file_bytes(*key, progress=progress)
        except Exception as e:  # noqa: BLE001 - shown on the page as one line
            progress.error, progress.phase = (str(e).splitlines() or [type(e).__name__])[0], "failed"
        finally:
            with _LOCK:
                if _BUILDS.get(key) is progress:
                    del _BUILDS[key]

    threading.Thread(target=work, name="trace-file", daemon=True).start()
    return progress


def _options(run: Run) -> DownloadOptions:
    """The download options of a run, from its widgets (all layers, top-16 logits, float16, no residual stream by
    default)."""
    cfg, sfx = run.cfg, run.label
    layers = st.multiselect("Layers", list(range(cfg.n_layer)), default=list(range(cfg.n_layer)),
                            key=f"trace_layers_{sfx}", help="Layers 0..L-1 whose activations go in the file.")
    c1, c2 = st.columns(2)
    full = c1.radio("Logits", ["top-k per position", "full [T, V]"], key=f"trace_logits_{sfx}",
                    help="The top-k most likely next tokens at each position (ids and log-probabilities: the pages' "
                         "predictions), or every logit (T x vocabulary floats).") == "full [T, V]"
    k = c2.number_input("k", min_value=1, max_value=cfg.vocab_size, value=min(PREDICTIONS_K, cfg.vocab_size),
                        key=f"trace_topk_{sfx}", disabled=full, help=f"The pages show the top {PREDICTIONS_K}.")
    float16 = st.checkbox("float16 activations", value=True, key=f"trace_f16_{sfx}",
                          help="Half the size; the decay is stored as ln w, which float16 keeps to 0.05 %.")
    residual = st.checkbox("Residual stream after each block", value=False, key=f"trace_resid_{sfx}",
                           help="resid_l{l} [T, C]: for your own analysis (no page reads it).")
    return DownloadOptions(tuple(sorted(int(l) for l in layers)), None if full else int(k), float16, residual)


def download_section(run: Run) -> None:
    """The trace download of one run with a model: options, estimated size, Prepare with progress, Download."""
    limit = upload_limit_mb()
    with st.expander("Trace file (.npz): download this run, open it later without a model"):
        options = _options(run)
        if not options.layers:
            st.info("Choose at least one layer.")
            return
        est = options.estimate(run.cfg, len(run.tokens))
        st.caption(f"Estimated size: **{est / MB:,.1f} MB** ({len(options.layers)} layers, "
                   f"{'full logits' if options.logits_topk is None else f'top-{options.logits_topk} logits'}, "
                   f"{'float16' if options.float16 else 'float32'}). This app opens trace files up to {limit} MB.")
        if est > limit * MB:
            st.warning(f"Over the {limit} MB upload limit: this app will not open it again. Choose fewer layers, "
                       "top-k logits or float16.")
        key = _file_key(run.model_key, tuple(run.tokens), tuple(run.token_texts), options)
        slot = f"trace_build_{run.label}"
        if st.button("Prepare trace file", key=f"trace_prepare_{run.label}", disabled=prepared_file(key) is not None):
            held = st.session_state.get(slot)
            st.session_state[slot] = (key, start_build(key, held[1] if held else None))
        _follow(run, key, slot)


def _follow(run: Run, key: tuple, slot: str) -> None:
    """Progress of this run's build while it runs (a fragment polling it), then the download button."""
    held = st.session_state.get(slot)
    progress = held[1] if held is not None and held[0] == key else None
    building = progress is not None and not progress.finished

    @st.fragment(run_every=POLL_S if building else None)
    def follow() -> None:
        if progress is not None and not progress.finished:
            st.progress(progress.fraction, text=progress.text())
            return
        if building:  # it finished since the page was drawn: draw the page again, without the polling
            st.rerun()
        if progress is not None and progress.phase == "failed":
            st.error(f"The trace file could not be built: {progress.error}")
        data = prepared_file(key)
        if data is not None:
            st.download_button(f"Download the trace (.npz, {len(data) / MB:,.1f} MB)",
                               data=lambda: trace_file_bytes(*key), file_name=f"trace_{len(run.tokens)}_tokens.npz",
                               mime="application/octet-stream", key=f"dl_trace_{run.label}",
                               help="Open it later with no model (sidebar: Source = trace file).")

    follow()


# ------------------------------------------------------------------------------------------------ upload


OPEN_KEY = "trace_open"  # the session's open trace (an OpenTrace), kept across pages


@dataclass
class OpenTrace:
    """An uploaded trace, parsed once and kept for the session."""

    name: str
    size: int  # bytes of the file
    trace: Trace
    contents: object  # rwkv_core.io.trace_file.TraceContents


def upload_limit_mb() -> int:
    """The largest trace file this server takes: RWKV_INSPECTOR_MAX_UPLOAD_MB, capped by Streamlit's own
    server.maxUploadSize (a file over that never reaches the app)."""
    return int(min(settings.MAX_UPLOAD_MB, st.get_option("server.maxUploadSize")))


def limit_advice() -> str:
    """What to do about a trace file over the upload limit."""
    return ("download it again with fewer layers, top-k logits or float16 (home page: Trace file, or `python -m "
            "rwkv_core export --layers ... --logits-topk 16 --float16`), or raise RWKV_INSPECTOR_MAX_UPLOAD_MB "
            "together with server.maxUploadSize")


def open_trace(name: str, size: int, data) -> OpenTrace:
    """Parse an uploaded trace (bytes or a file) and check what the pages need: TraceFileError otherwise."""
    try:
        trace = load_trace(data)
    except RWKVInspectorError:
        raise
    except Exception as e:  # slipped through load_trace (a forged .npy header: TokenError, MemoryError, ...)
        raise TraceFileError(f"not a usable trace file ({type(e).__name__})") from None
    return OpenTrace(name, size, trace, trace_contents(trace))  # TraceFileError for a config or layers unusable


def _close() -> None:
    st.session_state.pop(OPEN_KEY, None)


def trace_run(label: str = "A") -> Run:
    """The run of the session's open trace file; until one is open, the sidebar's uploader and one line in the main
    area (the page stops there). A file over the upload limit is refused in one line saying what to do."""
    limit = upload_limit_mb()
    held: Optional[OpenTrace] = st.session_state.get(OPEN_KEY)
    if held is None:
        up = st.sidebar.file_uploader(f"Trace file (.npz, at most {limit} MB)", type=["npz"], key="trace_upload",
                                      max_upload_size=limit)
        if up is None:
            st.info(f"Upload a trace file (.npz, at most {limit} MB), made with this app's download (home page) or "
                    f"`python -m rwkv_core export`. For a larger one, {limit_advice()}.")
            st.stop()
        if up.size > limit * MB:
            st.error(f"{up.name} is {up.size / MB:,.1f} MB, over the {limit} MB upload limit: {limit_advice()}.")
            st.stop()
        st.session_state[OPEN_KEY] = open_trace(up.name, up.size, up)
        st.rerun()  # a run without the uploader: Streamlit drops its file, and Close later finds it empty
    c = held.contents
    layers = c.layers
    span = f"{layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and layers else \
        ", ".join(map(str, layers)) or "none"
    st.sidebar.caption(f"Trace file **{held.name}** ({held.size / MB:,.1f} MB): {len(c.tokens):,} tokens, RWKV "
                       f"v{c.cfg.version}, layers {span}. It stays open on every page until closed.")
    st.sidebar.button("Close the trace file", key="trace_close", on_click=_close)
    return Run(label, c.cfg, c.tokens, c.token_texts, trace=held.trace)
