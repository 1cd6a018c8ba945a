"""Headless Debian Chromium driven by Playwright (Playwright's own browser download is unused)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM = os.environ.get("SSA_CHROMIUM", "/usr/bin/chromium")
# --headless is added by Playwright (headless=True); the user-data dir is a fresh empty one.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_unavailable() -> str | None:
    """Why no browser test can run here (None when Chromium and Playwright are installed)."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium ({CHROMIUM}; Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright's Python package (pip install -e '.[dev]')")
    if not missing:
        return None
    return "needs " + " and ".join(missing) + "; scripts/setup.sh installs both"


@contextmanager
def chromium_page(width: int = 1400, height: int = 900) -> Iterator:
    """A Playwright ``Page`` in headless Chromium with an empty profile."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="ssa-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
