"""Causal tracing over a set of facts: ROME's average indirect effect (`inspector_ui.views.batch`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import batch

ctx = page_setup("Batch tracing", "📚", batch.ABOUT)
batch.render(ctx)
