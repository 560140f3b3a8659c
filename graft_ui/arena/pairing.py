"""Adaptive pairing: draw the next battle's pair where one more vote shrinks an interval most.

After the Chatbot Arena paper (arXiv 2403.04132, section 5): pair a = (i, j) is drawn with
probability proportional to `sqrt(Sigma_aa / n_a) - sqrt(Sigma_aa / (n_a + 1))`, the shrinkage of
the standard error of its rating difference that one more battle brings. Here Sigma_aa is the
variance one battle of the pair carries, `1 / (p (1 - p))` with p the current Bradley-Terry win
probability, and n_a is how many such battles' worth of information the fit already holds on the
difference: `Sigma_aa / Var(theta_i - theta_j)`, the variance taken from the inverse of the fit's
information matrix (ratings.fisher_information). So a pair settled directly or through other
pairs is drawn less, a lopsided pair (little to learn from one battle) is drawn less, and a
variant that just joined draws most battles until its interval catches up. `UNIFORM` keeps every
pair equally likely.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.special import expit

from graft_ui.arena.ratings import DEFAULT_RIDGE, _get, _win_matrix, encode, filter_votes, fisher_information, fit_log_strengths

ADAPTIVE, UNIFORM = "adaptive", "uniform"
PAIRINGS = (ADAPTIVE, UNIFORM)


def pair_weights(votes: Iterable[Any], pool: Sequence[str], *, mode: str = ADAPTIVE,
                 ridge: float = DEFAULT_RIDGE) -> dict[tuple[str, str], float]:
    """{(i, j): probability} over the unordered pairs of `pool` (i < j in pool order); sums to 1.

    `votes`: the votes that count (blind; those of other variants are ignored)."""
    if mode not in PAIRINGS:
        raise ValueError(f"pairing={mode!r} is not one of {list(PAIRINGS)}")
    pool = list(dict.fromkeys(pool))
    if len(pool) < 2:
        raise ValueError(f"pairing needs at least two variants; got {pool}")
    pairs = list(itertools.combinations(pool, 2))
    if mode == UNIFORM:
        return {p: 1.0 / len(pairs) for p in pairs}
    members = set(pool)
    kept = [v for v in filter_votes(votes or []) if _get(v, "variant_a") in members and _get(v, "variant_b") in members]
    battles = encode(kept, pool)
    wins = _win_matrix(battles)  # (K, K)
    theta = fit_log_strengths(wins, ridge)
    cov = np.linalg.inv(fisher_information(wins, theta, ridge))  # (K, K) nats^2
    raw = {}
    for i, j in itertools.combinations(range(len(pool)), 2):
        var = max(cov[i, i] + cov[j, j] - 2 * cov[i, j], 1e-12)  # Sigma_aa / n_a: the difference's variance now
        p = expit(theta[i] - theta[j])
        sigma = 1.0 / (p * (1.0 - p))  # Sigma_aa: variance of the difference from one battle of this pair
        n = sigma / var  # n_a: the battles' worth of information the fit already has on this difference
        raw[(pool[i], pool[j])] = math.sqrt(sigma / n) - math.sqrt(sigma / (n + 1.0))
    total = sum(raw.values())
    if not total > 0:
        return {p: 1.0 / len(pairs) for p in pairs}
    return {p: w / total for p, w in raw.items()}


def draw_pair(weights: dict[tuple[str, str], float], rng) -> tuple[str, str]:
    """One pair drawn by weight, in random side order; `rng` is a random.Random."""
    pairs = list(weights)
    (i, j), = rng.choices(pairs, weights=[weights[p] for p in pairs], k=1)
    return (i, j) if rng.random() < 0.5 else (j, i)


def weights_table(weights: dict[tuple[str, str], float]) -> list[dict]:
    """Rows for the operator: pair and its chance of being drawn next, likeliest first."""
    return [{"pair": f"{i} vs {j}", "chance": round(w, 4)} for (i, j), w in sorted(weights.items(), key=lambda x: -x[1])]
