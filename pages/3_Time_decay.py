"""Time decay: per-channel decay of every layer, per-token decay of v6/v7, retention and state size (`inspector_ui.views.decay`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import decay

ctx = page_setup("Time decay", "⏳", decay.ABOUT)
decay.render(ctx)
