"""Blind battles: pair sampling and sides, ids, reveal only after a stored vote, named mode."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from graft_ui.arena.battle import (
    BLIND_LABELS,
    Variant,
    VoteNotRecordedError,
    as_pool,
    named_battle,
    record_battle_vote,
    reveal,
    sample_pair,
    start_battle,
)
from graft_ui.arena.store import VoteStore
from graft_ui.recipe import ExpertRef, Recipe

POOL = ["base", "math-lora", "code-lora", "fused-graft"]


def _answer(store, battle, turn, vote="a", **kw):
    return record_battle_vote(store, battle, turn, vote, prompt="2+2?", answer_a="4", answer_b="5", **kw)


def test_sample_pair_is_seeded_and_randomises_sides():
    assert [sample_pair(POOL, random.Random(7)) for _ in range(3)] == [sample_pair(POOL, 7)] * 3
    rng = random.Random(0)
    draws = [sample_pair(POOL, rng) for _ in range(1200)]
    assert all(a.id != b.id for a, b in draws)
    pairs = Counter(frozenset((a.id, b.id)) for a, b in draws)
    assert len(pairs) == 6 and min(pairs.values()) > 120  # every pair, roughly uniform (200 each)
    left = Counter(a.id for a, _ in draws)
    right = Counter(b.id for _, b in draws)
    for name in POOL:  # each variant shows up on both sides about equally
        assert 0.4 < left[name] / (left[name] + right[name]) < 0.6


def test_pool_validation_names_the_problem():
    with pytest.raises(ValueError, match="'base'"):
        as_pool(["base", "base", "x"])
    with pytest.raises(ValueError, match="at least two"):
        as_pool(["only"])
    with pytest.raises(ValueError, match="42"):
        as_pool(["a", 42])
    with pytest.raises(ValueError, match="rng"):
        sample_pair(POOL, rng="seed")
    recipe = Recipe(method="average", experts=(ExpertRef("a"), ExpertRef("b")))
    pool = as_pool({"fused": recipe, "base": None})
    assert pool == (Variant("fused", recipe), Variant("base"))


def test_battle_ids_are_unique_even_with_the_same_seed():
    b1, b2 = start_battle(POOL, 3), start_battle(POOL, 3)
    assert (b1.variant_a, b1.variant_b) == (b2.variant_a, b2.variant_b)
    assert b1.battle_id != b2.battle_id
    t0, t1 = b1.new_turn(), b1.new_turn()
    assert (t0.index, t1.index) == (0, 1) and t0.turn_id != t1.turn_id


def test_names_hidden_until_the_vote_is_stored(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    battle = start_battle(POOL, random.Random(1))
    assert battle.side_labels() == BLIND_LABELS
    assert battle.variant_a.id not in repr(battle) and battle.variant_b.id not in repr(battle)
    turn = battle.new_turn()
    with pytest.raises(VoteNotRecordedError, match=turn.turn_id):
        reveal(store, battle, turn)
    vote = _answer(store, battle, turn, "b", expertise="math", domain="math", client_address="10.0.0.1")
    # another connection sees it: the vote is committed before the names come out
    other = VoteStore.open(tmp_path / "votes.sqlite")
    shown = reveal(other, battle, turn)
    assert (shown.variant_a, shown.variant_b) == (battle.variant_a.id, battle.variant_b.id)
    assert shown.winner == battle.variant_b.id and shown.stored == vote
    assert battle.variant_b.id in shown.message()
    # a second turn of the same battle is hidden again until its own vote
    turn2 = battle.new_turn()
    with pytest.raises(VoteNotRecordedError):
        reveal(other, battle, turn2)
    store.close()
    other.close()


def test_double_submit_returns_the_first_vote(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    battle = start_battle(POOL, 5)
    turn = battle.new_turn()
    first = _answer(store, battle, turn, "tie")
    second = _answer(store, battle, turn, "a")
    assert second == first and second.vote == "tie" and not second.new
    assert store.count() == 1
    store.close()


def test_vote_carries_battle_facts(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    recipe = Recipe(method="average", experts=(ExpertRef("math-lora"), ExpertRef("code-lora")), name="avg")
    battle = start_battle([Variant("fused", recipe), Variant("base")], 0)
    turn = battle.new_turn()
    v = _answer(store, battle, turn, settings={"max_new_tokens": 32})
    fused_side = "a" if battle.variant_a.id == "fused" else "b"
    assert getattr(v, f"recipe_{fused_side}") == recipe.to_dict()
    assert getattr(v, f"recipe_{'b' if fused_side == 'a' else 'a'}") is None
    assert (v.battle_id, v.turn_index, v.blind) == (battle.battle_id, 0, True)
    store.close()


def test_turn_must_belong_to_the_battle(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    b1, b2 = start_battle(POOL, 1), start_battle(POOL, 2)
    t2 = b2.new_turn()
    with pytest.raises(ValueError, match=b1.battle_id):
        _answer(store, b1, t2)
    from graft_ui.arena.battle import Turn

    with pytest.raises(ValueError, match="not started"):
        _answer(store, b1, Turn(b1.battle_id, 3))
    assert store.count() == 0
    store.close()


def test_named_battle_votes_are_not_blind(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    battle = named_battle("math-lora", "fused-graft")
    assert battle.side_labels() == ("math-lora", "fused-graft")
    v = _answer(store, battle, battle.new_turn())
    assert v.blind is False and store.count(blind=True) == 0
    store.close()
