"""Sensitivity and compatibility scores (paper 3.4, eqs 12-14; DESIGN.md §2.5).

Per module i of one expert on one target (statistics from `stats.py`):

    rho_i  = mu_i * (1 - s_i) * sqrt(v_i)              (raw sensitivity, eq 12)
    x'     = (x - min x) / (max x - min x)             (min-max across the modules, for x in mu, s, v)
    rho_i' = mu_i' * (1 - s_i') * sqrt(v_i')           (normalised sensitivity, eq 13: the heatmap)
    compatibility = mean_i rho_i'                      (eq 14)

A statistic that is the same for every module carries no ranking information; it
normalises to 0.5 for all of them (the paper leaves this case open).

Pair score (paper table 2 reports one per two-domain composition; the paper does not
say how it is computed, so this project defines it). For experts E1, E2 and one target
sample set T (by default the union of the two experts' domains, K/2 samples each):

    pair_score(E1, E2; T) = mean over the 2M entries (e, i), e in {E1, E2}, i in modules,
                            of rho'_{e,i}, with the min-max normalisation of mu, s, v run
                            jointly over all 2M entries.

It is the mean of the two experts' compatibilities on T when both share one normaliser,
so it is symmetric, equals the single-expert score when E1 = E2, and keeps the experts'
relative engagement (an expert whose adapter barely reacts to T pulls the pair down,
which two separate normalisations would hide). `pair_score_mean` (mean of the two
separately normalised scores) and, after fusing, the fused model's own compatibility on
T (what Table 2's per-domain columns most plausibly show) are reported beside it by
the `correlate` command.

A threshold (user-set; DEFAULT_THRESHOLD) marks the experts whose compatibility
reaches it as acceptable.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from graft_ui.analysis.stats import ActivationStats, ModuleStats

DEFAULT_THRESHOLD = 0.2  # the paper's scores lie around 0.15-0.33; a starting point, not a calibrated value


def minmax(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over the given values; a constant vector maps to 0.5."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    if not np.all(np.isfinite(x)):
        raise ValueError(f"min-max normalisation got non-finite values: {x[~np.isfinite(x)][:5].tolist()}")
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1e-30):
        return np.full_like(x, 0.5)
    return (x - lo) / (hi - lo)


def _modules(stats: ActivationStats | Mapping[str, ModuleStats]) -> Mapping[str, ModuleStats]:
    return stats.modules if isinstance(stats, ActivationStats) else stats


def raw_sensitivity(m: ModuleStats) -> float:
    """eq 12 on the un-normalised statistics."""
    return m.mu * (1.0 - m.s) * float(np.sqrt(max(m.v, 0.0)))


def _rho_prime(mu: np.ndarray, s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    mu_n, s_n, v_n = minmax(mu), minmax(s), minmax(v)
    return mu_n, s_n, v_n, mu_n * (1.0 - s_n) * np.sqrt(v_n)


def module_scores(stats: ActivationStats | Mapping[str, ModuleStats]) -> dict[str, dict[str, float]]:
    """Per module: raw mu, s, v, rho and normalised mu_n, s_n, v_n, rho_n (= rho_i')."""
    mods = _modules(stats)
    if not mods:
        raise ValueError("no module statistics to score")
    names = list(mods)
    mu = np.array([mods[n].mu for n in names])
    s = np.array([mods[n].s for n in names])
    v = np.array([mods[n].v for n in names])
    mu_n, s_n, v_n, rho_n = _rho_prime(mu, s, v)
    return {
        n: {
            "mu": float(mu[i]), "s": float(s[i]), "v": float(v[i]), "rho": raw_sensitivity(mods[n]),
            "mu_n": float(mu_n[i]), "s_n": float(s_n[i]), "v_n": float(v_n[i]), "rho_n": float(rho_n[i]),
        }
        for i, n in enumerate(names)
    }


def compatibility(stats: ActivationStats | Mapping[str, ModuleStats]) -> float:
    """eq 14: mean normalised sensitivity over the modules."""
    return float(np.mean([m["rho_n"] for m in module_scores(stats).values()]))


def joint_rho(stats: Sequence[ActivationStats | Mapping[str, ModuleStats]]) -> list[dict[str, float]]:
    """rho_i' per expert with mu, s, v min-max normalised jointly over all experts' modules."""
    mods = [_modules(s) for s in stats]
    flat = [(e, n) for e, m in enumerate(mods) for n in m]
    if not flat:
        raise ValueError("no module statistics to score")
    mu = np.array([mods[e][n].mu for e, n in flat])
    s = np.array([mods[e][n].s for e, n in flat])
    v = np.array([mods[e][n].v for e, n in flat])
    rho = _rho_prime(mu, s, v)[3]
    out: list[dict[str, float]] = [{} for _ in mods]
    for (e, n), r in zip(flat, rho):
        out[e][n] = float(r)
    return out


def pair_score(a: ActivationStats | Mapping[str, ModuleStats], b: ActivationStats | Mapping[str, ModuleStats]) -> float:
    """The documented pair score: mean rho' over both experts' modules under one joint normaliser."""
    if isinstance(a, ActivationStats) and isinstance(b, ActivationStats):
        if a.source != b.source or a.eps != b.eps:
            raise ValueError(
                f"pair score needs statistics of the same kind; got source {a.source!r}/{b.source!r}, eps {a.eps}/{b.eps}"
            )
        if a.sample_ids and b.sample_ids and a.sample_ids != b.sample_ids:
            raise ValueError("pair score needs both experts' statistics on the same target samples")
    rho = joint_rho([a, b])
    return float(np.mean([r for d in rho for r in d.values()]))


def pair_score_mean(a: ActivationStats | Mapping[str, ModuleStats], b: ActivationStats | Mapping[str, ModuleStats]) -> float:
    """Alternative pair score: mean of the two separately normalised compatibilities."""
    return 0.5 * (compatibility(a) + compatibility(b))


def acceptable(score: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    return bool(score >= threshold)
