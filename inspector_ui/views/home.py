"""The home page below the shared sidebar: what the tool does, links to the views, each run's model card, the
tokenized prompt with character spans and top-16 predictions on hover, and the trace download (options, size,
progress: `inspector_ui.traces`)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from inspector_ui.session import PageContext
from inspector_ui.traces import download_section
from inspector_ui.widgets import token_view

ABOUT = ("Look inside an RWKV language model while it reads a prompt: what each head "
         "reads (R·W·K), how long tokens stay in the state (W·K norm), the decay of every channel, where "
         "a fact travels (causal tracing, up the layers and forward through the state), where the answer forms "
         "(logit lens) and what the state holds.")

VIEWS = [
    ("pages/1_Attention.py", "Attention scores (R·W·K)", "which earlier tokens each token reads from, per layer and head"),
    ("pages/2_Influence_spans.py", "Influence spans (W·K norm)", "how long each token's key stays in the state"),
    ("pages/3_Time_decay.py", "Time decay", "per-channel decay of every layer, and which tokens make heads forget"),
    ("pages/4_Causal_tracing.py", "Causal tracing", "restore clean states and see where the answer comes back"),
    ("pages/5_Logit_lens.py", "Logit lens", "the prediction read off every layer: where the answer forms"),
    ("pages/6_State.py", "State", "what each head's memory holds, how full it gets, what it returns"),
    ("pages/7_Patching.py", "Patching", "patch a clean prompt into a corrupted one, exactly and by attribution; "
                                        "move the memory between prompts"),
    ("pages/8_Batch_tracing.py", "Batch tracing", "trace a set of facts on the workers: ROME's average effect per "
                                                  "layer and token class"),
]


def render(ctx: PageContext) -> None:
    """Links to the views, then one column per run."""
    cols = st.columns(len(VIEWS))
    for col, (path, label, what) in zip(cols, VIEWS):
        with col:
            try:
                st.page_link(path, label=label)
            except Exception:  # a view not installed yet
                st.write(label)
            st.caption(what)

    for col, run in zip(st.columns(len(ctx.runs)), ctx.runs):
        with col:
            st.subheader(run.title)
            cfg = run.cfg
            card = {"version": f"RWKV v{cfg.version}", "layers": cfg.n_layer, "width (n_embd)": cfg.n_embd,
                    "heads": cfg.n_head if cfg.has_heads else "— (per channel)",
                    "head size": cfg.head_size if cfg.has_heads else "—", "FFN width": cfg.dim_ffn,
                    "vocabulary": cfg.vocab_size}
            if run.loaded is not None:
                info = run.model_key and run.loaded.model.checkpoint_info
                card.update({"parameters": f"{info['n_params']:,}", "stored as": info["dtype"], "format": info["format"],
                             "tokenizer": run.loaded.tokenizer.kind, "device": run.model_key[1],
                             "weights": run.model_key[2]})
            st.table(pd.DataFrame({"": list(card.keys()), "value": [str(v) for v in card.values()]}).set_index(""))
            st.markdown(f"**Prompt: {len(run.tokens)} tokens.** Hover a token for the model's top-16 next-token "
                        "predictions there (the actual next token highlighted).")
            token_view(run.token_texts, key=f"home_tokens_{run.label}", tips=run.hover_tips())
            spans = run.spans or [None] * len(run.tokens)
            df = pd.DataFrame({"token": run.token_texts, "id": run.tokens,
                               "span": [f"{s[0]}–{s[1]}" if s else "" for s in spans]})
            with st.expander("Tokens and their character spans"):
                st.dataframe(df, width="stretch")
            if run.model_key is not None:
                download_section(run)
