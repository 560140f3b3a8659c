"""The Arena/Leaderboard tab logic without a server: a Studio on the ci zoo, a vote store in tmp."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from graft_ui.arena.store import VoteStore
from graft_ui.chat import GenerationSettings
from graft_ui.arena import session as S
from graft_ui.ui import arena as A
from graft_ui.ui import leaderboard as L

POOL = ["base", "math-lora", "code-lora"]
FAST = GenerationSettings(max_new_tokens=3)


@pytest.fixture(scope="module")
def studio(zoo_manifest_path, tmp_path_factory):
    from graft_ui.studio import Studio

    s = Studio.from_manifest(zoo_manifest_path, device="cpu", work_dir=tmp_path_factory.mktemp("studio"))
    yield s
    s.close()


@pytest.fixture()
def store(tmp_path):
    s = VoteStore.open(tmp_path / "votes.sqlite")
    yield s
    s.close()


def ask(studio, st, text="What is 1 + 2?", *, mode=S.BLIND, pool=POOL, a=None, b=None, domain=None, rng=None):
    S.begin_turn(studio, st, text=text, image=None, mode=mode, pool=pool, named_a=a, named_b=b, domain=domain,
                 settings=FAST, rng=rng)
    updates = list(S.stream_turn(studio, st))
    assert updates and updates[-1].finished
    return updates


def test_blind_turn_vote_reveal_and_next_battle(studio, store):
    st = S.ArenaState()
    ask(studio, st, domain="Math", rng=random.Random(3))
    assert st.phase == "answered" and st.battle.blind and set(st.names) <= set(POOL)
    assert S.labels(st) == ("Model A", "Model B") and "Names are shown" in A.reveal_md(st)
    assert not any(n in A.reveal_md(st) + A.status_md(st) for n in POOL)
    assert S.can_vote(st)

    vote, shown = S.cast_vote(store, st, "a", note=" short ", expertise="Code", client_address="10.0.0.7")
    assert vote.new and (vote.variant_a, vote.variant_b) == st.names and vote.winner == st.names[0]
    assert (vote.note, vote.expertise, vote.domain, vote.prompt) == ("short", "code", "math", "What is 1 + 2?")
    assert vote.answer_a == st.chat.turns[-1].answers[st.names[0]]
    assert vote.settings["max_new_tokens"] == 3 and vote.settings["mode"] == "blind"
    assert shown.variant_a == st.names[0] and st.phase == "voted" and not S.can_vote(st)
    assert S.labels(st) == (f"Model A · {st.names[0]}", f"Model B · {st.names[1]}")
    assert st.names[0] in A.reveal_md(st) and f"#{vote.id}" in A.reveal_md(st)

    again, _ = S.cast_vote(store, st, "b")  # double submit: the first vote stands
    assert not again.new and again.vote == "a" and store.count() == 1

    first = st.battle.battle_id
    ask(studio, st, "And 2 + 2?")  # after a blind vote: a new battle, chat cleared
    assert st.battle.battle_id != first and len(st.chat.turns) == 1 and st.turn.index == 0
    assert S.labels(st) == ("Model A", "Model B")


def test_prompts_before_a_vote_continue_the_battle(studio, store):
    st = S.ArenaState()
    ask(studio, st, "First question?")
    battle = st.battle.battle_id
    ask(studio, st, "Second question?")
    assert st.battle.battle_id == battle and st.turn.index == 1 and len(st.chat.turns) == 2
    vote, _ = S.cast_vote(store, st, "tie")
    assert (vote.turn_index, vote.prompt) == (1, "Second question?")


def test_named_mode_is_stored_unblind_and_continues(studio, store):
    st = S.ArenaState()
    ask(studio, st, mode=S.NAMED, a="base", b="math-lora")
    assert S.labels(st) == ("A · base", "B · math-lora") and st.revealed
    v1, _ = S.cast_vote(store, st, "b")
    ask(studio, st, "Again?", mode=S.NAMED, a="base", b="math-lora")
    v2, _ = S.cast_vote(store, st, "a")
    assert (v1.blind, v2.blind, v2.battle_id, v2.turn_index) == (False, False, v1.battle_id, 1)
    assert "not counted" in A.reveal_md(st)
    ask(studio, st, "Swap?", mode=S.NAMED, a="math-lora", b="base")  # another pair: another battle
    assert st.battle.battle_id != v1.battle_id
    ask(studio, st, "Blind now", mode=S.BLIND)  # switching mode starts a blind battle
    assert st.battle.blind


def test_votes_need_an_answered_turn(studio, store):
    st = S.ArenaState()
    with pytest.raises(ValueError, match="nothing to vote on"):
        S.cast_vote(store, st, "a")
    S.begin_turn(studio, st, text="hi", image=None, mode=S.BLIND, pool=POOL, named_a=None, named_b=None,
                 domain=None, settings=FAST)
    with pytest.raises(ValueError, match="still streaming"):
        S.begin_turn(studio, st, text="again", image=None, mode=S.BLIND, pool=POOL, named_a=None, named_b=None,
                     domain=None, settings=FAST)
    with pytest.raises(ValueError, match="wait until both answers"):
        S.cast_vote(store, st, "a")
    gen = S.stream_turn(studio, st)
    next(gen)
    gen.close()  # a cancelled request (browser closed): the session is not stuck "generating"
    assert st.phase == "failed"
    with pytest.raises(ValueError, match="cannot be voted"):
        S.cast_vote(store, st, "a")
    assert store.count() == 0


def test_new_battle_during_generation_drops_the_turn(studio, store):
    st = S.ArenaState()
    S.begin_turn(studio, st, text="hi", image=None, mode=S.BLIND, pool=POOL, named_a=None, named_b=None,
                 domain=None, settings=FAST)
    gen = S.stream_turn(studio, st)
    next(gen)
    st.reset()  # "New battle" while the answers stream
    for _ in gen:
        pass
    assert (st.battle, st.phase, st.chat.turns, st.ui_votable) == (None, "idle", [], False)
    with pytest.raises(ValueError, match="nothing to vote on"):
        S.cast_vote(store, st, "a")
    ask(studio, st)  # and the session goes on
    assert st.phase == "answered"


def test_invalid_input_is_refused_by_name(studio, store):
    st = S.ArenaState()
    kw = dict(text="hi", image=None, named_a=None, named_b=None, domain=None, settings=FAST)
    with pytest.raises(ValueError, match="at least two"):
        S.begin_turn(studio, st, mode=S.BLIND, pool=["base"], **kw)
    with pytest.raises(ValueError, match="unknown model"):
        S.begin_turn(studio, st, mode=S.BLIND, pool=["base", "nope"], **kw)
    with pytest.raises(ValueError, match="two different"):
        S.begin_turn(studio, st, mode=S.NAMED, pool=None, **{**kw, "named_a": "base", "named_b": "base"})
    with pytest.raises(ValueError, match="type a question"):
        S.begin_turn(studio, st, mode=S.BLIND, pool=POOL, **{**kw, "text": "  "})
    with pytest.raises(ValueError, match="short label"):
        S.begin_turn(studio, st, mode=S.BLIND, pool=POOL, **{**kw, "domain": "x" * 40})
    assert st.battle is None and st.phase == "idle"  # nothing changed
    ask(studio, st)
    with pytest.raises(ValueError, match="not one of"):
        S.cast_vote(store, st, "maybe")
    with pytest.raises(ValueError, match="note has"):
        S.cast_vote(store, st, "a", note="x" * (S.MAX_NOTE_CHARS + 1))
    assert store.count() == 0 and st.phase == "answered"


def test_names_stay_hidden_until_the_store_commits(studio, store, monkeypatch):
    st = S.ArenaState()
    ask(studio, st)

    def broken(**kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "record_vote", broken)
    with pytest.raises(OSError):
        S.cast_vote(store, st, "a")
    assert st.phase == "answered" and S.labels(st) == ("Model A", "Model B") and st.receipt is None


def test_a_failing_side_does_not_reveal_its_name(studio, store, tmp_path):
    (tmp_path / "secret-expert").mkdir()
    studio.pool.register("secret-expert", str(tmp_path / "secret-expert"), "lora")
    try:
        st = S.ArenaState()
        updates = ask(studio, st, pool=["base", "secret-expert"])
        assert st.phase == "failed" and st.errors
        shown = repr([S.views(st, u) for u in updates]) + repr(S.views(st)) + A.status_md(st) + A.reveal_md(st)
        assert "secret-expert" not in shown and S.FAILED_BLIND in shown
        assert "could not answer" in A.status_md(st)
        with pytest.raises(ValueError, match="cannot be voted"):
            S.cast_vote(store, st, "a")
    finally:
        studio.pool.unregister("secret-expert")


def test_choices_and_fused_recipes(studio):
    assert S.default_pool(studio) == ["base", "math-lora", "code-lora", "finance-lora", "medical-lora"]
    assert S.domain_choices(studio) == ["code", "finance", "math", "medical", "other"]
    assert S.clean_label("  Math ", "x") == "math" and S.clean_label("", "x") is None
    fake = SimpleNamespace(variants={"graft-1": SimpleNamespace(recipe={"method": "graft"})})
    assert S.variant_of(fake, "graft-1").recipe == {"method": "graft"} and S.variant_of(fake, "base").recipe is None


def test_leaderboard_compute_filters_and_exports(store, tmp_path):
    empty = L.compute(store)
    assert "No blind votes yet" in empty[0] and len(empty[1]) == 0
    rng = random.Random(0)
    names = ["base", "math-lora", "code-lora"]
    for i in range(30):
        a, b = rng.sample(names, 2)
        store.record_vote(turn_id=f"t{i}", battle_id=f"b{i}", variant_a=a, variant_b=b,
                          vote=rng.choice(["a", "b", "tie", "both_bad"]), prompt="p", answer_a="x", answer_b="y",
                          blind=i % 10 != 0, domain="math" if i % 2 else "code", expertise="math" if i % 3 else None)
    summary, df, *rest = L.compute(store, n_bootstrap=50)
    figs = rest[:3]  # then the style text, the flagged voters and their choices
    assert "**27** blind votes" in summary and "3 named-mode votes not counted" in summary
    assert list(df.columns) == L.COLUMNS and set(df["variant"]) == set(names)
    assert df["battles"].sum() == 2 * 27 and all(f.layout.height for f in figs)
    summary, df, *_ = L.compute(store, "math", "math", n_bootstrap=20)
    kept = [v for v in store.votes(blind=True) if v.domain == "math" and v.expertise == "math"]
    assert f"**{len(kept)}** blind vote" in summary and df["battles"].sum() == 2 * len(kept)
    assert L.filter_choices(store) == (["all domains", "code", "math"], ["all voters", "math"])

    root = tmp_path / "exports"
    path = L.export_file(store, "csv", root)
    with open(path, newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 30
    assert L.export_file(store, "jsonl", root).endswith(".jsonl") and L.export_file(store, "csv", root) != path


def test_vote_exports_stay_in_the_work_dir_and_old_ones_are_removed(store, tmp_path):
    """Exports used to go to a new /tmp/graft-vote-exports-* folder per process, never removed,
    and the pruning of old exports skipped their folders."""
    import glob
    import os
    import tempfile
    import time

    pattern = os.path.join(tempfile.gettempdir(), "graft-vote-exports-*")
    before = set(glob.glob(pattern))
    root = tmp_path / "work" / "exports" / "votes"
    first = Path(L.export_file(store, "csv", root))
    assert first.parent.parent == root and set(glob.glob(pattern)) == before
    old = time.time() - L.EXPORT_KEEP_S - 5
    os.utime(first, (old, old))
    os.utime(first.parent, (old, old))
    second = Path(L.export_file(store, "jsonl", root))
    assert not first.parent.exists() and second.is_file()
    assert [p.name for p in root.iterdir()] == [second.parent.name]


def test_weighted_pairing_rate_hook_voter_session_and_reading_time(studio, store):
    from graft_ui.arena.limits import RateLimiter, RateLimitError

    st = S.ArenaState()
    only = {("math-lora", "code-lora"): 1.0, ("base", "math-lora"): 0.0}  # the weights decide the pair
    S.begin_turn(studio, st, text="What is 3 + 3?", image=None, mode=S.BLIND, pool=POOL, named_a=None, named_b=None,
                 domain=None, settings=FAST, rng=random.Random(0), pair_weights=lambda pool: only)
    assert set(st.names) == {"math-lora", "code-lora"}
    list(S.stream_turn(studio, st))
    vote, _ = S.cast_vote(store, st, "b", voter_id="session-xyz")
    assert vote.voter_hash == store.hash_client("session-xyz") and vote.voter == vote.voter_hash
    assert vote.read_s is not None and 0 <= vote.read_s < 60

    limiter = RateLimiter("battles=1/hour,loopback")
    admit = lambda: limiter.check("battles", "127.0.0.1")  # noqa: E731
    S.begin_turn(studio, st, text="Next?", image=None, mode=S.BLIND, pool=POOL, named_a=None, named_b=None,
                 domain=None, settings=FAST, admit_battle=admit)
    list(S.stream_turn(studio, st))
    S.cast_vote(store, st, "a")
    battle = st.battle
    with pytest.raises(RateLimitError, match="Too many new battles"):
        S.begin_turn(studio, st, text="One more?", image=None, mode=S.BLIND, pool=POOL, named_a=None, named_b=None,
                     domain=None, settings=FAST, admit_battle=admit)
    assert st.battle is battle and st.phase == "voted"  # a refused battle changes nothing


def test_leaderboard_restore_voter_and_confirm_on_fresh_votes(store):
    for i in range(30):
        a, b = ("x", "y") if i % 2 else ("y", "x")
        store.record_vote(turn_id=f"c{i}", battle_id=f"c{i}", variant_a=a, variant_b=b, vote="a" if a == "x" else "b",
                          prompt="p", answer_a="one", answer_b="two", voter_id=f"crowd{i % 10}")
    for i in range(6):
        store.record_vote(turn_id=f"r{i}", battle_id=f"r{i}", variant_a="y", variant_b="x", vote="a", prompt="p",
                          answer_a="one", answer_b="two", voter_id="rogue")
    summary, df, *_, style, flags, choices = L.compute(store, n_bootstrap=20)
    rogue = store.hash_client("rogue")
    assert "**6** votes of flagged voters left out" in summary and choices[0][1] == rogue
    assert list(flags["status"]) == ["flagged (left out)"] and style == ""
    with pytest.raises(ValueError, match="choose a flagged voter"):
        L.set_voter(store, None, True)
    assert "restored" in L.set_voter(store, rogue, True)
    summary, _, *_, flags, _ = L.compute(store, n_bootstrap=20)
    assert "flagged voters left out" not in summary and list(flags["status"]) == ["restored (counted)"]
    L.set_voter(store, rogue, False)
    assert store.marks("voter") == {} and store.count() == 36

    assert "confirmed on votes cast from now on" in L.confirm_fresh(store, "x")
    _, df, *_ = L.compute(store, n_bootstrap=20)
    assert df.set_index("variant").loc["x", "tuning"] == "no fresh votes yet"
    store.record_vote(turn_id="late", battle_id="late", variant_a="x", variant_b="y", vote="a", prompt="p",
                      answer_a="one", answer_b="two")
    _, df, *_ = L.compute(store, n_bootstrap=20)
    assert df.set_index("variant").loc["x", "tuning"].endswith("on 1 fresh vote")
