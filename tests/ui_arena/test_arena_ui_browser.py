"""A blind battle clicked through in chromium: names hidden before the vote, shown after, buttons locked.

Screenshots (1280 px wide, gitignored) land in test-artifacts/: arena-before-vote.png,
arena-after-vote.png, arena-image-battle.png, leaderboard.png. Runs after the API tests
(file name order), so the leaderboard shows their votes too.
"""

from __future__ import annotations

import re

import pytest

from _browser import MARKS, app_page

from _arena_ui_api import ARTIFACTS



pytestmark = MARKS

BUTTONS = ["#gs-arena-vote-a", "#gs-arena-vote-b", "#gs-arena-vote-tie", "#gs-arena-vote-both_bad"]


@pytest.fixture(scope="module")
def page(arena_app):
    with app_page(arena_app.url) as pg:
        yield pg


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def label(page, side: str) -> str:
    return page.locator(f"#gs-arena-head-{side}").inner_text().strip()


def test_blind_battle_click_through(page, arena_app, open_store):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)  # CPU work on two shared cores
    store = open_store(arena_app.votes)
    names = set(store.distinct("variant")) | {"base", "math-lora", "code-lora", "finance-lora", "medical-lora"}
    before = store.count()

    page.get_by_role("tab", name=re.compile("Arena")).click()
    box = page.locator("#gs-arena-input textarea")
    box.fill("What is 2 + 2?")
    box.press("Enter")
    expect(page.locator(BUTTONS[0])).to_be_enabled()
    expect(page.locator("#gs-arena-a")).to_contain_text("What is 2 + 2?")
    expect(box).to_have_value("")

    # before the vote: anonymous sides, nothing names a model
    assert (label(page, "a"), label(page, "b")) == ("Model A", "Model B")
    reveal = page.locator("#gs-arena-reveal")
    expect(reveal).to_contain_text("Names are shown once your vote is saved")
    shown = " ".join([label(page, "a"), label(page, "b"), reveal.inner_text(),
                      page.locator("#gs-arena-status").inner_text()])
    assert not [n for n in names if n in shown]
    shot(page, "arena-before-vote.png")

    page.locator("#gs-arena-note textarea").fill("A is more to the point")
    page.locator(BUTTONS[0]).dblclick()  # a double click counts once
    expect(reveal).to_contain_text("Model A was")
    for sel in BUTTONS:
        expect(page.locator(sel)).to_be_disabled()
    a_label, b_label = label(page, "a"), label(page, "b")
    m_a, m_b = re.fullmatch(r"Model A · (\S+)", a_label), re.fullmatch(r"Model B · (\S+)", b_label)
    assert m_a and m_b, (a_label, b_label)
    page.locator(BUTTONS[1]).click(force=True)  # a locked button does nothing
    page.wait_for_timeout(500)
    shot(page, "arena-after-vote.png")

    new = store.votes()[before:]
    mine = [v for v in new if v.prompt == "What is 2 + 2?"]
    assert len(mine) == 1, [(v.prompt, v.vote) for v in new]
    v = mine[0]
    assert (v.variant_a, v.variant_b, v.vote, v.blind) == (m_a.group(1), m_b.group(1), "a", True)
    assert v.note == "A is more to the point"
    assert v.variant_a in reveal.inner_text() and v.variant_b in reveal.inner_text()

    # next round from an example with an image: a new battle, names hidden again
    page.get_by_text("Math · count shapes").click()
    expect(page.locator("#gs-arena-domain input")).to_have_value("math")
    page.locator("#gs-arena-input textarea").press("Enter")
    expect(page.locator(BUTTONS[3])).to_be_enabled()
    assert (label(page, "a"), label(page, "b")) == ("Model A", "Model B")
    expect(page.locator("#gs-arena-a img")).to_have_count(1)
    page.locator(BUTTONS[3]).click()
    expect(reveal).to_contain_text("both bad")
    shot(page, "arena-image-battle.png")
    img_vote = [v for v in store.votes()[before:] if v.prompt == "How many circles are there?"]
    assert len(img_vote) == 1 and img_vote[0].image_sha256 and img_vote[0].domain == "math"
    assert store.image_path(img_vote[0].image_sha256).is_file()

    # named side by side: the pool gives way to two pickers; New battle clears the screen
    page.locator("#gs-arena-new").click()
    expect(page.locator("#gs-arena-reveal")).to_have_text("")
    page.get_by_label("Named side by side").check()
    expect(page.locator("#gs-arena-named-a")).to_be_visible()
    expect(page.locator("#gs-arena-pool")).to_be_hidden()
    shot(page, "arena-named.png")
    page.get_by_label("Blind battle").check()


def test_leaderboard_tab(page, arena_app, open_store):
    from playwright.sync_api import expect

    store = open_store(arena_app.votes)
    page.get_by_role("tab", name=re.compile("Leaderboard")).click()
    table = page.locator("#gs-lb-table")
    top = store.votes(blind=True)[-1].variant_a
    expect(table).to_contain_text(top)
    expect(page.locator("#gs-lb-summary")).to_contain_text(f"{store.count(blind=True)} blind vote")
    for plot in ("#gs-lb-ratings", "#gs-lb-winfrac", "#gs-lb-counts"):
        expect(page.locator(f"{plot} .js-plotly-plot")).to_have_count(1)
    page.locator("#gs-lb-export-csv").click()
    expect(page.locator("#gs-lb-export-file")).to_contain_text(".csv")
    shot(page, "leaderboard.png")
