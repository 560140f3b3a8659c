"""A fitted kept-fraction forecast built from synthetic fusions (no model runs), for CLI and app tests."""

from __future__ import annotations

import itertools
import random
from pathlib import Path


def synthetic_rows(kind="lora", methods=("task_arithmetic", "ties", "graft"), experts=7, noise=0.0):
    """Fusions whose kept_min is a known function of the preview agreement, per method."""
    rng = random.Random(0)
    names = [f"e{i}" for i in range(experts)]
    rows = []
    for (a, b), m in itertools.product(itertools.combinations(names, 2), methods):
        agree, kl = rng.random(), rng.random() * 0.1
        km = 0.2 + 0.7 * agree + 0.1 * methods.index(m) + noise * rng.gauss(0, 1)
        rows.append({"pair": f"{a}+{b}", "a": a, "b": b, "kind": kind, "method": m, "agree_min": agree,
                     "kl_max": kl, "agree_a": agree, "agree_b": agree, "kl_a": kl, "kl_b": kl, "kept_min": km,
                     "kept_a": km, "kept_b": km, "single_a": 50.0, "single_b": 60.0, "mean": 40.0})
    return rows


def write_forecast(out: Path, methods=("graft", "ties")) -> Path:
    """predictors.json of both kinds for `methods`, fitted on synthetic fusions; returns its path."""
    from graft_ui.advisor import kept, report

    rows = synthetic_rows("lora", tuple(methods)) + synthetic_rows("full", tuple(methods))
    report.write(kept.build(rows, resamples=50), out)
    return Path(out) / "predictors.json"
