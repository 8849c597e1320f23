"""Causal tracing and layer ablation, ROME style, with RWKV's two paths told apart (`inspector_ui.views.tracing`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import tracing

ctx = page_setup("Causal tracing and layer ablation", "🔬", tracing.ABOUT)
tracing.render(ctx)
