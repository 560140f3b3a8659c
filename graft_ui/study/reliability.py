"""How much the study's measured kept_min agrees with itself: split-half reliability per method.

    from graft_ui.study.reliability import split_half_reliability
    r = split_half_reliability(fusions, singles)   # r["reliability"]: 0.9 = a ground truth worth predicting

A forecast cannot correlate with a measurement better than the measurement correlates with
itself, so this bounds what any predictor of kept_min can reach on a study.

Inputs (what `graft_ui.study.runner` writes to DIR/items.json):

    fusions  the fusions of ONE method (and one kind), each a mapping
             {"a": expert, "b": expert, "domain_a": d, "domain_b": d,
              "correct": {domain: per-item correctness}}
    singles  {expert: {domain: per-item correctness}}

Per-item correctness is a sequence of 0/1 (or bools, or a "0110..." string) over a domain's
held-out items in the eval split's order; every model of a domain must have the same items.

Method: a seeded permutation splits each domain's items into two halves, the same halves for
every model. On each half, kept_e = fused accuracy on expert e's domain / e's accuracy there
(both on that half) and kept_min = min(kept_a, kept_b), as the study defines it on all items.
Spearman's rho between the two halves' kept_min across the fusions, then Spearman-Brown
corrected to the full length: r = 2 rho / (1 + rho). This is repeated for `splits` random
splits and rho averaged before the correction, so the figure does not hang on one split.
A fusion whose kept_min is undefined on a half (an expert scoring 0 there) is left out of
that split.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["split_half_reliability", "spearman_brown", "spearman_rho"]


def spearman_brown(r: float, k: float = 2.0) -> float:
    """Reliability of a measurement `k` times as long as one of reliability `r`: k r / (1 + (k - 1) r)."""
    return k * r / (1.0 + (k - 1.0) * r)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(values))
    counts = np.bincount(inverse, minlength=len(values))
    return (sums / counts)[inverse]


def spearman_rho(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson of average ranks); None when n < 3 or a side is constant."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / np.sqrt((rx @ rx) * (ry @ ry)))


def _items(correct: Any) -> np.ndarray:
    if isinstance(correct, str):
        return np.frombuffer(correct.encode(), dtype=np.uint8) == ord("1")
    return np.asarray(correct, dtype=bool)


def _kept_min(fusion: Mapping, singles: Mapping, halves: Mapping[str, np.ndarray]) -> float | None:
    kept = []
    for side in ("a", "b"):
        name, d = fusion[side], fusion[f"domain_{side}"]
        idx = halves[d]
        own = _items(singles[name][d])[idx].mean()
        if own > 0:
            kept.append(_items(fusion["correct"][d])[idx].mean() / own)
    return min(kept) if kept else None


def split_half_reliability(fusions: Sequence[Mapping], singles: Mapping[str, Mapping[str, Any]], *,
                           splits: int = 20, seed: int = 0) -> dict[str, Any]:
    """Split-half reliability of kept_min over `fusions` (one method; see the module doc).

    Returns {"reliability": Spearman-Brown corrected mean rho (None if undefined),
    "half_rho": the mean rho between halves, "n_fusions": fusions used, "splits": splits averaged,
    "items": {domain: item count}}.
    """
    if splits < 1:
        raise ValueError(f"splits={splits} must be at least 1")
    sizes: dict[str, int] = {}
    for f in fusions:
        for d, c in f["correct"].items():
            n = len(_items(c))
            if sizes.setdefault(d, n) != n:
                raise ValueError(f"fusion {f['a']}+{f['b']} has {n} items of {d!r}, another fusion {sizes[d]}")
    rng = np.random.default_rng(seed)
    rhos, used = [], []
    for _ in range(splits):
        halves: tuple[dict, dict] = ({}, {})
        for d, n in sorted(sizes.items()):  # sorted: the split depends on the seed only
            perm = rng.permutation(n)
            halves[0][d], halves[1][d] = perm[: n // 2], perm[n // 2: 2 * (n // 2)]
        pairs = [(_kept_min(f, singles, halves[0]), _kept_min(f, singles, halves[1])) for f in fusions]
        pairs = [p for p in pairs if None not in p]
        rho = spearman_rho([p[0] for p in pairs], [p[1] for p in pairs])
        if rho is not None:
            rhos.append(rho)
            used.append(len(pairs))
    if not rhos:
        return {"reliability": None, "half_rho": None, "n_fusions": len(fusions), "splits": 0, "items": sizes}
    half = float(np.mean(rhos))
    return {"reliability": spearman_brown(half), "half_rho": half, "n_fusions": int(min(used)),
            "splits": len(rhos), "items": sizes}
