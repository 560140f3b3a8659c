"""The trusted leaderboard: vote-quality exclusions, raw and style-controlled ratings side by side,
the votes still needed between neighbours, and best-of-N groups with fresh-vote confirmation.

One call (`verdict`) composes the pieces (quality.py, ratings.py, style.py, verdicts.py) for the
Leaderboard tab and `python -m graft_ui votes leaderboard`. Nothing is deleted: the checks
choose which stored votes the fit counts, and the counts of what was left out go with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from graft_ui.arena.quality import Quality, check_votes
from graft_ui.arena.ratings import Leaderboard, bradley_terry, filter_votes, leaderboard
from graft_ui.arena.style import StyleFit, style_controlled
from graft_ui.arena.verdicts import Separation, TuneGroup, fresh_only, separations


@dataclass(frozen=True)
class Verdict:
    board: Leaderboard  # the raw fit of the counted votes
    quality: Quality
    style: StyleFit | None = None
    separations: tuple[Separation, ...] = ()
    groups: dict = field(default_factory=dict)  # variant -> TuneGroup
    fresh: dict = field(default_factory=dict)  # confirmed variant -> (rating on fresh votes, fresh decisive votes)
    excluded_votes: int = 0  # votes of flagged voters left out
    fast_votes: int = 0  # votes marked as cast faster than reading
    dropped_fast: bool = False

    def rows(self) -> list[dict]:
        """The raw leaderboard's rows, each with its controlled rating, the verdict on the next row and its group."""
        style = dict(zip(self.style.variants, zip(self.style.rating, self.style.ci_low, self.style.ci_high))) \
            if self.style is not None else {}
        nxt = {s.upper: s for s in self.separations}
        out = []
        for r in self.board.rows():
            name = r["variant"]
            row = dict(r)
            if name in style:
                rating, lo, hi = style[name]
                row.update(style_rating=round(rating), style_ci_low=round(lo), style_ci_high=round(hi))
            sep = nxt.get(name)
            row["vs_next"] = sep.text() if sep is not None else ""
            group = self.groups.get(name)
            row["tuning"] = f"best of {group.trials} tried ({group.key})" if group is not None else ""
            if name in self.fresh:
                rating, n = self.fresh[name]
                row["fresh"] = f"{round(rating)} on {n} fresh vote{'s' if n != 1 else ''}" if n else "no fresh votes yet"
            else:
                row["fresh"] = ""
            out.append(row)
        return out


def verdict(
    votes: Iterable[Any],
    *,
    domain: str | None = None,
    expertise: str | None = None,
    restored: Mapping[str, str] | Iterable[str] = (),
    drop_flagged: bool = True,
    drop_fast: bool = False,
    style_control: bool = False,
    groups: Mapping[str, TuneGroup] | None = None,
    confirmed: Mapping[str, str] | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> Verdict:
    """Everything the Leaderboard shows, from the store's votes (all of them; blind ones count)."""
    blind = filter_votes(votes)
    quality = check_votes(blind, restored)  # a voter session is judged on all its blind votes
    scoped = filter_votes(blind, domain=domain, expertise=expertise)
    counted = quality.keep(scoped, drop_flagged=drop_flagged, drop_fast=drop_fast)
    board = leaderboard(counted, n_bootstrap=n_bootstrap, seed=seed)
    board = _with_filters(board, domain, expertise)
    style = style_controlled(counted, n_bootstrap=max(n_bootstrap // 2, 1), seed=seed) if style_control and counted else None
    ranked = [s for s in board.standings if not s.provisional]
    primary = style.ratings() if style is not None else {s.variant: s.rating for s in board.standings}
    order = sorted((s.variant for s in ranked), key=lambda n: -primary[n])
    seps = tuple(separations(order, primary, counted))
    groups = {k: g for k, g in (groups or {}).items() if k in board.variants}
    fresh = {}
    if confirmed:
        later = fresh_only(counted, confirmed)
        rated = bradley_terry(later) if later else {}
        for name in confirmed:
            n = sum(1 for v in later if v.vote in ("a", "b") and name in (v.variant_a, v.variant_b))
            fresh[name] = (rated.get(name, float("nan")), n)
    return Verdict(board, quality, style, seps, groups, fresh, len(scoped) - len(quality.keep(scoped, drop_flagged=drop_flagged)),
                   sum(1 for v in scoped if v.turn_id in quality.fast), drop_fast)


def _with_filters(board: Leaderboard, domain: str | None, expertise: str | None) -> Leaderboard:
    return replace(board, filters={"domain": domain or None, "expertise": expertise or None})


def counted_votes(votes: Sequence[Any], restored=(), *, drop_flagged: bool = True) -> list:
    """The blind votes the fit counts (flagged voters out unless restored): for the pairing weights."""
    blind = filter_votes(votes)
    return check_votes(blind, restored).keep(blind, drop_flagged=drop_flagged)
