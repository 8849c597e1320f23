"""The house rules that keep the code readable: thin pages, no path edits, no Streamlit in the engine."""
from __future__ import annotations

import ast
import subprocess

import pytest

from tests.conftest import PAGES, PAGE_IDS, REPO


def _python_files() -> list:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [REPO / f for f in out.split()]
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    return files + [REPO / f for f in untracked.split()]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_a_page_is_its_setup_and_one_view_call(page):
    """A page holds a docstring, imports, `ctx = page_setup(...)` and one call of a view's render: nothing else.
    app.py, the entry point, first calls `route()` (Streamlit's navigation: inspector_ui.navigation)."""
    tree = ast.parse(page.read_text(encoding="utf-8"))
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    code = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    if page.name == "app.py":
        first = code.pop(0) if code else None
        assert (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
                and getattr(first.value.func, "id", None) == "route"), "app.py: first must be route()"
    assert len(code) == 2, f"{page.name}: {len(code)} statements besides imports; expected page_setup and one view call"
    setup, call = code
    assert isinstance(setup, ast.Assign) and isinstance(setup.value, ast.Call), f"{page.name}: first must be ctx = page_setup(...)"
    assert getattr(setup.value.func, "id", None) == "page_setup", f"{page.name}: first statement is not page_setup"
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call), f"{page.name}: second must be a call"
    func = call.value.func
    assert isinstance(func, ast.Attribute) and func.attr == "render", f"{page.name}: the view call must be <view>.render"
    for n in body:
        if isinstance(n, ast.ImportFrom):
            assert n.module and n.module.startswith("inspector_ui"), f"{page.name}: imports {n.module}"


def test_nothing_edits_sys_path():
    """The project is installed (editable); no page, benchmark, test or module changes the import path."""
    offenders = []
    for f in _python_files():
        if f.resolve() == __file__ or f.name == "test_layout.py":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"sys.path used at {offenders}"


def test_the_engine_does_not_import_streamlit():
    offenders = []
    for f in (REPO / "rwkv_core").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "streamlit" for n in names):
                offenders.append(str(f.relative_to(REPO)))
    assert not offenders, f"streamlit imported by the engine: {offenders}"
