"""The report opened offline in headless Chromium (file:// URL): no console errors, no request
leaves the file, every section and figure shows, it fits a phone, and it prints to PDF."""

from __future__ import annotations

import re

from tests._browser import ARGS, ARTIFACTS, CHROMIUM, MARKS
from tests.report.test_report import SECTIONS

pytestmark = MARKS


def test_report_opens_offline_and_prints(report_file):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors, remote = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            # anything but the file itself and inline data is recorded and refused
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                      else (remote.append(route.request.url), route.abort()))
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report_file.as_uri())
            page.wait_for_load_state("load")
            n_plots = page.locator(".plot").count()
            assert n_plots >= 4  # compatibility, pairs, heatmaps, gate maps, ratings
            page.wait_for_function(f"document.querySelectorAll('.plot .main-svg').length >= {n_plots}")
            for sid in SECTIONS:
                assert page.locator(f"#{sid}").is_visible(), sid
            assert page.locator("#sec-answers img").first.evaluate("img => img.complete && img.naturalWidth > 0")
            page.screenshot(path=str(ARTIFACTS / "report-1280.png"), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(ARTIFACTS / "report-390.png"))

            page.set_viewport_size({"width": 1280, "height": 900})
            page.emulate_media(media="print")
            assert page.locator("nav.toc").is_hidden()  # the print stylesheet applies
            pdf = page.pdf(format="A4", print_background=True)
            assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 3  # A4 pages
            (ARTIFACTS / "report.pdf").write_bytes(pdf)
        finally:
            browser.close()
    assert errors == [] and remote == []
    assert len(pdf) > 20_000
