"""Vote quality: voters whose votes the crowd's record makes implausible, and votes cast unread.

Outlier voters (after FastChat's `outlier_detect`, an e-value test): for a voter session with
at least `min_votes` decisive blind votes, each vote for side X of pair (X, Y) is scored
against that pair's record among the *other* voters' votes: the one-sided p of the outcome,
`p = (wins of X + 1) / (battles + 2)` (ties count half; the +1/+2 keeps an unseen pair at
1/2), and the voter's e-value is `M = prod 1/(2p)` (ties and both_bad score 1). A voter
who votes like the crowd has E[1/(2p)] = 1 per vote, so by Markov's inequality `M > 1/alpha`
happens to at most alpha of honest voters; a voter who keeps contradicting settled pairs
passes it after a few votes. Flagged voters' votes are left out of the fit by default;
the operator can restore a voter (a mark in the store: the votes themselves never change).

Unread votes: a vote whose `read_s` (both answers complete -> vote) is shorter than reading
both answers at READ_WORDS_PER_S takes is marked `fast` (shown; dropped only on request).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from graft_ui.arena.ratings import SCORE_A, _get

MIN_VOTES = 5
ALPHA = 0.05
MAX_VOTES = 100  # a voter's first 100 decisive votes are tested (their product cannot run away)
READ_WORDS_PER_S = 1000 / 60  # 1000 words a minute: faster than anyone reads
RESTORED = "restored"  # the mark value (kind "voter") that puts a flagged voter's votes back


def voter_of(vote: Any) -> str | None:
    """A vote's voter session: the hashed browser session, else the hashed client address."""
    return _get(vote, "voter_hash") or _get(vote, "client_hash")


@dataclass(frozen=True)
class VoterCheck:
    voter: str
    n_votes: int  # decisive votes tested
    log_e: float  # log of the e-value M
    flagged: bool

    @property
    def e_value(self) -> float:
        return math.exp(min(self.log_e, 700.0))


def outlier_voters(votes: Iterable[Any], *, min_votes: int = MIN_VOTES, alpha: float = ALPHA,
                   max_votes: int = MAX_VOTES) -> dict[str, VoterCheck]:
    """The e-value test of every voter session with at least `min_votes` decisive votes."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    if isinstance(min_votes, bool) or not isinstance(min_votes, int) or min_votes < 1:
        raise ValueError(f"min_votes={min_votes!r} must be a positive integer")
    # record[(x, y)] = [wins of x over y, battles] over all voters; each voter's own share is taken out below
    record: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    own: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # voter -> (side A, side B, label)
    for v in votes:
        label = _get(v, "vote")
        a, b = _get(v, "variant_a"), _get(v, "variant_b")
        s = SCORE_A[label]
        record[(a, b)][0] += s
        record[(a, b)][1] += 1
        record[(b, a)][0] += 1 - s
        record[(b, a)][1] += 1
        who = voter_of(v)
        if who is not None:
            own[who].append((a, b, label))
    mine: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    out = {}
    for who, cast in own.items():
        decisive = [(a, b) if label == "a" else (b, a) for a, b, label in cast if label in ("a", "b")]
        if len(decisive) < min_votes:
            continue
        mine.clear()
        for a, b, label in cast:
            s = SCORE_A[label]
            mine[(a, b)][0] += s
            mine[(a, b)][1] += 1
            mine[(b, a)][0] += 1 - s
            mine[(b, a)][1] += 1
        log_e = 0.0
        tested = decisive[:max_votes]
        for winner, loser in tested:
            wins = record[(winner, loser)][0] - mine[(winner, loser)][0]
            games = record[(winner, loser)][1] - mine[(winner, loser)][1]
            p = (wins + 1.0) / (games + 2.0)
            log_e += -math.log(2.0 * p)
        out[who] = VoterCheck(who, len(tested), log_e, log_e > math.log(1.0 / alpha))
    return out


def is_fast(vote: Any, words_per_s: float = READ_WORDS_PER_S) -> bool:
    """Cast before both answers could have been read (False when the reading time is unknown)."""
    read_s = _get(vote, "read_s")
    if read_s is None:
        return False
    words = len(str(_get(vote, "answer_a") or "").split()) + len(str(_get(vote, "answer_b") or "").split())
    return float(read_s) < words / words_per_s


@dataclass(frozen=True)
class Quality:
    """What the quality checks found in a set of votes, and which of them the fit leaves out."""

    checks: dict[str, VoterCheck]
    restored: frozenset = field(default_factory=frozenset)
    fast: frozenset = field(default_factory=frozenset)  # turn ids of fast votes

    @property
    def flagged(self) -> list[VoterCheck]:
        """Flagged voters, most suspicious first (restored ones included: they stay flagged)."""
        return sorted((c for c in self.checks.values() if c.flagged), key=lambda c: -c.log_e)

    @property
    def excluded_voters(self) -> frozenset:
        return frozenset(c.voter for c in self.flagged if c.voter not in self.restored)

    def keep(self, votes: Iterable[Any], *, drop_flagged: bool = True, drop_fast: bool = False) -> list:
        """The votes the fit counts: without excluded voters (unless drop_flagged=False) and fast votes (if asked)."""
        out = []
        excluded = self.excluded_voters if drop_flagged else frozenset()
        for v in votes:
            if voter_of(v) in excluded or (drop_fast and _get(v, "turn_id") in self.fast):
                continue
            out.append(v)
        return out


def check_votes(votes: Iterable[Any], restored: Mapping[str, str] | Iterable[str] = (), **kwargs) -> Quality:
    """Run the checks on `votes` (the blind ones the leaderboard would count). `restored`: the store's
    voter marks ({voter: "restored"}) or voter ids the operator put back."""
    votes = list(votes)
    if isinstance(restored, Mapping):
        restored = [k for k, v in restored.items() if v == RESTORED]
    fast = frozenset(_get(v, "turn_id") for v in votes if is_fast(v))
    return Quality(outlier_voters(votes, **kwargs), frozenset(restored), fast)
