"""What the leaderboard can and cannot say yet: votes needed to separate neighbours, and best-of-N.

Votes needed: to tell a win rate p from 1/2 with a two-sided binomial test at level alpha and
power `power` takes about

    n = ((z_{1-alpha/2} * 0.5 + z_power * sqrt(p (1 - p))) / (p - 0.5))^2

decisive votes (0.55 -> 783, 0.60 -> 194, 0.65 -> 85, 0.70 -> 47 at alpha 0.05, power 0.8).
For two neighbours on the leaderboard, p is the win rate the current Bradley-Terry fit
predicts for the upper one, and the pair is "separated" once it has that many decisive votes
between the two; otherwise the table says about how many more it needs.

Best-of-N: a tuning run tries many recipes and enters only its winner, whose rating is then
a maximum over siblings and runs high (arXiv 2504.20879). `tuning_groups` reads each tuned
variant's run record (`tune/tune.json` in its folder) and groups the variants of one
tuning setup (method + experts); `fresh_only` keeps, for a confirmed variant, only the
votes cast after the operator's confirmation time, so its rating can be re-checked on votes
that played no part in picking it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from scipy.stats import norm

from graft_ui.arena.ratings import SCALE, _get

log = logging.getLogger(__name__)

ALPHA, POWER = 0.05, 0.8
MAX_SHOWN = 100_000  # "more than" this: the pair is as good as tied


def votes_needed(p: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Decisive votes to separate win rate `p` from 1/2 (inf for p = 1/2)."""
    if not 0 < p < 1:
        raise ValueError(f"win rate p={p!r} must be in (0, 1)")
    if abs(p - 0.5) < 1e-12:
        return math.inf
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return math.ceil(((za * 0.5 + zb * math.sqrt(p * (1 - p))) / (p - 0.5)) ** 2)


@dataclass(frozen=True)
class Separation:
    upper: str
    lower: str
    p: float  # predicted win rate of upper over lower
    decisive: int  # decisive votes between the two so far
    needed: float

    @property
    def separated(self) -> bool:
        return self.decisive >= self.needed

    @property
    def more(self) -> float:
        return max(self.needed - self.decisive, 0)

    def text(self) -> str:
        """The verdict on this variant against the next one down (named: with style control the
        table's order and the ratings' order can differ)."""
        if self.separated:
            return f"separated from {self.lower}"
        if self.more > MAX_SHOWN:
            return f"cannot rank above {self.lower} yet: more than {MAX_SHOWN:,} decisive votes to separate at 95%"
        return f"cannot rank above {self.lower} yet: about {int(self.more)} more decisive votes to separate at 95%"


def separations(order: list[str], ratings: Mapping[str, float], votes: Iterable[Any]) -> list[Separation]:
    """One Separation per adjacent pair of `order` (best first), from Elo-scale `ratings` and the votes counted."""
    decisive: dict[frozenset, int] = {}
    for v in votes:
        if _get(v, "vote") in ("a", "b"):
            key = frozenset((_get(v, "variant_a"), _get(v, "variant_b")))
            decisive[key] = decisive.get(key, 0) + 1
    out = []
    for upper, lower in zip(order, order[1:]):
        p = 1.0 / (1.0 + math.exp(-(ratings[upper] - ratings[lower]) / SCALE))
        p = min(max(p, 0.5), 1 - 1e-9)
        out.append(Separation(upper, lower, p, decisive.get(frozenset((upper, lower)), 0), votes_needed(p)))
    return out


# ---- best-of-N ---------------------------------------------------------------------------------

FRESH = "fresh"  # mark kind: variant -> ISO time after which its votes are "fresh"


@dataclass(frozen=True)
class TuneGroup:
    key: str  # "method: expert + expert"
    variants: tuple[str, ...]  # arena variants from this tuning setup
    trials: int  # recipes tried over all its runs (the N of best-of-N)


def tuning_groups(variant_dirs: Mapping[str, str | Path]) -> dict[str, TuneGroup]:
    """{variant: its group} for the variants whose folder holds a tuning run record (tune/tune.json)."""
    runs: dict[str, list[tuple[str, int]]] = {}
    for name, folder in variant_dirs.items():
        path = Path(folder) / "tune" / "tune.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            key = f"{data['method']}: {' + '.join(map(str, data['experts']))}"
            trials = len(data.get("trials") or [])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("tuning record %s is unreadable (%s); %s is shown ungrouped", path, exc, name)
            continue
        runs.setdefault(key, []).append((name, trials))
    out = {}
    for key, members in runs.items():
        group = TuneGroup(key, tuple(sorted(n for n, _ in members)), sum(t for _, t in members))
        for name, _ in members:
            out[name] = group
    return out


def fresh_only(votes: Iterable[Any], confirmed: Mapping[str, str]) -> list:
    """Votes, less those of a confirmed variant cast before its confirmation time (ISO strings compare in order)."""
    out = []
    for v in votes:
        since = [confirmed[n] for n in (_get(v, "variant_a"), _get(v, "variant_b")) if n in confirmed]
        if since and str(_get(v, "created_at")) < max(since):
            continue
        out.append(v)
    return out
