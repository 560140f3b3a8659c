"""The demo-ready UX in chromium: one assertion per numbered item (ux-1 .. ux-10 below).

One app (the session's `app_server`), one browser for the module, a page per viewport.
Screenshots land in test-artifacts/ (gitignored): ux-1-after-reload.png, ux-2-phone-<tab>.png,
ux-3-<tab>-1440.png, ux-4-analyze-progress.png, ux-5-graft-gates.png, ux-5-ties-stats.png,
ux-6-leaderboard.png, ux-7-9-chat.png, ux-10-fuse-params.png.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from _browser import ARGS, ARTIFACTS, CHROMIUM, MARKS

pytestmark = MARKS
TABS = ["Experts", "Analyze", "Fuse", "Chat", "Arena", "Leaderboard"]
SLOW = 180_000  # CPU work on two shared cores


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url: str, width: int, height: int):
    from playwright.sync_api import expect

    expect.set_options(timeout=SLOW)
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.set_default_timeout(SLOW)
    pg.goto(url)
    pg.wait_for_selector("#gs-tabs")
    pg.wait_for_timeout(500)
    return pg


@pytest.fixture(scope="module")
def desk(browser, app_server):
    pg = open_page(browser, app_server[0], 1440, 900)
    yield pg
    pg.close()


def tab(page, name: str):
    page.locator(f"button[role=tab]:has-text('{name}')").first.click()
    page.wait_for_timeout(500)


def shot(page, name: str, full: bool = False):
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"ux-{name}.png"), full_page=full)


def box(page, sel: str) -> dict:
    b = page.locator(sel).first.bounding_box()
    assert b is not None, f"{sel} is not shown"
    return b


def fuse(page, name: str | None = None, overwrite: bool = False):
    if name is not None:
        page.locator("#gs-fuse-name textarea, #gs-fuse-name input").first.fill(name)
    tick = page.locator("#gs-fuse-overwrite input[type=checkbox]")
    if tick.is_checked() != overwrite:
        tick.click()
    page.locator("#gs-fuse-run").click()


def test_1_variants_survive_reload_unique_names_explicit_overwrite(browser, desk, app_server):
    from playwright.sync_api import expect

    url, ctx = app_server
    page = desk
    tab(page, "Fuse")
    default = page.locator("#gs-fuse-name textarea, #gs-fuse-name input").first.input_value()
    assert default not in ctx.studio.variants  # unique, even with variants made by earlier tests
    fuse(page)
    summary = page.locator("#gs-fuse-summary")
    expect(summary).to_contain_text("Fused")
    expect(page.locator("#gs-variants")).to_contain_text(default)
    # 5: Graft's maps each have their own labelled colour scale, and a one-line reading guide
    expect(page.locator("#gs-fuse-gates .js-plotly-plot")).to_be_visible()
    bars = page.evaluate("() => document.querySelector('#gs-fuse-gates .js-plotly-plot').data"
                         ".filter(t => t.showscale).map(t => t.colorbar.title.text)")
    assert len(bars) == 2 and all("expert 1" in t for t in bars), bars
    expect(page.locator("#gs-fuse-guide")).to_contain_text("How to read")
    assert "weight of base" not in page.locator("#gs-fuse-gates").inner_text()
    shot(page, "5-graft-gates")

    # the same name again without Overwrite: refused in this tab's result, with the way out named
    fuse(page, default)
    expect(summary).to_contain_text("already exists")
    expect(summary).to_contain_text("Overwrite")
    assert page.locator(".toast-body").count() == 0  # 8: no toast floating over the other tabs
    fuse(page, default, overwrite=True)
    expect(summary).to_contain_text("Fused")

    # reload: the variants table, Chat's columns and the Arena pool still offer the variant
    page.reload()
    page.wait_for_selector("#gs-tabs")
    tab(page, "Fuse")
    expect(page.locator("#gs-variants")).to_contain_text(default)
    after = page.locator("#gs-fuse-name textarea, #gs-fuse-name input").first.input_value()
    assert after != default and after not in ctx.studio.variants
    shot(page, "1-after-reload", full=True)
    tab(page, "Chat")
    expect(page.locator("#gs-chat-columns")).to_contain_text(default)
    tab(page, "Arena")
    page.get_by_text("Pool for blind battles").click()
    expect(page.locator("#gs-arena-pool")).to_contain_text(default)
    page.get_by_text("Pool for blind battles").click()  # closed again, as a visitor finds it (test 3 measures the fold)

    # 5: a baseline shows its own statistics, not an empty "Gate maps" frame
    tab(page, "Fuse")
    page.locator("#gs-fuse-method input").first.fill("ties")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    fuse(page)
    expect(summary).to_contain_text("Fused")
    expect(page.locator("#gs-fuse-guide")).to_contain_text("kept fraction")
    expect(page.locator("#gs-fuse-gates .js-plotly-plot")).to_be_visible()
    shot(page, "5-ties-stats")


def test_2_phone_layout_has_no_horizontal_overflow(browser, app_server):
    page = open_page(browser, app_server[0], 390, 844)
    try:
        for name in TABS:
            button = page.locator(f"button[role=tab]:has-text('{name}')").first
            assert button.is_visible(), f"tab {name} is not in the tab bar at 390 px"
            b = button.bounding_box()
            assert b["x"] >= 0 and b["x"] + b["width"] <= 390, (name, b)
            button.click()
            page.wait_for_timeout(400)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{name}: the page is {width} px wide at 390 px"
            if name in ("Experts", "Leaderboard"):
                shot(page, f"2-phone-{name.lower()}")
        # table headers do not break inside a word ("ra nk")
        tab(page, "Experts")
        breaks = page.evaluate("() => [...document.querySelectorAll('#gs-models-table th')]"
                               ".map(th => getComputedStyle(th).wordBreak)")
        assert breaks and set(breaks) == {"keep-all"}, breaks
    finally:
        page.close()


def test_3_main_actions_and_results_above_the_fold(desk):
    page = desk
    checks = {
        "Analyze": ["#gs-an-run", "#gs-an-status", "#gs-an-bars"],
        "Fuse": ["#gs-fuse-run", "#gs-fuse-summary"],
        "Chat": ["#gs-chat-input", "#gs-chat-col-0"],
        "Arena": ["#gs-arena-input", "#gs-arena-a"],
    }
    for name, sels in checks.items():
        tab(page, name)
        page.evaluate("window.scrollTo(0, 0)")
        action = box(page, sels[0])
        assert action["y"] + action["height"] <= 900, (name, sels[0], action)
        for sel in sels[1:]:
            assert box(page, sel)["y"] < 900, (name, sel)
        shot(page, f"3-{name.lower()}-1440")
    tab(page, "Fuse")
    run, result = box(page, "#gs-fuse-run"), box(page, "#gs-fuse-summary")
    assert result["x"] >= run["x"] + run["width"]  # the result beside the form


def test_4_one_monotonic_progress_display_for_analysis(desk):
    page = desk
    tab(page, "Analyze")
    page.get_by_text("Sampling (K samples").click()
    k = page.locator("#gs-an-k input[type=number]")
    k.fill("3")
    k.press("Enter")
    page.locator("#gs-an-run").click()
    seen, most, t0 = [], 0, time.time()
    while time.time() - t0 < 150:
        texts = page.evaluate("() => [...document.querySelectorAll('#gs-tab-analyze .progress-text, "
                              "#gs-tab-analyze .progress-level-inner')].filter(e => e.offsetParent !== null)"
                              ".map(e => e.innerText)")
        bars = page.evaluate("() => [...document.querySelectorAll('#gs-tab-analyze .wrap')]"
                             ".filter(e => !e.classList.contains('hide') && e.offsetParent !== null"
                             " && e.querySelector('.progress-text, .eta-bar, .progress-level')).length")
        most = max(most, bars)
        for t in texts:
            m = re.search(r"(\d+) of (\d+) samples", t)
            if m:
                seen.append(int(m.group(1)))
        if "Analysed" in page.locator("#gs-an-status").inner_text():
            break
        page.wait_for_timeout(150)
    assert "Analysed" in page.locator("#gs-an-status").inner_text()
    assert most <= 1, f"{most} progress displays at once"
    assert seen == sorted(seen), f"progress ran backwards: {seen}"
    shot(page, "4-analyze-progress")


def test_6_leaderboard_small_samples(desk, app_server):
    from playwright.sync_api import expect

    _, ctx = app_server
    store = ctx.vote_store()
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"lb-a-{tag}", f"lb-b-{tag}", f"lb-c-{tag}"
    for i, (x, y, v) in enumerate([(a, b, "a")] * 5 + [(a, c, "tie")]):
        store.record_vote(turn_id=f"{tag}-{i}", battle_id=f"{tag}-{i}", variant_a=x, variant_b=y, vote=v,
                          prompt="p", answer_a="x", answer_b="y")
    page = desk
    tab(page, "Leaderboard")
    table = page.locator("#gs-lb-table")
    expect(table).to_contain_text(a)
    rows = page.evaluate("tag => [...document.querySelectorAll('#gs-lb-table [role=row]')].map(r => r.innerText)"
                         ".filter(t => t.includes(tag))", tag)
    assert len(rows) == 3 and all("provisional" in r for r in rows), rows
    assert "1000 – 1000" not in table.inner_text()
    assert not page.locator("#gs-lb-export-file").is_visible()  # no empty download box
    ticks = page.evaluate("() => { const t = document.querySelector('#gs-lb-counts .js-plotly-plot').data[0];"
                          " return [t.colorbar.dtick, t.colorbar.tickformat]; }")
    assert ticks[1] == "d" and float(ticks[0]).is_integer(), ticks
    shot(page, "6-leaderboard", full=True)
    page.locator("#gs-lb-export-csv").click()
    expect(page.locator("#gs-lb-export-file")).to_contain_text(".csv")


def test_7_9_10_chat_status_turns_and_inputs(desk, tmp_path):
    from playwright.sync_api import expect

    page = desk
    tab(page, "Chat")
    page.get_by_text("Generation settings").first.click()
    label = page.locator("#gs-chat-max-new label, #gs-chat-max-new [data-testid=block-info]").first
    assert page.evaluate("e => e.scrollWidth <= e.clientWidth + 1", label.element_handle())  # 10: not cut off
    text = page.locator("#gs-chat-input textarea")
    text.fill("Fix this:\ndef f(xs):\n    return sum(xs)")
    text.press("Enter")
    status = page.locator("#gs-chat-status")
    expect(status).to_contain_text("answered")
    expect(page.locator("#gs-chat-head-0")).to_contain_text("1 turn in context")  # 9
    user = page.locator("#gs-chat-col-0 .message-row").first
    expect(user.locator("pre, code").first).to_contain_text("    return sum(xs)")  # 10: indentation kept
    before = status.inner_text()
    page.locator("#gs-chat-stop").click()  # 7: nothing is running: the status stays as it was
    page.wait_for_timeout(800)
    assert status.inner_text() == before and "stopped" not in before
    page.locator("#gs-chat-clear").click()  # 9: an obvious new conversation
    expect(page.locator("#gs-chat-head-0")).to_contain_text("new conversation")
    expect(page.locator("#gs-chat-col-0 .message-row")).to_have_count(0)
    shot(page, "7-9-chat")
    # 10: a .txt attached to the prompt: the app's own sentence, not gradio's "Invalid file type"
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    page.locator("#gs-chat-input input[type=file]").set_input_files(str(note))
    text.fill("what is this?")
    page.wait_for_timeout(800)
    text.press("Enter")
    expect(status).to_contain_text("is not an image")
    assert "Invalid file type" not in page.content()
    # 10: plain-language labels beside the symbols
    tab(page, "Fuse")
    page.locator("#gs-fuse-method input").first.fill("graft")
    page.keyboard.press("Enter")
    page.get_by_text("Method parameters").click()
    expect(page.locator("#gs-fuse-params")).to_contain_text("a · global gate strength")
    shot(page, "10-fuse-params")
