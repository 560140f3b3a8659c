"""Trust features clicked in chromium on an app of its own: the style-control toggle, the flagged-voter
review (restore), and the rate-limit message when a client starts battles too fast.

The app runs with GRAFT_ARENA_RATE="battles=1/hour,loopback" (loopback is exempt by default), and its
store is seeded with crowd votes plus one contrarian voter session, which the e-value test flags.
Screenshots: test-artifacts/leaderboard-trust.png, arena-rate-limit.png.
"""

from __future__ import annotations

import random
import re

import pytest

from _browser import MARKS, app_page

from _arena_ui_api import ARTIFACTS

pytestmark = MARKS


def seed(store) -> str:
    """60 crowd votes (math-lora > base > code-lora, longer answers from math-lora) and a rogue voter session."""
    rng = random.Random(0)
    strength = {"math-lora": 1.0, "base": 0.0, "code-lora": -1.0}
    for i in range(60):
        a, b = rng.sample(list(strength), 2)
        p = 1 / (1 + pow(2.718281828, strength[b] - strength[a]))
        store.record_vote(turn_id=f"seed{i}", battle_id=f"seed{i}", variant_a=a, variant_b=b,
                          vote="a" if rng.random() < p else "b", prompt="p",
                          answer_a="word " * (80 if a == "math-lora" else 20),
                          answer_b="- item\n" * (40 if b == "math-lora" else 10), voter_id=f"crowd{i % 15}")  # 4 votes each: untested
    for i in range(8):  # always the weaker side
        store.record_vote(turn_id=f"rogue{i}", battle_id=f"rogue{i}", variant_a="code-lora", variant_b="math-lora",
                          vote="a", prompt="p", answer_a="x", answer_b="y", voter_id="rogue")
    return store.hash_client("rogue")


@pytest.fixture(scope="module")
def trust_app(launch_app):
    return launch_app({"GRAFT_ARENA_RATE": "battles=1/hour,loopback"})


def test_style_toggle_flag_review_and_rate_limit(trust_app, open_store):
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)
    store = open_store(trust_app.votes)
    rogue = seed(store)
    with app_page(trust_app.url) as page:
        page.get_by_role("tab", name=re.compile("Leaderboard")).click()
        summary = page.locator("#gs-lb-summary")
        expect(summary).to_contain_text("8 votes of flagged voters left out")
        table = page.locator("#gs-lb-table")
        expect(table).to_contain_text("vs next")
        expect(table).not_to_contain_text("style-controlled")

        page.locator("#gs-lb-style input").check()  # style control: controlled ratings beside the raw ones
        expect(table).to_contain_text("style-controlled")
        coefs = page.locator("#gs-lb-style-coefs")
        expect(coefs).to_contain_text("length")
        expect(coefs).to_contain_text("Fitted style coefficients")

        page.locator("#gs-lb-quality").get_by_text("Vote quality").click()
        flagged = page.locator("#gs-lb-flagged")
        expect(flagged).to_contain_text(rogue[:12])
        expect(flagged).to_contain_text("flagged (left out)")
        page.locator("#gs-lb-restore").click()
        expect(page.locator("#gs-lb-voter-status")).to_contain_text("restored")
        expect(flagged).to_contain_text("restored (counted)")
        expect(summary).not_to_contain_text("flagged voters left out")
        assert store.marks("voter") == {rogue: "restored"}
        assert store.count() == 68  # nothing deleted
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "leaderboard-trust.png"), full_page=True)

        # the first battle is allowed, the second new battle within the hour is refused with a message
        page.get_by_role("tab", name=re.compile("Arena")).click()
        box = page.locator("#gs-arena-input textarea")
        box.fill("What is 3 + 4?")
        box.press("Enter")
        expect(page.locator("#gs-arena-vote-a")).to_be_enabled()
        page.locator("#gs-arena-vote-a").click()
        expect(page.locator("#gs-arena-reveal")).to_contain_text("Model A was")
        box.fill("What is 5 + 6?")
        box.press("Enter")
        expect(page.get_by_text(re.compile("Too many new battles from your address")).first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "arena-rate-limit.png"), full_page=True)
    assert store.count() == 69
