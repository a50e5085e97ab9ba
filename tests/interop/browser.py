"""Headless Chromium for the interop tests: Debian's `chromium` driven by Playwright (Python).

Tests that need a browser take the `browser_page` fixture (a fresh page in a fresh context;
what the page logged to its console is attached to a failing test's report). Browser-side
libraries (MQTT.js) come from `tests/browser/node_modules`, which scripts/test.sh installs with
`npm ci`; `mqtt_js_path()` finds them.

The launch flags are the ones this kind of machine needs: no sandbox (tests may run as root),
no GPU, and no background networking (Chromium's calls home are refused here, many at a time).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium executable: $MAKELAAR_CHROMIUM, else `chromium` on PATH."""
    path = os.environ.get("MAKELAAR_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not path:
        pytest.fail("chromium not found: install Debian's `chromium` package (scripts/test.sh "
                    "does) or point MAKELAAR_CHROMIUM at a Chromium executable")
    return path


def mqtt_js_path() -> Path:
    """MQTT.js's browser bundle (npm `mqtt`), installed in tests/browser by `npm ci`."""
    path = BROWSER_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `npm ci` in {BROWSER_DIR} (scripts/test.sh does)")
    return path


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the whole test session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install playwright "
                    "(scripts/test.sh does)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium, request):
    """A fresh page (own context: no cookies or storage shared between tests)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        if getattr(request.node, "rep_call_failed", False) and console:
            print("browser console:\n" + "\n".join(console[-50:]))
        context.close()
