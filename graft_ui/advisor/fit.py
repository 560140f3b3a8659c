"""Predict a pair's fusion gain from its signals: ridge regression, validated leave-one-pair-out.

Model, for pairs i = 1..n with signals x_i (e.g. compatibility, task-vector cosine, the
stronger expert's score) and measured gain y_i:

    z_ij   = (x_ij - mean_j) / sd_j        each signal standardised on the training pairs
                                           (population sd; a constant signal gets sd 1, i.e. z = 0)
    y_i   ~= b0 + z_i . b                  b0 = mean(y); b = (Z'Z + lam I)^-1 Z'(y - mean y)
                                           (the intercept is not penalised)

lam = 0 is ordinary least squares. Leave-one-pair-out: pair i is predicted by the model
fitted (standardisation included) on the other n - 1 pairs, so every reported number is
out of sample:

    rho   Spearman rho between the held-out predictions and the measured gains
    rmse  sqrt(mean (pred_i - y_i)^2),   mae  mean |pred_i - y_i|

A new pair's prediction comes from the fit on all n pairs; its uncertainty is the held-out
rmse (one typical error, in points of accuracy), not a model-based interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from graft_ui.analysis.pairstats import spearman

DEFAULT_LAMBDA = 1.0
MIN_PAIRS = 4  # fewer cannot be fitted and then checked on a held-out pair


@dataclass(frozen=True)
class Ridge:
    """A fitted ridge model on standardised features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    intercept: float
    coef: tuple[float, ...]  # per standardised feature
    lam: float

    def predict(self, x: Sequence[float]) -> float:
        if len(x) != len(self.features):
            raise ValueError(f"expected {len(self.features)} signals {list(self.features)}, got {len(x)}")
        z = [(float(v) - m) / s for v, m, s in zip(x, self.mean, self.sd)]
        return float(self.intercept + sum(c * v for c, v in zip(self.coef, z)))


def fit_ridge(X: Sequence[Sequence[float]], y: Sequence[float], features: Sequence[str],
              lam: float = DEFAULT_LAMBDA) -> Ridge:
    """Fit the model of the module docstring; raises ValueError naming a bad input."""
    A = np.asarray(X, dtype=float)
    Y = np.asarray(y, dtype=float)
    if A.ndim != 2 or A.shape[0] != Y.shape[0] or A.shape[1] != len(features):
        raise ValueError(f"signals of shape {A.shape} do not match {Y.shape[0]} gains x {len(features)} features")
    if A.shape[0] < 2:
        raise ValueError(f"a fit needs at least 2 pairs, got {A.shape[0]}")
    if not (np.isfinite(A).all() and np.isfinite(Y).all()):
        raise ValueError("signals and gains must be finite numbers")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"ridge lambda={lam!r} must be a non-negative number")
    mu = A.mean(0)
    sd = A.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = (A - mu) / sd
    y0 = Y.mean()
    coef = np.linalg.lstsq(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ (Y - y0), rcond=None)[0]
    return Ridge(tuple(features), tuple(float(v) for v in mu), tuple(float(v) for v in sd), float(y0),
                 tuple(float(v) for v in coef), float(lam))


def loo_predictions(X: Sequence[Sequence[float]], y: Sequence[float], features: Sequence[str],
                    lam: float = DEFAULT_LAMBDA) -> list[float]:
    """Each pair predicted by the fit on the others (n >= 3)."""
    n = len(y)
    if n < 3:
        raise ValueError(f"leave-one-pair-out needs at least 3 pairs, got {n}")
    out = []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        model = fit_ridge([X[j] for j in keep], [y[j] for j in keep], features, lam)
        out.append(model.predict(X[i]))
    return out


def heldout_metrics(pred: Sequence[float], y: Sequence[float]) -> dict:
    """{rho, p, rho_note, rmse, mae, n} of held-out predictions against the measured gains."""
    err = np.asarray(pred, dtype=float) - np.asarray(y, dtype=float)
    sp = spearman(list(pred), list(y))
    return {"rho": sp["rho"], "p": sp["p"], "rho_note": sp.get("note"), "n": len(err),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}
