"""Human vs automatic: arena ratings against held-out eval accuracy, per variant and domain.

Accuracies come from the records the app already writes: the zoo's self-check
(`build_info.json` -> self_check.models.<name>.domains.<domain>.accuracy, base and experts)
and each tuned variant's run (`tune/tune.json` -> the held-out row with role "tuned").
Ratings are the Bradley-Terry fit of the blind votes on prompts of that domain (all
domains for the "all" row, against the mean accuracy). Spearman's rho per domain says how
far people and the benchmark agree; the rows where the two ranks differ most are where a
demo owner should look.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from scipy.stats import spearmanr

from graft_ui.arena.ratings import _get, bradley_terry, filter_votes

log = logging.getLogger(__name__)

ALL = "all"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def accuracy_records(zoo_dir: str | Path | None, variant_dirs: Mapping[str, str | Path]) -> dict[str, dict[str, float]]:
    """{variant: {domain: held-out accuracy}} from the zoo's self-check and the tuned variants' runs."""
    out: dict[str, dict[str, float]] = {}
    info = Path(zoo_dir) / "build_info.json" if zoo_dir else None
    data = _read(info) if info is not None and info.is_file() else None
    for name, row in ((data or {}).get("self_check") or {}).get("models", {}).items():
        doms = {d: float(v["accuracy"]) for d, v in (row.get("domains") or {}).items() if "accuracy" in v}
        if doms:
            out[name] = doms
    for name, folder in variant_dirs.items():
        path = Path(folder) / "tune" / "tune.json"
        run = _read(path) if path.is_file() else None
        rows = [r for r in ((run or {}).get("heldout") or {}).get("rows", []) if r.get("role") == "tuned"]
        if rows:
            out[name] = {d: float(a) for d, a in rows[0]["accuracy"].items()}
    return out


def human_vs_auto(votes: Iterable[Any], accuracy: Mapping[str, Mapping[str, float]]) -> tuple[list[dict], dict[str, float]]:
    """(rows {domain, variant, rating, accuracy}, {domain: Spearman rho}) for variants with both numbers.

    A domain needs at least three such variants, not all tied on either number, for its rho (else it is left out)."""
    votes = filter_votes(votes)
    domains = sorted({d for acc in accuracy.values() for d in acc})
    rows: list[dict] = []
    rho: dict[str, float] = {}
    for domain in domains + [ALL]:
        subset = votes if domain == ALL else [v for v in votes if _get(v, "domain") == domain]
        if not subset:
            continue
        ratings = bradley_terry(subset)
        pts = []
        for name, rating in ratings.items():
            acc = accuracy.get(name) or {}
            value = float(np.mean(list(acc.values()))) if domain == ALL and acc else acc.get(domain)
            if value is None:
                continue
            pts.append((rating, value))
            rows.append({"domain": domain, "variant": name, "rating": round(rating), "accuracy": round(value, 3)})
        # a constant side (e.g. every accuracy 0 on a tiny zoo) has no rank correlation
        if len(pts) >= 3 and len({p[0] for p in pts}) > 1 and len({p[1] for p in pts}) > 1:
            r = spearmanr([p[0] for p in pts], [p[1] for p in pts]).statistic
            if np.isfinite(r):
                rho[domain] = float(r)
    return rows, rho
