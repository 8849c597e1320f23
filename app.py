"""RWKV Inspector: the entry point and the home page (`inspector_ui.views.home`). Run with `streamlit run app.py`.

`route()` declares the pages for Streamlit's navigation (this page as "Home", the views of `pages/` at their URL
paths) and runs a view when one is asked for. The shared sidebar (model or trace file, prompt, compare mode) is built
by `inspector_ui.sidebar.page_setup` on every page, so any page works when opened first from a link.
"""
from inspector_ui.navigation import route
from inspector_ui.sidebar import page_setup
from inspector_ui.views import home

route()
ctx = page_setup("RWKV Inspector", "🔎", home.ABOUT)
home.render(ctx)
