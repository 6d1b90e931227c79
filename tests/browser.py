"""Headless Chromium for the tests that look at a page as a user would.

The system's Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``;
``BENCH_CHROMIUM`` overrides the path) driven by Playwright. ``.ci/run``
installs both; without them these tests fail, they are never skipped, so a
browser-tested page is always browser-tested.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# No background networking: the test machine has no network beyond loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = os.environ.get("BENCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        raise RuntimeError(f"no Chromium at {path}: install Debian's chromium package (.ci/run does)")
    return path


@contextmanager
def page(width: int = 1280, height: int = 900) -> Iterator:
    """A fresh Playwright page in a new headless Chromium with an empty profile."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-chromium-") as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield browser.pages[0] if browser.pages else browser.new_page()
        finally:
            browser.close()
