"""Process-wide resources shared by every session: the model pool, the work gate, and the models on offer.

One model instance per (checkpoint, device, dtype) serves all sessions; the pool evicts the least recently used
model when a memory budget would be exceeded. Hooks attached to a shared model are global state, so every forward
pass runs while holding the work gate: one heavy job at a time (per gate slot), the others wait in line and are
told their place. `ModelPool` and `WorkGate` take callbacks for waiting, and are tested without Streamlit.
"""
from __future__ import annotations

import gc
import hashlib
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import streamlit as st
import torch

from inspector_ui import settings
from inspector_ui.registry import ModelEntry, list_models
from rwkv_core.compute import ComputeThread
from rwkv_core.io.checkpoint import load_checkpoint, load_model
from rwkv_core.io.tokenizer import Tokenizer, tokenizer_for
from rwkv_core.model.rwkv import DTYPES
from rwkv_core.errors import CheckpointError, RWKVInspectorError
from rwkv_core.jobs.factsets import FactSetRuns
from rwkv_core.jobs.manager import ClusterSettings, JobManager
from rwkv_core.jobs.specs import ModelSpec


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: torch.nn.Module
    tokenizer: Tokenizer
    device: str
    dtype: str
    n_bytes: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.entry.name, self.device, self.dtype)


def make_tokenizer(entry: ModelEntry, vocab_size: int) -> Tokenizer:
    return tokenizer_for(vocab_size, kind=entry.tokenizer, path=entry.tokenizer_file)


class ModelPool:
    """Loaded models by (name, device, dtype), least recently used evicted beyond `budget_bytes`."""

    def __init__(self, budget_bytes: int, run: Callable[[Callable[[], Any]], Any] = lambda fn: fn()):
        self.budget_bytes = budget_bytes
        self._run = run  # where loading computes (the work gate's compute thread in the app)
        self._models: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, entry: ModelEntry, device: str = "cpu", dtype: str = "fp32") -> LoadedModel:
        key = (entry.name, device, dtype)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            ckpt = load_checkpoint(entry.path, dtype=DTYPES[dtype])  # CheckpointError on anything wrong: nothing is kept
            if entry.tokenizer == "auto" and entry.tokenizer_file is None and ckpt.tokenizer:
                entry = replace(entry, tokenizer=ckpt.tokenizer[0], tokenizer_file=ckpt.tokenizer[1])  # its own
            model = self._run(lambda: load_model(ckpt, device=device, dtype=DTYPES[dtype], take=True))
            tok = make_tokenizer(entry, model.cfg.vocab_size)
            n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            while self._models and self.total_bytes() + n_bytes > self.budget_bytes:
                self._models.popitem(last=False)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            loaded = LoadedModel(entry, model, tok, device, dtype, n_bytes)
            self._models[key] = loaded
            settle_heap()
            return loaded

    def total_bytes(self) -> int:
        return sum(m.n_bytes for m in self._models.values())

    def loaded_names(self) -> list[tuple]:
        return list(self._models)


