"""Influence spans (W·K norm): how long each token's key stays in the state, per layer and head (`inspector_ui.views.scores`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import scores

ctx = page_setup("Influence spans (W·K norm)", "🌊", scores.ABOUT[scores.SPAN])
scores.render(ctx, scores.SPAN)
