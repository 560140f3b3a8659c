"""Shared Playwright set-up: Debian's chromium, headless, with the flags this closed network needs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # gitignored screenshots

MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


@contextmanager
def app_page(url: str, ready: str = "#gs-tabs"):
    """A 1280 px wide page with the Graft Studio app (or another Blocks: `ready` names an element) at `url`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(120_000)
            pg.goto(url)
            pg.wait_for_selector(ready)
            yield pg
        finally:
            browser.close()
