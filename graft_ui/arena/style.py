"""Style control: Bradley-Terry with answer-style covariates, so a variant is not rated for rambling.

After lmsys's style-control leaderboard (2024-08-28; FastChat `construct_style_matrices`):
each battle gets one feature per style count f (answer length in tokens; markdown headers,
list items, bold spans), `d = (f_a - f_b) / (f_a + f_b + 1)`, z-standardised over the
battles. The model is a logistic regression

    P(A wins) = sigmoid(theta_a - theta_b + beta . d)

fitted by penalised maximum likelihood (ties and both_bad as half a win, as in ratings.py);
the variant's rating is its coefficient theta (Elo-like scale, mean 1000) and beta says how
many nats one standard deviation of a style difference is worth (lmsys found about 0.25
for length). Tokens are counted without a tokenizer (words and punctuation marks), so the
features need only the stored answer texts; markdown inside code blocks is not counted.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from graft_ui.arena.ratings import DEFAULT_RIDGE, Battles, _get, _percentiles, encode, to_rating

log = logging.getLogger(__name__)

FEATURES = ("length", "headers", "lists", "bold")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_CODE_RE = re.compile(r"```.*?(?:```|\Z)", re.S)
_HEADER_RE = re.compile(r"^#{1,6}\s+\S", re.M)
_LIST_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.M)
_BOLD_RE = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def answer_counts(text: str) -> np.ndarray:
    """(4,) counts of one answer: tokens, markdown headers, list items, bold spans."""
    if not isinstance(text, str):
        raise ValueError(f"answer must be text, got {type(text).__name__}")
    prose = _CODE_RE.sub("", text)  # a '#' comment or '*' in code is not markdown
    return np.array([len(_TOKEN_RE.findall(text)), len(_HEADER_RE.findall(prose)), len(_LIST_RE.findall(prose)),
                     len(_BOLD_RE.findall(prose))], dtype=np.float64)


def style_differences(votes: Iterable[Any]) -> np.ndarray:
    """(N, 4) raw per-battle differences d = (a - b) / (a + b + 1), before standardising."""
    rows = [(answer_counts(_get(v, "answer_a") or ""), answer_counts(_get(v, "answer_b") or "")) for v in votes]
    if not rows:
        return np.zeros((0, len(FEATURES)))
    a = np.stack([r[0] for r in rows])  # (N, 4)
    b = np.stack([r[1] for r in rows])  # (N, 4)
    return (a - b) / (a + b + 1.0)


def standardise(d: np.ndarray) -> np.ndarray:
    """Columns to mean 0, sd 1; a constant column (e.g. no answer ever has a header) becomes 0."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) == 0:
        return d
    sd = d.std(axis=0)
    return np.where(sd > 0, (d - d.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)


def style_matrix(votes: Iterable[Any]) -> np.ndarray:
    """(N, 4) z-standardised style features of the battles, in vote order."""
    return standardise(style_differences(votes))


def fit_with_style(battles: Battles, features: np.ndarray, ridge: float = DEFAULT_RIDGE,
                   weights: np.ndarray | None = None, x0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(theta (K,), beta (S,)) maximising the penalised style-controlled BT likelihood; mean(theta) = 0."""
    n, k = len(battles), battles.k
    features = np.asarray(features, dtype=np.float64).reshape(n, -1)  # (N, S)
    if not ridge > 0:
        raise ValueError(f"ridge={ridge!r} must be > 0 (it makes the ratings identifiable)")
    z = np.zeros((n, k + features.shape[1]))  # (N, K + S) design: +1 side A, -1 side B, then the features
    z[np.arange(n), battles.a] = 1.0
    z[np.arange(n), battles.b] = -1.0
    z[:, k:] = features
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    total = max(float(w.sum()), 1.0)
    w = w / total  # an O(1) objective, as in ratings.fit_log_strengths
    lam = ridge / total
    s = battles.score

    def nll(x):
        u = z @ x  # (N,)
        value = -(w * (s * log_expit(u) + (1 - s) * log_expit(-u))).sum() + 0.5 * lam * x @ x
        return value, -z.T @ (w * (s - expit(u))) + lam * x

    def hess(x):
        p = expit(z @ x)
        return (z * (w * p * (1 - p))[:, None]).T @ z + lam * np.eye(z.shape[1])

    start = np.zeros(z.shape[1]) if x0 is None else x0
    res = minimize(nll, start, jac=True, hess=hess, method="trust-exact", options={"gtol": 1e-10, "maxiter": 200})
    if not res.success and not np.max(np.abs(res.jac)) < 1e-7:
        log.warning("style-controlled fit did not converge (max |gradient| %.2g): %s", np.max(np.abs(res.jac)), res.message)
    theta, beta = res.x[:k], res.x[k:]
    return theta - theta.mean(), beta


@dataclass(frozen=True)
class StyleFit:
    """Style-controlled ratings (Elo-like) with bootstrap intervals, and the style coefficients (nats per sd)."""

    variants: tuple[str, ...]
    rating: np.ndarray  # (K,)
    ci_low: np.ndarray  # (K,)
    ci_high: np.ndarray  # (K,)
    coef: np.ndarray  # (S,) one per FEATURES entry
    coef_low: np.ndarray  # (S,)
    coef_high: np.ndarray  # (S,)
    n_votes: int

    def ratings(self) -> dict[str, float]:
        return dict(zip(self.variants, self.rating.tolist()))

    def coefficients(self) -> list[dict]:
        return [{"feature": f, "coef": round(float(c), 3), "ci_low": round(float(lo), 3), "ci_high": round(float(hi), 3)}
                for f, c, lo, hi in zip(FEATURES, self.coef, self.coef_low, self.coef_high)]


def style_controlled(votes: Sequence[Any], *, n_bootstrap: int = 100, seed: int = 0, ridge: float = DEFAULT_RIDGE,
                     level: float = 0.95, variants: Sequence[str] | None = None) -> StyleFit:
    """Fit the style-controlled ratings of `votes` (already filtered to those that count)."""
    votes = list(votes)
    battles = encode(votes, variants)
    feats = style_matrix(votes)
    k = battles.k
    if len(battles) == 0:
        empty = np.zeros(0)
        zero = np.zeros(len(FEATURES))
        return StyleFit(battles.variants, empty, empty, empty, zero, zero, zero, 0)
    theta, beta = fit_with_style(battles, feats, ridge)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap={n_bootstrap!r} must be a positive integer")
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([theta, beta])
    samples = np.empty((n_bootstrap, k + len(FEATURES)))  # (B, K + S)
    for r in range(n_bootstrap):
        counts = np.bincount(rng.integers(0, len(battles), size=len(battles)), minlength=len(battles)).astype(float)
        t, b = fit_with_style(battles, feats, ridge, weights=counts, x0=x0)
        samples[r] = np.concatenate([to_rating(t), b])
    lo, hi = _percentiles(samples, level)
    return StyleFit(battles.variants, to_rating(theta), lo[:k], hi[:k], beta, lo[k:], hi[k:], len(battles))
