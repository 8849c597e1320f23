"""Attention scores (R·W·K): what each token reads from, per layer and head (`inspector_ui.views.scores`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import scores

ctx = page_setup("Attention scores (R·W·K)", "🎯", scores.ABOUT[scores.ATTN])
scores.render(ctx, scores.ATTN)
