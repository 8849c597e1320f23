"""Logit lens: the next-token distribution read off the residual stream after every layer (`inspector_ui.views.lens`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import lens

ctx = page_setup("Logit lens", "🔭", lens.ABOUT)
lens.render(ctx)
