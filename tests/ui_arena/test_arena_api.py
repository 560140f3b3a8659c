"""The Arena and Leaderboard tabs through the launched app's API (gradio_client), on the ci zoo."""

from __future__ import annotations

import csv
import threading

import pytest

import _arena_ui_api as _api

VARIANTS = set(_api.POOL)


def messages(bot) -> list:
    return bot["value"] if isinstance(bot, dict) else bot


def last_answer(bot) -> str:
    msgs = messages(bot)
    assert msgs[-1]["role"] == "assistant"
    return "".join(c.get("text", "") for c in msgs[-1]["content"])


def test_blind_battle_names_only_after_the_committed_vote(arena_app, open_store):
    c = _api.client(arena_app.url)
    out = _api.send_outputs(_api.send_all(c, "What is 2+3?", domain="math"))
    assert out["labels"] == ("Model A", "Model B")
    assert all(_api._label(f[0]) == "Model A" for f in out["frames"])  # never a name while streaming
    assert out["receipt"] is None
    assert not any(v in out["reveal"] for v in VARIANTS) and "Names are shown" in out["reveal"]
    assert not any(v in out["status"] for v in VARIANTS)
    answers = last_answer(out["bot_a"]), last_answer(out["bot_b"])

    res = _api.vote_outputs(_api.call(c, "b", "  B is clearer ", "code", api_name="/arena_vote"))
    r = res["receipt"]
    assert r["new"] and r["blind"] and r["vote"] == "b" and r["winner"] == r["variant_b"]
    assert {r["variant_a"], r["variant_b"]} <= VARIANTS and r["variant_a"] != r["variant_b"]
    assert res["labels"] == (f"Model A · {r['variant_a']}", f"Model B · {r['variant_b']}")
    assert r["variant_a"] in res["reveal"] and r["variant_b"] in res["reveal"]

    stored = open_store(arena_app.votes).get_vote(r["turn_id"])  # committed before the names came back
    assert stored is not None and stored.vote == "b" and stored.blind
    assert stored.prompt == "What is 2+3?"
    for stored_answer, shown in zip((stored.answer_a, stored.answer_b), answers):
        # the chat view shows a placeholder for an empty answer; the store keeps the real (empty) text
        assert stored_answer == shown or (not stored_answer and "empty answer" in shown)
    assert (stored.note, stored.expertise, stored.domain) == ("B is clearer", "code", "math")
    assert stored.settings["max_new_tokens"] == 4 and stored.settings["mode"] == "blind"
    assert stored.client_hash and "127.0.0.1" not in stored.client_hash

    # the next prompt is a new battle, names hidden again
    out = _api.send_outputs(_api.send_all(c, "And 3+4?"))
    assert out["labels"] == ("Model A", "Model B")
    assert len(messages(out["bot_a"])) == 2  # the chat was cleared: one prompt, one answer
    r2 = _api.vote(c, "tie")
    assert r2["battle_id"] != r["battle_id"] and r2["turn_index"] == 0


def test_vote_needs_an_answered_turn(arena_app):
    from gradio_client.exceptions import AppError

    c = _api.client(arena_app.url)
    with pytest.raises(AppError, match="nothing to vote on"):
        _api.call(c, "a", "", None, api_name="/arena_vote")
    with pytest.raises(AppError, match="not in the list of choices"):
        _api.send(c, "hi")  # a valid send first, so the next error is about the vote itself
        _api.call(c, "maybe", "", None, api_name="/arena_vote")
    with pytest.raises(AppError, match="at least two models"):
        _api.send(c, "hi", pool=["base"])
    _api.send(c, "hi")
    _api.call(c, api_name="/arena_new")  # New battle forgets the unvoted turn
    with pytest.raises(AppError, match="nothing to vote on"):
        _api.call(c, "a", "", None, api_name="/arena_vote")


