"""Real-browser test harness: a Streamlit server in a subprocess, driven by Debian's Chromium via Playwright.

Fixtures
--------
``streamlit_server``  (session) factory: ``streamlit_server("app.py")`` starts
                      ``python -m streamlit run <script>`` on a free loopback port, waits for
                      ``/_stcore/health`` to answer ``ok`` and returns the base URL. One server per
                      script for the whole session; all are terminated at session end.
                      ``streamlit_server.logs(url)``: the server's stderr/stdout tail (tracebacks);
                      ``streamlit_server.stop(url)``: stop one early.
``base_url``          (session) the base URL of the project's ``app.py``; skips if it does not exist yet.
``browser``           (session) a Chromium launched from ``/usr/bin/chromium`` (skips if missing).
``page``              (function) a fresh context (1400x1000 viewport) and page per test. A page whose
                      test failed is screenshotted to ``test-artifacts/screenshots/<test>-FAILED.png``.
``screenshot``        (function) ``screenshot(page)`` saves ``test-artifacts/screenshots/<test>.png``.

Helpers (``from tests.browser.conftest import open_app, rerun, wait_for_app, app_exceptions, save_screenshot``)
-------
``wait_for_app(page)``    wait until Streamlit is connected and has finished running the script.
``open_app(page, url)``   ``page.goto`` + ``wait_for_app``.
``rerun(page)``           context manager for an action that makes Streamlit rerun (a click, a new
                          widget value): waits for the server's answer *and* the end of the run.
``app_exceptions(page)``  script errors the page shows (``stException`` boxes, or a compilation error);
                          the tracebacks are in ``streamlit_server.logs(url)``.

How "finished running" is detected in Streamlit 1.67 (found by dumping the DOM of a tiny app):
``[data-testid="stApp"]`` carries ``data-test-connection-state`` (``CONNECTED`` once the websocket is up)
and ``data-test-script-state`` (``initial`` -> ``running`` -> ``notRunning``; also ``rerunRequested``,
``stopRequested``, ``compilationError``). While a run lasts longer than ~0.5 s the toolbar shows
``[data-testid="stStatusWidget"]`` with ``stStatusWidgetRunningIcon``/``stStatusWidgetRunningManIcon``
and a Stop button; elements left from the previous run carry ``data-stale="true"``. A fast rerun can
go ``notRunning`` -> ``notRunning`` without ever rendering ``running`` (React batches the two
updates), so the attribute alone cannot tell "not started yet" from "already done" right after a
click. The init script below therefore also counts websocket messages, and ``rerun()`` waits until
the server has answered before it trusts ``notRunning``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_SCRIPT = REPO_ROOT / "app.py"
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own outgoing connections are refused en masse
# on a closed network (CI), which slows it down and fills the log.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}

SERVER_START_TIMEOUT_S = float(os.environ.get("STREAMLIT_TEST_START_TIMEOUT", "60"))
APP_RUN_TIMEOUT_MS = 60_000

# --------------------------------------------------------------------------------------------------
# Streamlit server
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n_chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-n_chars:] if text.strip() else "<empty>"


class StreamlitServer:
    """One ``streamlit run`` subprocess on 127.0.0.1, logs in a temp folder."""

    def __init__(self, script: Path, *, cwd: Path, extra_args: tuple[str, ...] = (), env: dict | None = None):
        self.script = script
        self.cwd = cwd
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._logdir = Path(tempfile.mkdtemp(prefix="st-server-"))
        self.stdout_path = self._logdir / "stdout.log"
        self.stderr_path = self._logdir / "stderr.log"
        cmd = [
            sys.executable, "-m", "streamlit", "run", str(script),
            "--server.port", str(self.port),
            "--server.address", "127.0.0.1",
            "--server.headless", "true",
            *extra_args,
        ]
        full_env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", "PYTHONUNBUFFERED": "1"}
        if env:
            full_env.update(env)
        self.cmd = cmd
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        # Own process group, so that stopping it also stops anything the app started.
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=self._err, start_new_session=True,
        )

    def logs(self) -> str:
        return (f"--- stderr (tail) ---\n{_tail(self.stderr_path)}\n"
                f"--- stdout (tail) ---\n{_tail(self.stdout_path)}")

    def wait_healthy(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"streamlit server exited with code {self.proc.returncode} before becoming healthy\n"
                    f"command: {' '.join(self.cmd)}\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    body = r.read().decode(errors="replace").strip()
                    if r.status == 200 and body == "ok":
                        return
                    last_error = f"HTTP {r.status}: {body!r}"
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                last_error = repr(e)
            time.sleep(0.25)
        raise RuntimeError(
            f"streamlit server on {self.url} not healthy after {timeout_s:.0f} s (last: {last_error})\n"
            f"command: {' '.join(self.cmd)}\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()
        self._err.close()
        shutil.rmtree(self._logdir, ignore_errors=True)


class ServerFactory:
    """What the ``streamlit_server`` fixture yields: call it to get a running server's base URL."""

    def __init__(self) -> None:
        self._servers: dict[tuple, StreamlitServer] = {}

    def __call__(self, script: str | os.PathLike = "app.py", *, cwd: str | os.PathLike | None = None,
                 extra_args: tuple[str, ...] = (), env: dict | None = None,
                 timeout_s: float = SERVER_START_TIMEOUT_S) -> str:
        path = Path(script)
        if not path.is_absolute():
            path = REPO_ROOT / path
        path = path.resolve()
        if not path.exists():
            pytest.fail(f"streamlit script not found: {path}")
        workdir = Path(cwd).resolve() if cwd is not None else REPO_ROOT
        key = (str(path), str(workdir), tuple(extra_args), tuple(sorted((env or {}).items())))
        server = self._servers.get(key)
        if server is not None and server.proc.poll() is None:
            return server.url
        server = StreamlitServer(path, cwd=workdir, extra_args=tuple(extra_args), env=env)
        self._servers[key] = server
        try:
            server.wait_healthy(timeout_s)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        return server.url

    def logs(self, url: str) -> str:
        """stderr/stdout tail of the server behind ``url``: where tracebacks go, since the browser
        shows only a generic message (client.showErrorDetails = "none")."""
        url = url.rstrip("/")
        for server in self._servers.values():
            if url.startswith(server.url):
                return server.logs()
        return f"<no server started for {url}>"

    def stop(self, url: str) -> None:
        """Stop the server behind ``url`` now instead of at session end (frees its memory)."""
        url = url.rstrip("/")
        for key, server in list(self._servers.items()):
            if url.startswith(server.url):
                server.stop()
                del self._servers[key]

    def stop_all(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()


@pytest.fixture(scope="session")
def streamlit_server() -> Iterator[ServerFactory]:
    """Factory: ``streamlit_server(script="app.py", *, cwd=REPO_ROOT, extra_args=(), env=None) -> base URL``.

    ``script`` is relative to the repo root or absolute. The server runs with ``cwd`` as its working
    directory (the repo root by default, so the project's ``.streamlit/config.toml`` applies). Servers
    are reused for the same arguments during the session and terminated at the end.
    ``streamlit_server.logs(url)`` gives that server's stderr/stdout tail (tracebacks).
    """
    factory = ServerFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def base_url(streamlit_server) -> str:
    """Base URL of the project's multipage app (``app.py`` at the repo root)."""
    if not APP_SCRIPT.exists():
        pytest.skip(f"{APP_SCRIPT.name} does not exist yet at {APP_SCRIPT}: nothing to test in a browser")
    return streamlit_server(APP_SCRIPT)


# --------------------------------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------------------------------

# Installed in every page before Streamlit's own code: counts websocket traffic, so that a wait right
# after an action can tell whether the server has answered yet.
_WS_TRACKER_JS = """
(() => {
  if (window.__stTest) return;
  const t = window.__stTest = {sent: 0, recv: 0, lastSent: 0, lastRecv: 0};
  const Orig = window.WebSocket;
  class TrackedWebSocket extends Orig {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => { t.recv++; t.lastRecv = performance.now(); });
    }
    send(data) { t.sent++; t.lastSent = performance.now(); return super.send(data); }
  }
  window.WebSocket = TrackedWebSocket;
})();
"""

# True once Streamlit is connected, has finished the script run, shows no running indicator and no
# stale elements, and the websocket has been quiet for `quietMs` (and answered the last message we
# sent, or `graceMs` passed: a few messages, such as a heartbeat, get no answer).
_APP_SETTLED_JS = """
({quietMs, graceMs, minRecv}) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return false;
  if (app.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  const state = app.getAttribute('data-test-script-state');
  if (state !== 'notRunning' && state !== 'compilationError') return false;
  const visible = (el) => el.getClientRects().length > 0;
  for (const sel of ['[data-testid="stStatusWidgetRunningIcon"]',
                     '[data-testid="stStatusWidgetRunningManIcon"]']) {
    for (const el of document.querySelectorAll(sel)) if (visible(el)) return false;
  }
  if (document.querySelector('[data-stale="true"]')) return false;
  const t = window.__stTest;
  if (t) {
    const now = performance.now();
    if (t.recv < minRecv) return false;
    if (t.lastSent > t.lastRecv && now - t.lastSent < graceMs) return false;
    if (now - t.lastRecv < quietMs) return false;
  }
  return true;
}
"""

_APP_STATE_JS = """
() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return {
    stApp: !!app,
    connection: app && app.getAttribute('data-test-connection-state'),
    script: app && app.getAttribute('data-test-script-state'),
    statusWidget: [...document.querySelectorAll('[data-testid="stStatusWidget"]')].map(e => e.innerText),
    stale: document.querySelectorAll('[data-stale="true"]').length,
    ws: window.__stTest || null,
    now: performance.now(),
  };
}
"""


def wait_for_app(page, timeout_ms: float = APP_RUN_TIMEOUT_MS, *, quiet_ms: int = 250,
                 grace_ms: int = 1500, min_recv: int = 1) -> None:
    """Block until Streamlit has finished running the script in ``page``.

    Waits for ``[data-testid="stApp"][data-test-connection-state="CONNECTED"]`` with
    ``data-test-script-state="notRunning"`` (or ``compilationError``), no visible running icon in
    ``[data-testid="stStatusWidget"]``, no ``[data-stale="true"]`` element, and a quiet websocket.
    On timeout, fails with what the page showed.
    """
    try:
        page.wait_for_function(
            _APP_SETTLED_JS, arg={"quietMs": quiet_ms, "graceMs": grace_ms, "minRecv": min_recv},
            timeout=timeout_ms, polling=100)
    except Exception as e:  # playwright TimeoutError, or the page went away
        try:
            state = page.evaluate(_APP_STATE_JS)
        except Exception as e2:  # noqa: BLE001
            state = f"<could not read the page: {e2}>"
        raise AssertionError(
            f"Streamlit app at {page.url} did not finish running within {timeout_ms / 1000:.0f} s: "
            f"{state}; exceptions shown: {app_exceptions(page)}") from e


def _ws_recv(page) -> int:
    return int(page.evaluate("() => (window.__stTest ? window.__stTest.recv : 0)"))


@contextlib.contextmanager
def rerun(page, timeout_ms: float = APP_RUN_TIMEOUT_MS) -> Iterator[None]:
    """``with rerun(page): page.get_by_role("button", name="Go").click()`` - waits for the rerun to end.

    Unlike a bare ``wait_for_app`` right after the action, this cannot return before the server has
    even seen the action: it waits for at least one new websocket message from the server first.
    """
    before = _ws_recv(page)
    yield
    wait_for_app(page, timeout_ms, min_recv=before + 1)


def open_app(page, url: str, timeout_ms: float = APP_RUN_TIMEOUT_MS) -> None:
    """Navigate to ``url`` and wait for the first script run to finish."""
    page.goto(url)
    wait_for_app(page, timeout_ms)


def app_exceptions(page) -> list[str]:
    """What Streamlit shows of script errors: the texts of ``[data-testid="stException"]`` boxes, plus an
    entry when the script did not even compile (``data-test-script-state="compilationError"``, which
    shows no stException box with showErrorDetails = "none"). Empty when the run went fine. The
    traceback itself is in the server log: ``streamlit_server.logs(url)``."""
    found: list[str] = []
    try:
        loc = page.locator('[data-testid="stException"]')
        found = [loc.nth(i).inner_text() for i in range(loc.count())]
        state = page.locator('[data-testid="stApp"]').first.get_attribute("data-test-script-state", timeout=1000)
        if state == "compilationError":
            found.append("compilationError: the script could not be compiled (see the server log)")
    except Exception:  # noqa: BLE001
        pass
    return found


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "screenshot"


def save_screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Save a PNG of ``page`` as ``test-artifacts/screenshots/<name>.png`` and return its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{_safe_name(name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does this)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements-test.txt)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def pytest_collection_modifyitems(config, items):
    """Every test under tests/browser/ is a ``browser`` test, whether or not it says so."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"_report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, request):
    """A fresh browser context and page, 1400x1000; screenshotted on failure."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(_WS_TRACKER_JS)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        rep = getattr(request.node, "_report_call", None)
        if rep is not None and rep.failed:
            with contextlib.suppress(Exception):
                save_screenshot(pg, f"{request.node.name}-FAILED")
        context.close()


@pytest.fixture
def screenshot(request) -> Callable[..., Path]:
    """``screenshot(page)`` -> ``test-artifacts/screenshots/<test name>.png``; ``screenshot(page, "step2")``
    -> ``<test name>-step2.png``."""

    def take(pg, suffix: str = "", *, full_page: bool = True) -> Path:
        name = request.node.name + (f"-{suffix}" if suffix else "")
        return save_screenshot(pg, name, full_page=full_page)

    return take
