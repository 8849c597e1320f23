"""Streamlit's page navigation of the app: the home page listed as "Home" (not "app", its file's name), then every
view of `pages/` under the URL path and title Streamlit gave it from its file name, so saved links keep working.

`app.py` is the entry point: `route()` declares the pages and runs the one asked for (stopping app.py there) unless it
is the home page, which app.py goes on to draw. Streamlit finds `pages/` at start and runs a page file directly until
someone calls `st.navigation`; `declare_if_run_directly()` (in `page_setup`) declares the pages then, so even a
server's first run, from a saved link, lists "Home".
"""
from __future__ import annotations

import re
from pathlib import Path

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
HOME_TITLE = "Home"


def view_files() -> list[Path]:
    """The view pages, `pages/N_Name.py`, in their number's order (as Streamlit sorts them)."""
    files = [p for p in (REPO / "pages").glob("*.py") if re.match(r"\d+_", p.name)]
    return sorted(files, key=lambda p: (int(p.name.split("_", 1)[0]), p.name))


def view_name(path: Path) -> str:
    """The URL path of a view: its file name without the number and ".py" ("2_Influence_spans.py" ->
    "Influence_spans"), as Streamlit names a page of `pages/`."""
    return path.stem.split("_", 1)[1]


def app_pages() -> list[st.Page]:
    """Home (app.py, the default page at "/") and the views, each at its old URL path, titled with spaces."""
    pages = [st.Page(APP, title=HOME_TITLE, default=True)]
    for path in view_files():
        name = view_name(path)
        pages.append(st.Page(path, title=name.replace("_", " "), url_path=name))
    return pages


def route() -> None:
    """app.py's first line: declare the pages; a view asked for runs here and ends app.py's run, the home page
    returns to app.py, which draws it."""
    pages = app_pages()
    page = st.navigation(pages, position="sidebar")
    if page is pages[0]:
        return
    page.run()
    st.stop()


def declare_if_run_directly() -> None:
    """Declare the pages when Streamlit ran a page file of `pages/` itself (no `route` before it: the first runs of
    a server, and AppTest): without this the sidebar would list the home page as "app".

    In a server started with app.py that run then starts the same view again through app.py's router, with the
    link's query parameters, before any widget exists: otherwise the widgets of that first run would be new to
    Streamlit at the next rerun (which goes through the router) and what the user did first, such as uploading a
    trace, would be lost. Not under AppTest (its runtime is a stand-in): it runs the page file itself on every run,
    so a restart would make the run's widgets differ from the next run's and drop its button presses."""
    if not PagesManager.uses_pages_directory:
        return
    page = st.navigation(app_pages(), position="sidebar")
    ctx = get_script_run_ctx()
    main = Path(ctx.pages_manager.main_script_path).resolve() if ctx is not None else None
    # a view of app.py's multipage app (not a page file opened on its own), in a real server
    if main == APP and page.url_path and type(Runtime.instance()) is Runtime:
        st.switch_page(page, query_params=[(k, v) for k in st.query_params for v in st.query_params.get_all(k)])
