"""Vote quality on hand-made battles: the e-value voter test, fast votes, the rate limiter; votes needed."""

from __future__ import annotations

import math

import pytest

from graft_ui.arena.limits import RateLimiter, RateLimitError, parse_spec
from graft_ui.arena.quality import RESTORED, check_votes, is_fast, outlier_voters
from graft_ui.arena.verdicts import fresh_only, separations, votes_needed


def vote(i, a, b, label, voter, **kw):
    return {"turn_id": f"t{i}", "variant_a": a, "variant_b": b, "vote": label, "voter_hash": voter, "blind": True,
            "answer_a": kw.get("answer_a", "x"), "answer_b": kw.get("answer_b", "y"), "read_s": kw.get("read_s"),
            "created_at": kw.get("created_at", f"2026-01-01T00:00:{i % 60:02d}")}


def crowd(n=40):
    """40 crowd votes: strong beats weak every time."""
    return [vote(i, "strong", "weak", "a", f"crowd{i}") for i in range(n)]


def test_e_value_is_the_product_of_one_over_two_p():
    # the contrarian votes weak over strong 5 times; the others' record is 40-0, so p = 1/42 for each vote
    votes = crowd() + [vote(100 + i, "weak", "strong", "a", "rogue") for i in range(5)]
    check = outlier_voters(votes)["rogue"]
    assert check.n_votes == 5
    assert check.log_e == pytest.approx(5 * math.log(42 / 2), rel=1e-12)
    assert check.flagged  # 21^5 > 1/0.05


def test_agreeing_voter_and_short_sessions_are_not_flagged():
    votes = crowd() + [vote(100 + i, "strong", "weak", "a", "fan") for i in range(6)]
    votes += [vote(200 + i, "weak", "strong", "a", "brief") for i in range(4)]  # under 5 votes: not tested
    checks = outlier_voters(votes)
    assert not checks["fan"].flagged and checks["fan"].log_e < 0
    assert "brief" not in checks


def test_ties_score_one_and_an_unseen_pair_is_one_half():
    votes = [vote(i, "p", "q", "tie", "v") for i in range(5)] + [vote(9 + i, "r", "s", "a", "v") for i in range(5)]
    check = outlier_voters(votes)["v"]  # r-s only seen by v: p = (0 + 1) / (0 + 2) -> factor 1 each
    assert check.n_votes == 5 and check.log_e == pytest.approx(0.0, abs=1e-12)


def test_flagged_votes_are_left_out_unless_restored():
    votes = crowd() + [vote(100 + i, "weak", "strong", "a", "rogue") for i in range(6)]
    q = check_votes(votes)
    assert q.excluded_voters == {"rogue"} and len(q.keep(votes)) == 40
    assert len(q.keep(votes, drop_flagged=False)) == 46
    q = check_votes(votes, {"rogue": RESTORED})
    assert q.excluded_voters == frozenset() and [c.voter for c in q.flagged] == ["rogue"]  # still shown
    assert len(q.keep(votes)) == 46


def test_fast_votes_are_marked():
    text = " ".join(["word"] * 100)  # two answers of 100 words: 12 s at 1000 words a minute
    assert is_fast(vote(0, "a", "b", "a", "v", answer_a=text, answer_b=text, read_s=3.0))
    assert not is_fast(vote(0, "a", "b", "a", "v", answer_a=text, answer_b=text, read_s=20.0))
    assert not is_fast(vote(0, "a", "b", "a", "v", answer_a=text, answer_b=text))  # unknown: not marked
    q = check_votes([vote(0, "a", "b", "a", "v", answer_a=text, answer_b=text, read_s=1.0)])
    assert q.fast == {"t0"} and q.keep([{"turn_id": "t0"}], drop_fast=True) == []


def test_votes_needed_matches_the_published_counts():
    assert [votes_needed(p) for p in (0.55, 0.60, 0.65, 0.70)] == [783, 194, 85, 47]
    assert votes_needed(0.5) == math.inf and votes_needed(0.3) == votes_needed(0.7)


def test_separations_say_when_neighbours_cannot_be_ranked():
    votes = [vote(i, "x", "y", "a", "v") for i in range(50)] + [vote(100 + i, "y", "z", "a", "v") for i in range(3)]
    seps = separations(["x", "y", "z"], {"x": 1200.0, "y": 1000.0, "z": 990.0}, votes)
    assert seps[0].separated and seps[0].text() == "separated from y"  # p = 0.76 needs ~30, has 50
    assert not seps[1].separated and seps[1].more == votes_needed(seps[1].p) - 3
    assert seps[1].text().startswith(f"cannot rank above z yet: about {int(seps[1].more)} more decisive votes")


def test_fresh_only_drops_a_confirmed_variants_earlier_votes():
    votes = [vote(i, "w", "o", "a", "v", created_at=f"2026-01-0{i + 1}T00:00:00") for i in range(4)]
    votes.append(vote(9, "o", "p", "a", "v", created_at="2026-01-01T00:00:00"))
    kept = fresh_only(votes, {"w": "2026-01-03T00:00:00"})
    assert [v["turn_id"] for v in kept] == ["t2", "t3", "t9"]


def test_rate_limiter_windows_loopback_and_message():
    now = [0.0]
    lim = RateLimiter("votes=2/min,battles=1/min", clock=lambda: now[0])
    lim.check("votes", "10.0.0.1")
    lim.check("votes", "10.0.0.1")
    with pytest.raises(RateLimitError, match=r"Too many votes from your address: at most 2 per min\. .*60 s"):
        lim.check("votes", "10.0.0.1")
    lim.check("votes", "10.0.0.2")  # per client
    for _ in range(5):
        lim.check("votes", "127.0.0.1")  # loopback is exempt unless the spec says so
    now[0] = 61.0
    lim.check("votes", "10.0.0.1")  # the window slid
    strict = RateLimiter("battles=1/min,loopback", clock=lambda: now[0])
    strict.check("battles", "127.0.0.1")
    with pytest.raises(RateLimitError, match="new battles"):
        strict.check("battles", "127.0.0.1")
    assert parse_spec("off") == ([], False) and not RateLimiter("off").enabled
    with pytest.raises(ValueError, match="KIND=N/UNIT"):
        parse_spec("votes=lots")
