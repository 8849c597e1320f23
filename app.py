"""RWKV Inspector: the home page (`inspector_ui.views.home`). Run with `streamlit run app.py`.

The shared sidebar (model or trace file, prompt, compare mode) is built by `inspector_ui.sidebar.page_setup` on every
page, so any page works when opened first from a link.
"""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import home

ctx = page_setup("RWKV Inspector", "🔎", home.ABOUT)
home.render(ctx)
