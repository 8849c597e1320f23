"""Patching between two prompts (exact and attribution patching) and moving the recurrent state between prompts
(`inspector_ui.views.patching`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import patching

ctx = page_setup("Patching", "🩹", patching.ABOUT)
patching.render(ctx)
