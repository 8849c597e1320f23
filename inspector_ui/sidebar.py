"""The shared sidebar every page builds first: model (or trace file), device, prompt and compare mode.

Every page starts with `ctx = page_setup("Title")`; `ctx.runs` holds one run (or two in compare mode). Any page works
when opened first from a link: the sidebar's state comes from the URL.
"""
from __future__ import annotations

from typing import Optional

import streamlit as st

from inspector_ui import settings
from inspector_ui.navigation import declare_if_run_directly
from inspector_ui.registry import ModelEntry, can_read, default_model_b_name, default_model_name, example_prompts
from inspector_ui.resources import (LoadedModel, all_models, device_choices, get_gate, get_pool, register_hub,
                                    register_upload)
from inspector_ui.session import PageContext, Run, bind, publish, publish_prompt, seed_prompt
from inspector_ui.traces import trace_run
from rwkv_core.errors import RWKVInspectorError
from inspector_ui.widgets import static_running_indicator


def _model_picker(key: str, models: dict[str, ModelEntry], label: str,
                  default: Optional[str] = None) -> Optional[ModelEntry]:
    """The model selectbox `key`, seeded from the URL; a name not offered becomes `default` (the app's default
    model when None), with a warning."""
    names = list(models)
    default = default or default_model_name(models)
    bind(key, default)
    if st.session_state[key] not in models:
        if st.session_state[key]:
            st.sidebar.warning(f"Model {st.session_state[key]!r} is not offered here; showing the default.")
        st.session_state[key] = default
    st.sidebar.selectbox(label, names, key=key, help="Models of the configured folders, the demo models and the "
                                                      "shared test models. Files are chosen by name, never by path.")
    entry = models[st.session_state[key]]
    if entry.description:
        st.sidebar.caption(entry.description)
    return entry


def _add_model_box() -> None:
    """Upload a checkpoint or fetch one from the Hugging Face hub (each can be switched off for a hosted server)."""
    if not (settings.ALLOW_UPLOAD or settings.ALLOW_HUB):
        return
    with st.sidebar.expander("Add a model"):
        if settings.ALLOW_UPLOAD:
            up = st.file_uploader(f"Checkpoint (.pth, .bin, .safetensors, .gguf; at most {settings.MAX_UPLOAD_MB} MB)",
                                  type=["pth", "bin", "safetensors", "gguf"], key="ckpt_upload")
            if up is not None:
                try:
                    entry = register_upload(up.name, up.getvalue())
                    st.session_state.model = entry.name
                    st.success(f"Loaded {up.name}")
                except RWKVInspectorError as e:
                    st.error(str(e))
        if settings.ALLOW_HUB:
            repo = st.text_input("Hub repository", placeholder="BlinkDL/rwkv-7-world", key="hub_repo")
            fname = st.text_input("File in it (empty: the Hugging Face folder)",
                                  placeholder="RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth", key="hub_file",
                                  help="A .pth, .safetensors or .gguf file; leave empty for a Hugging Face folder such "
                                       "as fla-hub/rwkv7-0.1B-world (config, weights and tokenizer)")
            if st.button("Download", key="hub_go", disabled=not repo):
                try:
                    with st.spinner("Downloading..."):
                        entry = register_hub(repo, fname)
                    st.session_state.model = entry.name
                except RWKVInspectorError as e:
                    st.error(str(e))


def _loaded(entry: ModelEntry, device: str, dtype: str) -> LoadedModel:
    with st.spinner(f"Loading {entry.name}..."):
        return get_pool().get(entry, device, dtype)


