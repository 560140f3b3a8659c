"""Pair-level quantities shared by `correlate` and the fusion-quality study (graft_ui.study).

    bench(acc, domains)            B(M) = mean accuracy (%) of a model over the given domains
    gain(fused, a, b, domains)     B(fused) - max(B(Ea), B(Eb))
    kept(fused_acc, own_acc)       fused accuracy on an expert's own domain / that expert's own accuracy
    spearman(xs, ys)               Spearman rho and two-sided p (scipy), None when undefined
    bootstrap_spearman(xs, ys)     percentile 95% interval of rho over pairs resampled with replacement

They live here (below the study) so that `correlate` and the study compute the same thing.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence


def bench(acc: Mapping[str, float], domains: Sequence[str]) -> float:
    """Mean accuracy over `domains`; raises naming a domain the accuracies lack."""
    missing = [d for d in domains if d not in acc]
    if missing:
        raise KeyError(f"no accuracy for domain(s) {missing}; have {sorted(acc)}")
    return sum(float(acc[d]) for d in domains) / len(domains)


def gain(fused: Mapping[str, float], a: Mapping[str, float], b: Mapping[str, float], domains: Sequence[str]) -> float:
    return bench(fused, domains) - max(bench(a, domains), bench(b, domains))


def kept(fused_acc: float, own_acc: float) -> float | None:
    """fused / own; None when the expert scores 0 on its own domain (nothing to keep, ratio undefined)."""
    if own_acc <= 0:
        return None
    return float(fused_acc) / float(own_acc)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float | None]:
    """Spearman rho and two-sided p (scipy); None with a note when undefined (n < 3 or a constant side)."""
    from scipy.stats import spearmanr

    n = len(xs)
    if n < 3:
        return {"rho": None, "p": None, "n": n, "note": f"needs at least 3 pairs, have {n}"}
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return {"rho": None, "p": None, "n": n, "note": "undefined: one side is constant"}
    res = spearmanr(xs, ys)
    rho, p = float(res.statistic), float(res.pvalue)
    return {"rho": None if math.isnan(rho) else rho, "p": None if math.isnan(p) else p, "n": n}


def bootstrap_spearman(xs: Sequence[float], ys: Sequence[float], *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> dict[str, float | int | None]:
    """Percentile interval of Spearman rho over `resamples` resamples of the pairs (with replacement).

    A resample whose x or y is constant has no rho; it is skipped and counted in `skipped`
    (with few pairs many resamples can be degenerate, which the caller should see).
    """
    from scipy.stats import spearmanr

    n = len(xs)
    if n != len(ys):
        raise ValueError(f"bootstrap needs paired values; got {n} x and {len(ys)} y")
    if n < 3:
        return {"lo": None, "hi": None, "resamples": resamples, "skipped": resamples, "level": level}
    rng = random.Random(seed)  # seeded: the same pairs give the same interval
    rhos = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        x = [xs[i] for i in idx]
        y = [ys[i] for i in idx]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        r = float(spearmanr(x, y).statistic)
        if not math.isnan(r):
            rhos.append(r)
    if not rhos:
        return {"lo": None, "hi": None, "resamples": resamples, "skipped": resamples, "level": level}
    rhos.sort()
    tail = (1.0 - level) / 2.0

    def q(p: float) -> float:  # linear interpolation between order statistics
        pos = p * (len(rhos) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(rhos) - 1)
        return rhos[lo] + (rhos[hi] - rhos[lo]) * (pos - lo)

    return {"lo": q(tail), "hi": q(1.0 - tail), "resamples": resamples, "skipped": resamples - len(rhos),
            "level": level}
