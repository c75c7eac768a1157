"""The widgets in a real browser: JupyterLab on 127.0.0.1 and headless Chromium driven by Playwright.

One notebook (written here) shows the tracing explorer and the edit playground on the toy model. The
test runs it, changes the explorer's kind and pinned layer, applies and undoes an edit in the
playground, and asserts that the picture (the PNG bytes the browser holds) and the texts change.
Screenshots go to a temporary folder whose path is printed (``pytest -s`` shows it).

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``$ROME_CHROMIUM`` names another
binary) and ``playwright`` from PyPI, which drives that binary through ``executable_path``: no browser
is downloaded. Without either the test skips and says which is missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("ROME_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SETUP = """\
import warnings
warnings.filterwarnings("ignore")
from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import load_model
from rome_lib.widgets import EditPlayground, TracingExplorer
mt = load_model("toy", device="cpu")"""
EXPLORER = "TracingExplorer(mt, samples=2).widget"
# C = I and three templates keep the edit to about a second
PLAYGROUND = """\
EditPlayground(mt, hparams=ROMEHyperParams(layer=3, mom2_adjustment=False),
               templates=["{}", "It was late in the evening. {}", "Here is a fact. {}"]).widget"""


def _playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set ROME_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no browser download needed)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _jupyterlab(folder: Path):
    """JupyterLab serving ``folder`` on 127.0.0.1 (a free port, a random token); yields its URL."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", JUPYTER_RUNTIME_DIR=str(folder / ".runtime"),
               JUPYTER_CONFIG_DIR=str(folder / ".config"))
    log = open(folder / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={folder}", f"--LabApp.workspaces_dir={folder / '.workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
         "--ServerApp.allow_root=True"],  # CI containers run as root
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (folder / "jupyterlab.log").read_text()[-2000:]
                    raise RuntimeError(f"JupyterLab did not start: {tail}")
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _write_notebook(folder: Path) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (SETUP, EXPLORER, PLAYGROUND)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "widgets.ipynb")
    return "widgets.ipynb"


def _png_digest(image) -> str:
    """SHA-1 of the bytes behind an <img> (the Image widget's blob URL), read by the page itself."""
    return image.evaluate("""async (img) => {
        const data = await (await fetch(img.src)).arrayBuffer();
        const hash = await crypto.subtle.digest("SHA-1", data);
        return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, "0")).join("");
    }""")


def _changed(read, before, what: str, timeout: float = 30.0):
    """Poll ``read()`` until it differs from ``before`` (and is not empty); return the new value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if value and value != before:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} did not change within {timeout:.0f} s (still {str(before)[:200]!r})")


def test_widgets_render_and_react_in_jupyterlab(tmp_path):
    sync_playwright = _playwright()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nbrowser screenshots: {shots}")
    name = _write_notebook(tmp_path)
    with _jupyterlab(tmp_path) as (url, token), sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 1600})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{url}/lab/tree/{name}?token={token}")
                page.locator(".jp-Notebook").first.wait_for()
                # run only once the kernel is up: earlier, "Run All Cells" is silently dropped
                page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()
                page.locator(".jp-Notebook").first.click()
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

                # the tracing explorer: a heatmap and its text
                explorer = page.locator(".jp-OutputArea-output").filter(has=page.locator(".widget-image")).first
                image = explorer.locator(".widget-image").first
                image.wait_for()
                text = explorer.locator("textarea").last
                first_png = _changed(lambda: _png_digest(image) if image.get_attribute("src") else "", "",
                                     "the heatmap")
                first_text = _changed(text.input_value, "", "the explorer's text")
                page.screenshot(path=str(shots / "1-explorer-state.png"), full_page=True)

                explorer.locator(".widget-dropdown:has(label:text-is('kind')) select").select_option("mlp")
                mlp_png = _changed(lambda: _png_digest(image), first_png, "the heatmap after kind=mlp")
                mlp_text = _changed(text.input_value, first_text, "the explorer's text after kind=mlp")
                assert "mlp" in mlp_text.lower(), mlp_text
                explorer.locator(".widget-dropdown:has(label:text-is('pin layer')) select").select_option(label="3")
                _changed(lambda: _png_digest(image), mlp_png, "the heatmap after pinning layer 3")
                pinned_text = _changed(text.input_value, mlp_text, "the explorer's text after pinning layer 3")
                assert "layer 3" in pinned_text, pinned_text
                page.screenshot(path=str(shots / "2-explorer-mlp-layer3.png"), full_page=True)

                # the edit playground: apply, then undo
                playground = page.locator(".jp-OutputArea-output").filter(
                    has=page.get_by_role("button", name="Apply ROME")).first
                report = playground.locator("textarea").last
                before = report.input_value()
                playground.get_by_role("button", name="Apply ROME").click()
                applied = _changed(report.input_value, before, "the playground's report after Apply ROME", 60)
                page.screenshot(path=str(shots / "3-playground-applied.png"), full_page=True)
                undo = playground.get_by_role("button", name="Undo")
                assert undo.is_enabled()
                undo.click()
                undone = _changed(report.input_value, applied, "the playground's report after Undo")
                assert "restored bit for bit: True" in undone, undone
                assert undo.is_disabled()
                page.screenshot(path=str(shots / "4-playground-undone.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(shots / "failure.png"), full_page=True)
                raise
        finally:
            context.close()
    assert len(list(shots.glob("*.png"))) == 4