def _prompt_box(key: str, lm: LoadedModel, label: str) -> str:
    """The prompt text area, seeded with the first example the model's tokenizer can read; for a model typed as
    token ids, a line saying so (and an example in place of text left from another model)."""
    prompts = example_prompts(lm.entry, lm.tokenizer)
    seed_prompt(key, prompts[0] if prompts else "Hello")
    typed_as_ids = lm.tokenizer.kind == "ids"
    model_changed = st.session_state.get(f"{key}_read_by") != lm.entry.name
    st.session_state[f"{key}_read_by"] = lm.entry.name
    # Text typed for another model (or in a link) means nothing as ids: start from an example. A prompt typed for
    # this model stays, typos included, and gets the tokenizer's message.
    replaced = typed_as_ids and model_changed and bool(prompts) and not can_read(lm.tokenizer, st.session_state[key])
    if replaced:
        st.session_state[key] = prompts[0]
    if prompts:
        def use_example():
            st.session_state[key] = st.session_state[f"{key}_example"]
        st.sidebar.selectbox("Example prompts", prompts, key=f"{key}_example", index=None,
                             placeholder="Pick an example...", on_change=use_example)
    st.sidebar.text_area(label, key=key, height=110)
    if typed_as_ids:
        n = lm.tokenizer.vocab_size
        st.sidebar.caption(f"Token ids: this model's vocabulary ({n} ids) matches no tokenizer, so the prompt is "
                           f"typed as token ids 0..{n - 1}, separated by commas or spaces (1, 2, 3)."
                           + (" The earlier prompt was not token ids: an example stands in its place." if replaced
                              else ""))
    return st.session_state[key]


def _load_run(label: str, lm: LoadedModel, prompt: str) -> Run:
    enc = lm.tokenizer.encode(prompt)
    if len(enc.ids) == 0:
        raise RWKVInspectorError("the prompt is empty: type some text in the sidebar")
    if len(enc.ids) > settings.MAX_TOKENS:
        raise RWKVInspectorError(f"the prompt has {len(enc.ids)} tokens; the limit here is {settings.MAX_TOKENS}: shorten it")
    if lm.tokenizer.kind == "ids":  # the typed text of a token holds its separators: show the id alone
        texts = [lm.tokenizer.display(i) for i in enc.ids]
    else:
        texts = [lm.tokenizer.display(i) if a == b else enc.text[a:b] for i, (a, b) in zip(enc.ids, enc.spans)]
    return Run(label, lm.model.cfg, enc.ids, texts, prompt, lm.key, lm, spans=enc.spans)


def _pool_note() -> str:
    """What the shared model pool holds, for a team on one server: which models, and how much of the budget."""
    pool = get_pool()
    held = ", ".join(f"{name} ({device}, {dtype})" for name, device, dtype in pool.loaded_names())
    waiting = get_gate().waiting()
    return (f"Loaded on this server: {held or 'none'}; {pool.total_bytes() / 2**30:.2f} of "
            f"{pool.budget_bytes / 2**30:.2f} GiB of weights (least recently used unloaded beyond that). "
            f"Jobs waiting for the model now: {waiting}.")


def page_setup(title: str, icon: str = "🔎", about: str = "") -> PageContext:
    """Page config, the shared sidebar, and the run(s) the page shows. Stops the page with a one-line message
    when the input is unusable."""
    declare_if_run_directly()
    st.set_page_config(page_title=f"{title} · RWKV Inspector", page_icon=icon, layout="wide")
    static_running_indicator()
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
            runs.append(trace_run("A"))  # the session's open trace, kept across pages; else the uploader
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
                pool_note = st.empty()  # filled once this run's model is loaded
            lm = _loaded(entry, st.session_state.device, st.session_state.dtype)
            pool_note.caption(_pool_note())
            prompt = _prompt_box("prompt", lm, "Prompt")
            sb.radio("Compare", ["off", "prompt", "model"], key="compare", horizontal=True,
                     help="Show a second prompt, or the same prompt on a second model, side by side.")
            runs.append(_load_run("A", lm, prompt))
            if st.session_state.compare == "prompt":
                runs.append(_load_run("B", lm, _prompt_box("prompt_b", lm, "Prompt B")))
            elif st.session_state.compare == "model":
                entry_b = _model_picker("model_b", models, "Model B", default_model_b_name(models, entry.name))
                runs.append(_load_run("B", _loaded(entry_b, st.session_state.device, st.session_state.dtype), prompt))
    except RWKVInspectorError as e:
        st.error(str(e))
        st.stop()
    publish("source", "model", "device", "dtype", "compare", "model_b")
    publish_prompt("prompt")
    if st.session_state.get("compare") == "prompt":
        publish_prompt("prompt_b")
    return PageContext(runs, len(runs) > 1, st.session_state.get("compare", "off"))
