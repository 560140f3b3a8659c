"""Forecast of what a fusion keeps, and its honest validation: leave-one-expert-out, intervals over experts.

Data: one row per (pair, method) with signals (advisor.signals) and the measured kept_min (and
kept_a, kept_b, mean accuracy). The model, per kind, pooled over methods:

    kept_min ~ ridge(z(signals) + method indicators)         advisor.fit.fit_ridge, lambda = 1

with few signals (MODEL_FEATURES: the preview's agreement and KL), so that ~45 pairs x 4 methods
can fit it. The per-expert kept fractions come from the same form fitted on (agree_e, kl_e):

    kept_e ~ ridge(z(agree_e, kl_e) + method indicators)     both sides of every pair stacked

Leave-one-expert-out: for each expert e, the model is fitted on the rows whose pair does not
contain e and predicts the rows whose pair does. Every pair {a, b} is thus predicted twice
(fold a, fold b), each time by a model fitted without any pair of the held-out expert (so never
on the pair itself); its held-out prediction is the mean of the two. Reported per fold (rho, rmse over the fold's
rows) and pooled (rho over all rows, and within each method).

Interval: percentile bootstrap over experts: the experts are resampled with replacement
(seeded), a row is kept with multiplicity count(a) x count(b), rho is recomputed on the
kept rows; resamples with a constant side are skipped and counted. A pair shares its experts
with other pairs, so resampling pairs would understate the spread.

A signal alone (no fit) is judged by the same rho and interval, its sign as measured.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from graft_ui.advisor.fit import DEFAULT_LAMBDA, Ridge, fit_ridge

PROTOCOL = "leave-one-expert-out"
MODEL_FEATURES = ("agree_min", "kl_max")
SIDE_FEATURES = ("agree", "kl")
RESAMPLES = 1000
# targets of issue-level quality: pooled rho and its lower end; within one method; transfer to another zoo
TARGETS = {"rho": 0.85, "rho_lo": 0.7, "method_rho": 0.7, "method_lo": 0.4, "transfer_rho": 0.6}


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    r = float(spearmanr(x, y).statistic)
    return None if math.isnan(r) else r


def usable(rows: Sequence[Mapping], features: Sequence[str], target: str = "kept_min") -> list[Mapping]:
    return [r for r in rows if r.get(target) is not None and all(r.get(f) is not None for f in features)]


def method_names(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def design(rows: Sequence[Mapping], features: Sequence[str], methods: Sequence[str]) -> tuple[list[list[float]], list[str]]:
    """Signals then one indicator per method after the first (the first is the reference)."""
    names = [*features, *(f"method={m}" for m in methods[1:])]
    X = [[float(r[f]) for f in features] + [1.0 if r["method"] == m else 0.0 for m in methods[1:]] for r in rows]
    return X, names


def fit(rows: Sequence[Mapping], features: Sequence[str], target: str = "kept_min", methods: Sequence[str] | None = None,
        lam: float = DEFAULT_LAMBDA) -> Ridge:
    methods = list(methods or method_names(rows))
    X, names = design(rows, features, methods)
    return fit_ridge(X, [float(r[target]) for r in rows], names, lam)


def predict(model: Ridge, row: Mapping, features: Sequence[str], methods: Sequence[str]) -> float:
    return model.predict(design([row], features, methods)[0][0])


def experts_of(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(n for r in rows for n in (r["a"], r["b"])))


def loeo(rows: Sequence[Mapping], features: Sequence[str], target: str = "kept_min", *,
         lam: float = DEFAULT_LAMBDA) -> tuple[list[float | None], list[dict]]:
    """(held-out prediction per row, None where no fold could predict it; per-fold figures). A fold's
    training rows never contain its expert; a fold left with too few rows to fit is skipped (said so)."""
    methods = method_names(rows)
    preds: list[list[float]] = [[] for _ in rows]
    folds = []
    for e in experts_of(rows):
        train = [r for r in rows if e not in (r["a"], r["b"])]
        test = [i for i, r in enumerate(rows) if e in (r["a"], r["b"])]
        if len(train) < len(features) + len(methods) + 1:
            folds.append({"expert": e, "train_rows": len(train), "test_rows": len(test), "rho": None, "rmse": None,
                          "skipped": f"{len(train)} training rows cannot fit {len(features)} signals + {len(methods)} methods"})
            continue
        model = fit(train, features, target, methods, lam)
        p = [predict(model, rows[i], features, methods) for i in test]
        for i, v in zip(test, p):
            preds[i].append(v)
        y = [float(rows[i][target]) for i in test]
        folds.append({"expert": e, "train_rows": len(train), "test_rows": len(test), "rho": _spearman(p, y),
                      "rmse": float(np.sqrt(np.mean((np.asarray(p) - np.asarray(y)) ** 2)))})
    return [float(np.mean(p)) if p else None for p in preds], folds


def predicted(rows: Sequence[Mapping], preds: Sequence[float | None]) -> tuple[list[Mapping], list[float]]:
    """The rows that received a held-out prediction, and those predictions."""
    keep = [i for i, p in enumerate(preds) if p is not None]
    return [rows[i] for i in keep], [float(preds[i]) for i in keep]


def expert_bootstrap(rows: Sequence[Mapping], x: Sequence[float], y: Sequence[float], *, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict:
    """{lo, hi, skipped}: 95% percentile interval of Spearman rho(x, y) with the experts resampled."""
    from scipy.stats import spearmanr

    experts = experts_of(rows)
    idx = {e: i for i, e in enumerate(experts)}
    ia = np.array([idx[r["a"]] for r in rows])
    ib = np.array([idx[r["b"]] for r in rows])
    xv, yv = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, len(experts), len(experts)), minlength=len(experts))
        w = counts[ia] * counts[ib]
        keep = np.repeat(np.arange(len(rows)), w)
        if len(keep) < 3 or np.ptp(xv[keep]) == 0 or np.ptp(yv[keep]) == 0:
            continue
        r = float(spearmanr(xv[keep], yv[keep]).statistic)
        if not math.isnan(r):
            rhos.append(r)
    if not rhos:
        return {"lo": None, "hi": None, "skipped": resamples}
    lo, hi = np.quantile(rhos, [0.025, 0.975])
    return {"lo": float(lo), "hi": float(hi), "skipped": resamples - len(rhos)}


def score(rows: Sequence[Mapping], x: Sequence[float], target: str = "kept_min", *, seed: int = 0,
          resamples: int = RESAMPLES) -> dict:
    """Pooled and per-method rho with intervals over experts, RMSE (meaningful when x is a prediction)."""
    y = [float(r[target]) for r in rows]

    def one(sel: list[int]) -> dict:
        rs, xs, ys = [rows[i] for i in sel], [x[i] for i in sel], [y[i] for i in sel]
        ci = expert_bootstrap(rs, xs, ys, resamples=resamples, seed=seed)
        return {"n": len(sel), "rho": _spearman(xs, ys), "ci": [ci["lo"], ci["hi"]], "skipped": ci["skipped"],
                "rmse": float(np.sqrt(np.mean((np.asarray(xs) - np.asarray(ys)) ** 2)))}

    out = one(list(range(len(rows))))
    out["pairs"] = len({r["pair"] for r in rows})
    out["experts"] = len(experts_of(rows))
    out["per_method"] = {m: one([i for i, r in enumerate(rows) if r["method"] == m]) for m in method_names(rows)}
    return out


def side_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Both sides of every pair as rows of (agree, kl, kept) with the pair's experts (for the folds)."""
    out = []
    for r in rows:
        for s in ("a", "b"):
            if r.get(f"kept_{s}") is not None and r.get(f"agree_{s}") is not None:
                out.append({"pair": r["pair"], "a": r["a"], "b": r["b"], "method": r["method"], "side": s,
                            "agree": r[f"agree_{s}"], "kl": r[f"kl_{s}"], "kept": r[f"kept_{s}"]})
    return out


def meets_targets(v: Mapping, methods: Sequence[str] = ("task_arithmetic", "ties", "graft")) -> bool:
    """The quality bar for calling the forecast more than weak (TARGETS)."""
    def ok(x, bar):
        return x is not None and x >= bar

    per = v.get("per_method") or {}
    return (ok(v.get("rho"), TARGETS["rho"]) and ok((v.get("ci") or [None])[0], TARGETS["rho_lo"])
            and all(ok((per.get(m) or {}).get("rho"), TARGETS["method_rho"])
                    and ok(((per.get(m) or {}).get("ci") or [None])[0], TARGETS["method_lo"]) for m in methods)
            and ok(v.get("transfer_rho"), TARGETS["transfer_rho"]))
