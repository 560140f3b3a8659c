"""Leaderboard maths: Bradley-Terry ratings by maximum likelihood, bootstrap intervals.

Model: variant i has log-strength theta_i and beats j with probability
`sigmoid(theta_i - theta_j)`. Each battle adds a score to the pair: a win is 1 for the
winner, and a tie and a "both bad" are each half a win to both sides (the fit has no
separate tie parameter; "both_bad" stays its own label in the store, the exports and the
table's counts, and only the fit treats it as a tie). The estimate maximises

    sum_battles  s * log sigmoid(theta_a - theta_b) + (1 - s) * log sigmoid(theta_b - theta_a)
      - ridge / 2 * sum_i theta_i^2

with scipy's trust-region Newton method (exact gradient and Hessian). The small ridge (default 0.01, a Gaussian
prior with sd 10 nats) pins the free shift of theta (the data part is shift-invariant,
so the optimum has mean(theta) = 0) and keeps an undefeated variant finite.

Reported ratings are on an Elo-like scale: `1000 + 400 * log10(exp(theta))`, so 400
points is 10:1 odds and the mean rating is 1000. 95% intervals: refit on battles
resampled with replacement (`n_bootstrap` times, seeded) and take the 2.5 and 97.5
percentiles of each variant's rating. Only blind votes count (`filter_votes`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

log = logging.getLogger(__name__)

DEFAULT_RIDGE = 0.01
SCALE = 400.0 / math.log(10.0)  # rating points per nat of log-strength
BASE_RATING = 1000.0
# score of side A per vote label; both_bad is a tie for the fit (see module docstring)
SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


def _get(vote: Any, key: str, default: Any = None) -> Any:
    if isinstance(vote, dict):
        return vote.get(key, default)
    return getattr(vote, key, default)


def filter_votes(
    votes: Iterable[Any],
    *,
    domain: str | None = None,
    expertise: str | None = None,
    blind_only: bool = True,
) -> list:
    """Votes (Vote objects or dicts) that count: blind ones, optionally one prompt domain
    and/or one declared voter expertise (None or '' = any)."""
    out = []
    for v in votes:
        if blind_only and not _get(v, "blind", True):
            continue
        if domain and _get(v, "domain") != domain:
            continue
        if expertise and _get(v, "expertise") != expertise:
            continue
        out.append(v)
    return out


@dataclass(frozen=True)
class Battles:
    """Votes encoded as integer arrays: side-A index, side-B index, side-A score."""

    variants: tuple[str, ...]
    a: np.ndarray  # (N,) int
    b: np.ndarray  # (N,) int
    score: np.ndarray  # (N,) float in {0, 0.5, 1}
    labels: tuple[str, ...]  # (N,) the raw vote labels

    @property
    def k(self) -> int:
        return len(self.variants)

    def __len__(self) -> int:
        return len(self.a)


def encode(votes: Iterable[Any], variants: Sequence[str] | None = None) -> Battles:
    """Encode votes; `variants` fixes the order (default: sorted ids seen)."""
    votes = list(votes)
    seen = sorted({_get(v, "variant_a") for v in votes} | {_get(v, "variant_b") for v in votes})
    if variants is None:
        variants = seen
    else:
        variants = list(variants)
        missing = sorted(set(seen) - set(variants))
        if missing:
            raise ValueError(f"votes name variants {missing} that are not in variants={variants}")
    index = {name: i for i, name in enumerate(variants)}
    labels = []
    for v in votes:
        label = _get(v, "vote")
        if label not in SCORE_A:
            raise ValueError(f"vote {_get(v, 'turn_id')!r}: vote={label!r} is not one of {list(SCORE_A)}")
        if _get(v, "variant_a") == _get(v, "variant_b"):
            raise ValueError(f"vote {_get(v, 'turn_id')!r}: both sides are {_get(v, 'variant_a')!r}")
        labels.append(label)
    a = np.array([index[_get(v, "variant_a")] for v in votes], dtype=np.int64)
    b = np.array([index[_get(v, "variant_b")] for v in votes], dtype=np.int64)
    score = np.array([SCORE_A[x] for x in labels], dtype=np.float64)
    return Battles(tuple(variants), a, b, score, tuple(labels))


def _win_matrix(battles: Battles, weights: np.ndarray | None = None) -> np.ndarray:
    """W[i, j] = (weighted) wins of i over j, ties counting half to each."""
    k = battles.k
    w = np.ones(len(battles)) if weights is None else weights
    flat = np.bincount(battles.a * k + battles.b, weights=w * battles.score, minlength=k * k)
    flat += np.bincount(battles.b * k + battles.a, weights=w * (1.0 - battles.score), minlength=k * k)
    return flat.reshape(k, k)  # (K, K)


def fit_log_strengths(wins: np.ndarray, ridge: float = DEFAULT_RIDGE, theta0: np.ndarray | None = None) -> np.ndarray:
    """Penalised Bradley-Terry MLE of theta from a win matrix W (K, K); mean(theta) = 0."""
    wins = np.asarray(wins, dtype=np.float64)
    k = wins.shape[0]
    if wins.shape != (k, k):
        raise ValueError(f"win matrix must be square, got shape {wins.shape}")
    if not ridge > 0:
        raise ValueError(f"ridge={ridge!r} must be > 0 (it makes the ratings identifiable)")
    if k == 0:
        return np.zeros(0)
    # The objective is divided by the number of battles so that its value is O(1): the
    # trust-region test compares predicted and actual decreases, which float rounding of
    # a sum over thousands of battles would otherwise swamp near the optimum.
    n = max(float(wins.sum()), 1.0)
    w = wins / n  # (K, K)
    lam = ridge / n
    total_wins = w.sum(axis=1)  # (K,)
    games = w + w.T  # (K, K) N_ij / n

    def nll(theta):
        diff = theta[:, None] - theta[None, :]  # (K, K) theta_i - theta_j
        value = -(w * log_expit(diff)).sum() + 0.5 * lam * theta @ theta
        # d/dtheta_i: -(wins_i - sum_j N_ij P_ij) + ridge * theta_i
        grad = -(total_wins - (games * expit(diff)).sum(axis=1)) + lam * theta
        return value, grad

    def hess(theta):
        p = expit(theta[:, None] - theta[None, :])  # (K, K)
        c = games * p * (1.0 - p)  # (K, K) Fisher weights, symmetric
        return np.diag(c.sum(axis=1) + lam) - c

    x0 = np.zeros(k) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    # trust-exact: Newton steps with the exact Hessian (K is small), a few iterations to
    # machine precision, which the logistic-regression check relies on
    res = minimize(nll, x0, jac=True, hess=hess, method="trust-exact", options={"gtol": 1e-10, "maxiter": 200})
    # stopping because no further decrease is measurable is fine once the gradient is tiny
    if not res.success and not np.max(np.abs(res.jac)) < 1e-7:
        log.warning("Bradley-Terry fit did not converge (max |gradient| %.2g): %s", np.max(np.abs(res.jac)), res.message)
    theta = res.x
    return theta - theta.mean()  # exact centring (the ridge optimum is already ~0-mean)


def fisher_information(wins: np.ndarray, theta: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """(K, K) observed information of the penalised fit at theta (un-normalised: per battle, not per mean);
    its inverse is the ratings' approximate covariance in nats^2."""
    games = wins + wins.T  # (K, K)
    p = expit(theta[:, None] - theta[None, :])  # (K, K)
    c = games * p * (1.0 - p)
    return np.diag(c.sum(axis=1) + ridge) - c


