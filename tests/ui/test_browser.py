"""Playwright (Debian chromium) clicks through the app and saves a screenshot of each tab.

Screenshots land in test-artifacts/ (gitignored): ui-experts.png, ui-analyze.png,
ui-fuse.png, ui-chat.png at 1280 px wide.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _browser import ARTIFACTS, MARKS, app_page

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "images" / "finance-chart.png"

pytestmark = MARKS


@pytest.fixture(scope="module")
def page(app_server):
    with app_page(app_server[0]) as pg:
        yield pg


def tab(page, name: str):
    page.get_by_role("tab", name=re.compile(name, re.I)).click()
    page.wait_for_timeout(600)


def shot(page, name: str):
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def test_click_through(page, app_server):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)  # CPU work on two shared cores

    # Experts: the zoo is loaded at startup
    expect(page.locator("#gs-models-table")).to_contain_text("math-lora")
    expect(page.locator("#gs-device")).to_contain_text("CPU")
    shot(page, "experts")

    # Analyze: a small K on the default domain
    tab(page, "Analyze")
    page.get_by_text("Sampling (K samples").click()  # K sits in a closed accordion
    k = page.locator("#gs-an-k input[type=number]")
    k.fill("4")
    k.press("Enter")
    page.locator("#gs-an-run").click()
    expect(page.locator("#gs-an-heatmap .js-plotly-plot")).to_be_visible()
    expect(page.locator("#gs-an-bars .js-plotly-plot")).to_be_visible()
    shot(page, "analyze")

    # Fuse: Graft with the defaults (the first two LoRA experts)
    tab(page, "Fuse")
    page.locator("#gs-fuse-run").click()
    expect(page.locator("#gs-fuse-summary")).to_contain_text("Fused", timeout=180_000)
    expect(page.locator("#gs-fuse-gates .js-plotly-plot")).to_be_visible()
    variant = page.locator("#gs-variants").inner_text().split("\n")
    shot(page, "fuse")

    # Chat: image + question to base, two experts and the new fused variant
    tab(page, "Chat")
    cols = page.locator("#gs-chat-columns")
    expect(cols).to_contain_text("graft-1")
    page.locator("#gs-chat-input input[type=file]").set_input_files(str(IMAGE))
    page.locator("#gs-chat-input textarea").fill("Which quarter had the highest revenue?")
    page.wait_for_timeout(500)
    page.locator("#gs-chat-input textarea").press("Enter")
    expect(page.locator("#gs-chat-status")).to_contain_text("answered", timeout=180_000)
    visible = [page.locator(f"#gs-chat-col-{j}") for j in range(6)]
    shown = [c for c in visible if c.is_visible()]
    # base, two experts and the fused variants the page has seen (a variant fused earlier in this app
    # session stays; the new one is added)
    n = len(shown)
    heads = " ".join(page.locator(f"#gs-chat-head-{j}").inner_text() for j in range(n))
    assert 4 <= n <= 6 and "graft-1" in heads and "base" in heads, heads
    for c in shown:
        expect(c.locator(".message-row").nth(1)).to_be_visible()  # the answer under the question
        assert c.locator("img").count() >= 1  # the uploaded image is shown in every column
    expect(page.locator("#gs-chat-status")).to_contain_text(f"{n}/{n} answered")
    # an example prompt (image from examples/) fills the input; a second turn follows in every column
    page.get_by_text("Math · count shapes").click()
    expect(page.locator("#gs-chat-input textarea")).to_have_value("How many circles are there?")
    page.locator("#gs-chat-input textarea").press("Enter")
    for c in shown:
        expect(c.locator(".message-row")).to_have_count(4)
    expect(page.locator("#gs-chat-status")).to_contain_text(f"{n}/{n} answered")
    shot(page, "chat")
    assert variant

    # a bad input shows a readable message in its tab's status box (no toast, no traceback) and the app carries on
    tab(page, "Experts")
    page.get_by_text("Add a base or an expert").click()
    page.locator("#gs-expert-ref textarea, #gs-expert-ref input").first.fill("/no/such/adapter")
    page.locator("#gs-add-expert").click()
    status = page.locator("#gs-experts-status")
    expect(status).to_contain_text("cannot be opened")  # outside the allowed folders: one generic refusal
    assert "Traceback" not in status.inner_text() and page.locator(".toast-body").count() == 0
    shot(page, "error")
    page.locator("#gs-models-table").scroll_into_view_if_needed()
    expect(page.locator("#gs-models-table")).to_contain_text("graft-1")