def test_double_submitted_vote_counts_once(arena_app, open_store):
    store = open_store(arena_app.votes)
    c = _api.client(arena_app.url)
    _api.send(c, "Name a prime number.")
    first = _api.vote(c, "a")
    again = _api.vote(c, "b")  # a second click, even on another button, changes nothing
    assert first["new"] and not again["new"]
    assert (again["turn_id"], again["id"], again["vote"]) == (first["turn_id"], first["id"], "a")
    assert [v.vote for v in store.votes(battle_id=first["battle_id"])] == ["a"]

    # two submits racing in one session: exactly one is new, both report the same stored vote
    _api.send(c, "Name an even number.")
    barrier = threading.Barrier(2)
    receipts, errors = [], []

    def submit(choice):
        try:
            barrier.wait()
            receipts.append(_api.vote(c, choice))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(ch,)) for ch in ("a", "both_bad")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len({r["turn_id"] for r in receipts}) == 1 and sorted(r["new"] for r in receipts) == [False, True]
    assert len({r["vote"] for r in receipts}) == 1
    rows = store.votes(battle_id=receipts[0]["battle_id"])
    assert len(rows) == 1 and rows[0].vote == receipts[0]["vote"]


def test_named_mode_shows_names_and_is_not_counted(arena_app, open_store):
    store = open_store(arena_app.votes)
    c = _api.client(arena_app.url)
    out = _api.send_outputs(_api.send_all(c, "Add 1 and 1.", mode=_api.NAMED, a="base", b="math-lora"))
    assert out["labels"] == ("A · base", "B · math-lora")
    r1 = _api.vote(c, "b")
    assert not r1["blind"] and (r1["variant_a"], r1["variant_b"]) == ("base", "math-lora")
    # named mode continues the same battle after a vote
    out = _api.send_outputs(_api.send_all(c, "Add 2 and 2.", mode=_api.NAMED, a="base", b="math-lora"))
    assert len(messages(out["bot_a"])) == 4
    r2 = _api.vote(c, "a")
    assert r2["battle_id"] == r1["battle_id"] and r2["turn_index"] == 1
    assert [v.blind for v in store.votes(battle_id=r1["battle_id"])] == [False, False]

    with pytest.raises(Exception, match="two different models"):
        _api.send(c, "x", mode=_api.NAMED, a="base", b="base")

    lb = _api.call(c, "all domains", "all voters", api_name="/leaderboard")
    summary, table = lb[2], lb[3]
    n_blind = store.count(blind=True)
    assert f"**{n_blind}** blind vote" in summary and "named-mode vote" in summary
    assert sum(row[4] for row in table["data"]) == 2 * n_blind  # battles column: blind votes only


def test_leaderboard_filters_and_exports(arena_app, open_store, tmp_path):
    from graft_ui.arena.export import read_csv, read_jsonl

    store = open_store(arena_app.votes)
    c = _api.client(arena_app.url)
    _api.send(c, "Which is larger, 7 or 9?", domain="finance")
    mine = _api.vote(c, "a", expertise="medical")

    lb = _api.call(c, "finance", "medical", api_name="/leaderboard")
    domains, experts, summary, table = lb[0], lb[1], lb[2], lb[3]
    assert "finance" in [ch[0] for ch in domains["choices"]] and "medical" in [ch[0] for ch in experts["choices"]]
    expected = [v for v in store.votes(blind=True) if v.domain == "finance" and v.expertise == "medical"]
    assert mine["turn_id"] in {v.turn_id for v in expected}
    assert sum(row[4] for row in table["data"]) == 2 * len(expected)
    assert {row[1] for row in table["data"]} == {v.variant_a for v in expected} | {v.variant_b for v in expected}
    assert "domain **finance**" in summary
    for fig in lb[4:7]:
        assert fig is not None

    csv_path = _api.call(c, api_name="/export_votes_csv")
    jsonl_path = _api.call(c, api_name="/export_votes_jsonl")
    n = store.count()
    with open(csv_path, newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) >= n  # the shared app may take votes meanwhile
    csv_votes, jsonl_votes = read_csv(csv_path), read_jsonl(jsonl_path)
    by_id = {v.turn_id: v for v in store.votes()}
    for v in csv_votes + jsonl_votes:
        assert v == by_id[v.turn_id]
    assert mine["turn_id"] in {v.turn_id for v in jsonl_votes}