def to_rating(theta: np.ndarray) -> np.ndarray:
    return BASE_RATING + SCALE * np.asarray(theta)


def bradley_terry(votes: Iterable[Any], *, ridge: float = DEFAULT_RIDGE, variants: Sequence[str] | None = None) -> dict[str, float]:
    """Ratings (Elo-like scale, mean 1000) of every variant in `votes` (already filtered)."""
    battles = encode(votes, variants)
    theta = fit_log_strengths(_win_matrix(battles), ridge)
    return dict(zip(battles.variants, to_rating(theta).tolist()))


def bootstrap(
    votes: Iterable[Any],
    *,
    n: int = 200,
    seed: int = 0,
    ridge: float = DEFAULT_RIDGE,
    level: float = 0.95,
    variants: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each variant's rating, resampling battles."""
    battles = encode(votes, variants)
    samples = _bootstrap_samples(battles, n, seed, ridge)
    lo, hi = _percentiles(samples, level)
    return {name: (float(l), float(h)) for name, l, h in zip(battles.variants, lo, hi)}


def _bootstrap_samples(battles: Battles, n: int, seed: int, ridge: float) -> np.ndarray:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_bootstrap={n!r} must be a positive integer")
    rng = np.random.default_rng(seed)
    total = len(battles)
    theta_full = fit_log_strengths(_win_matrix(battles), ridge)
    out = np.empty((n, battles.k))  # (B, K) ratings
    for r in range(n):
        counts = np.bincount(rng.integers(0, total, size=total), minlength=total).astype(np.float64)
        theta = fit_log_strengths(_win_matrix(battles, counts), ridge, theta0=theta_full)
        out[r] = to_rating(theta)
    return out


def _percentiles(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must be in (0, 1)")
    tail = 100 * (1 - level) / 2
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def win_fraction_matrix(votes: Iterable[Any], variants: Sequence[str] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """M[i, j] = share of i-vs-j battles won by i (ties and both_bad count half); NaN where none."""
    battles = encode(votes, variants)
    wins = _win_matrix(battles)
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(games > 0, wins / games, np.nan)
    return battles.variants, frac


def battle_counts(votes: Iterable[Any], variants: Sequence[str] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """C[i, j] = number of battles between i and j (symmetric, integer)."""
    battles = encode(votes, variants)
    k = battles.k
    flat = np.bincount(battles.a * k + battles.b, minlength=k * k).reshape(k, k)
    return battles.variants, flat + flat.T


# below this many blind battles a variant's rating is provisional: shown apart, with no interval
MIN_BATTLES = 10


@dataclass(frozen=True)
class Standing:
    rank: int
    variant: str
    rating: float
    ci_low: float
    ci_high: float
    battles: int
    wins: int
    losses: int
    ties: int
    both_bad: int

    @property
    def provisional(self) -> bool:
        """Too few battles for the rating (and its interval) to mean much."""
        return self.battles < MIN_BATTLES

    @property
    def win_rate(self) -> float:
        """(wins + half of ties and both_bad) / battles."""
        return (self.wins + 0.5 * (self.ties + self.both_bad)) / self.battles if self.battles else float("nan")


TABLE_COLUMNS = ("rank", "variant", "rating", "ci_low", "ci_high", "battles", "wins", "losses", "ties", "both_bad", "win_rate")


@dataclass(frozen=True)
class Leaderboard:
    """Standings (best first) plus the matrices behind the heatmaps, in standings order."""

    standings: tuple[Standing, ...]
    win_fraction: np.ndarray  # (K, K), row variant's share of wins against column variant
    counts: np.ndarray  # (K, K) battles between each pair
    n_votes: int
    filters: dict = field(default_factory=dict)
    n_bootstrap: int = 0
    level: float = 0.95

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(s.variant for s in self.standings)

    def rows(self) -> list[dict]:
        """Table rows, ratings and intervals rounded to whole points."""
        out = []
        for s in self.standings:
            out.append({
                "rank": s.rank, "variant": s.variant, "rating": round(s.rating), "ci_low": round(s.ci_low),
                "ci_high": round(s.ci_high), "battles": s.battles, "wins": s.wins, "losses": s.losses,
                "ties": s.ties, "both_bad": s.both_bad, "win_rate": round(s.win_rate, 3),
                "provisional": s.provisional,
            })
        return out

    def table(self):
        """A pandas DataFrame with TABLE_COLUMNS (rating, 95% interval, battles, wins, ...)."""
        import pandas as pd  # only the table needs pandas (gradio's DataFrame); the ratings do not

        return pd.DataFrame(self.rows(), columns=list(TABLE_COLUMNS))


def leaderboard(
    votes: Iterable[Any],
    *,
    domain: str | None = None,
    expertise: str | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    ridge: float = DEFAULT_RIDGE,
    level: float = 0.95,
) -> Leaderboard:
    """Everything the Leaderboard tab shows, from the blind votes matching the filters."""
    kept = filter_votes(votes, domain=domain, expertise=expertise, blind_only=True)
    filters = {"domain": domain or None, "expertise": expertise or None}
    battles = encode(kept)
    if len(battles) == 0:
        return Leaderboard((), np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int64), 0, filters, n_bootstrap, level)
    wins = _win_matrix(battles)
    theta = fit_log_strengths(wins, ridge)
    ratings = to_rating(theta)
    lo, hi = _percentiles(_bootstrap_samples(battles, n_bootstrap, seed, ridge), level)
    k = battles.k
    tally = np.zeros((k, 4), dtype=np.int64)  # wins, losses, ties, both_bad per variant
    for ia, ib, label in zip(battles.a, battles.b, battles.labels):
        if label == "a":
            tally[ia, 0] += 1
            tally[ib, 1] += 1
        elif label == "b":
            tally[ib, 0] += 1
            tally[ia, 1] += 1
        else:
            col = 2 if label == "tie" else 3
            tally[ia, col] += 1
            tally[ib, col] += 1
    order = sorted(range(k), key=lambda i: (-ratings[i], battles.variants[i]))
    standings = tuple(
        Standing(rank, battles.variants[i], float(ratings[i]), float(lo[i]), float(hi[i]),
                 int(tally[i].sum()), *(int(x) for x in tally[i]))
        for rank, i in enumerate(order, start=1)
    )
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(games > 0, wins / games, np.nan)
    idx = np.array(order)
    counts = np.bincount(battles.a * k + battles.b, minlength=k * k).reshape(k, k)
    counts = counts + counts.T
    return Leaderboard(standings, frac[np.ix_(idx, idx)], counts[np.ix_(idx, idx)], len(battles), filters, n_bootstrap, level)