def settle_heap() -> None:
    """Collect what a load or an eviction left in reference cycles, then freeze every object that exists now
    (`gc.freeze`), so later collections skip them. Streamlit runs a full collection after every rerun; without
    this it walks the ~260,000 objects of torch, plotly, pandas, the model and its tokenizer every time (0.1-0.3 s
    per rerun on 2 cores). Unfreezing first lets an evicted model's cycles be collected: nothing frozen leaks."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class WorkGate:
    """First come, first served access to the compute device for `slots` jobs at a time. Each slot owns one
    long-lived compute thread (`rwkv_core.compute`): the work runs there, where torch's thread pool stays warm and
    is the only one (a page's script thread is a new thread on every rerun)."""

    def __init__(self, slots: int = 1):
        self._slots = slots
        self._all = [ComputeThread(f"rwkv-compute-{i}") for i in range(slots)]
        self._free = list(self._all)
        self._queue: deque = deque()
        self._cond = threading.Condition()

    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    @contextmanager
    def slot(self, on_wait: Optional[Callable[[int], None]] = None, poll_s: float = 0.3):
        """Hold one slot for the block; yields the slot's compute thread. `on_wait(jobs_ahead)` is called while
        waiting; if it raises (the user cancelled, the session ended), the place in line is given up."""
        me = object()
        held: Optional[ComputeThread] = None
        with self._cond:
            self._queue.append(me)
        try:
            while True:
                with self._cond:
                    if self._queue[0] is me and self._free:
                        self._queue.popleft()
                        held = self._free.pop()
                        break
                    ahead = self._slots - len(self._free) + list(self._queue).index(me)
                    self._cond.wait(timeout=poll_s)
                if on_wait is not None:
                    on_wait(ahead)
            yield held
        finally:
            with self._cond:
                if held is not None:
                    self._free.append(held)
                elif me in self._queue:
                    self._queue.remove(me)
                self._cond.notify_all()

    def run_now(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the first slot's compute thread without taking a place in line (loading a model: the work that
        follows needs it). It still waits for the work in hand there."""
        return self._all[0].call(fn)


# ------------------------------------------------------------------------------------------------ shared by all sessions


# No spinners: these are also reached outside a script run (a download's data callable), where a spinner element
# would only log "missing ScriptRunContext".
@st.cache_resource(show_spinner=False)
def get_pool() -> ModelPool:
    return ModelPool(settings.model_budget_bytes(), run=get_gate().run_now)


@st.cache_resource(show_spinner=False)
def get_gate() -> WorkGate:
    return WorkGate(slots=1)


@st.cache_resource(show_spinner=False)
def get_jobs() -> JobManager:
    """The job manager of this server: Ray started here (or joined at RWKV_INSPECTOR_RAY_ADDRESS) and its workers."""
    cluster = ClusterSettings(address=settings.ray_address(), workers=settings.JOB_WORKERS,
                              per_user_running=settings.JOBS_PER_USER, per_user_queued=settings.JOBS_QUEUED_PER_USER)
    try:
        return JobManager(cluster)
    except Exception as e:  # Ray could not start or the cluster is not reachable
        where = f"the Ray cluster at {cluster.address}" if cluster.address else "Ray on this machine"
        raise RWKVInspectorError(f"could not start {where} for the tracing jobs ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:160]}); check {settings.RAY_ADDRESS_ENV}") from None


@st.cache_resource(show_spinner=False)
def get_factset_runs() -> FactSetRuns:
    """The fact-set runs of this server (the Batch tracing page), each driven by a thread on the job manager."""
    return FactSetRuns(settings.factset_dir(), get_jobs, per_user=settings.FACTSETS_PER_USER)


_WARMING = threading.Event()


def warm_jobs() -> None:
    """Start the job manager (Ray and its workers: seconds) on a background thread, once per process, so that no
    page waits for it; a failure is left for the `get_jobs()` call that needs the manager, which reports it."""
    if _WARMING.is_set():
        return
    _WARMING.set()

    def start() -> None:
        try:
            get_jobs()
        except RWKVInspectorError:
            pass

    threading.Thread(target=start, name="rwkv-inspector-jobs-start", daemon=True).start()


def model_spec(lm: LoadedModel) -> ModelSpec:
    """How a job worker loads the same model: the file, its tokenizer, the device and precision."""
    return ModelSpec(str(lm.entry.path), lm.entry.tokenizer, lm.entry.tokenizer_file, lm.device, lm.dtype)


@st.cache_resource(ttl=60, show_spinner=False)
def get_registry() -> dict[str, ModelEntry]:
    return list_models()


@st.cache_resource(show_spinner=False)
def get_extra_models() -> dict[str, ModelEntry]:
    """Models added at run time (uploads, hub downloads), by a name that carries their content hash."""
    return {}


def all_models() -> dict[str, ModelEntry]:
    return {**get_registry(), **get_extra_models()}


def device_choices() -> list[str]:
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def loaded_model(model_key: tuple[str, str, str]) -> LoadedModel:
    name, device, dtype = model_key
    entry = all_models().get(name) or list_models().get(name)
    if entry is None:
        raise RWKVInspectorError(f"model {name!r} is not offered by this server")
    return get_pool().get(entry, device, dtype)


def register_upload(name: str, data: bytes) -> ModelEntry:
    """Keep an uploaded checkpoint under a content-hash name, after checking it loads; refuse oversized files."""
    if len(data) > settings.MAX_UPLOAD_MB * 2**20:
        raise RWKVInspectorError(f"{name}: {len(data) / 2**20:.0f} MB is over the {settings.MAX_UPLOAD_MB} MB upload limit")
    digest = hashlib.sha256(data).hexdigest()[:16]
    suffix = Path(name).suffix.lower()
    if suffix not in (".pth", ".bin", ".safetensors", ".gguf"):
        raise RWKVInspectorError(f"{name}: expected a .pth, .bin, .safetensors or .gguf checkpoint")
    settings.UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = settings.UPLOAD_DIR / f"{digest}{suffix}"
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


HUB_FOLDER_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "rwkv_vocab_v20230424.txt",
                    "tokenizer.json"]  # a Hugging Face folder: no code, no optimizer states, no other formats


def _hub_folder(repo: str) -> str:
    """The Hugging Face folder of `repo` (config, safetensors or else pytorch_model.bin, tokenizer), downloaded."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo_id=repo, allow_patterns=HUB_FOLDER_FILES)
    if not any(Path(path).glob("*.safetensors")):
        path = snapshot_download(repo_id=repo, allow_patterns=["pytorch_model.bin", "pytorch_model*.bin*"])
    return path


def register_hub(repo: str, filename: str) -> ModelEntry:
    """Fetch an official checkpoint file from the Hugging Face hub, or with no file name the repository's Hugging
    Face folder (cached by huggingface_hub); the folder is checked as an upload is."""
    repo, filename = repo.strip(), filename.strip()
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=repo, filename=filename) if filename else _hub_folder(repo)
    except Exception as e:  # no network, unknown repository or file, ...
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise RWKVInspectorError(f"could not download {repo}/{filename} from the hub ({msg}); "
                                 "without network, put the file in a configured model folder") from None
    if not filename:
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(repo, e.problem) from None
    name = f"hub: {repo}/{filename}" if filename else f"hub: {repo}"
    entry = ModelEntry(name, path, "auto", prompts=("The Eiffel Tower is located in the city of",))
    get_extra_models()[entry.name] = entry
    return entry
