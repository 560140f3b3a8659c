"""The fitted kept-fraction forecast: built from a study's rows, validated, saved, loaded, applied.

    art = build(rows, transfer=full_rows, reliability={"lora": .., "full": ..})   -> predictors.json
    fc  = KeptForecast.load(path, "lora");  fc.predict(row)  -> kept_min, kept_a, kept_b
    fc.error(method)                                          held-out RMSE of kept_min (a fraction)

Per kind: the kept_min model and the per-expert model of advisor.validate, validated
leave-one-expert-out (pooled and per method, intervals over experts), then transferred to another
zoo's measured pairs when given (fitted on every study row whose pair the other zoo does not also
have, no refit on the other zoo). Every
signal alone is scored the same way, so the artifact says which signal carries what.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from graft_ui.advisor import validate as V
from graft_ui.advisor.fit import Ridge

FORMAT = 1
SIGNALS_ALONE = ("agree_min", "kl_max", "cosine", "sign_agreement", "norm_ratio", "b_overlap", "grad_l2", "grad_cos",
                 "pair_score", "single_min")
ENV = "GRAFT_FORECAST"
COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "results" / "zoo-study" / "predictors.json"


def with_derived(rows: Sequence[Mapping]) -> list[dict]:
    """Rows plus single_min (the weaker expert's own accuracy)."""
    out = []
    for r in rows:
        s = [r.get("single_a"), r.get("single_b")]
        out.append({**r, "single_min": min(s) if None not in s else None})
    return out


def _ridge(d: Mapping) -> Ridge:
    return Ridge(tuple(d["features"]), tuple(d["mean"]), tuple(d["sd"]), float(d["intercept"]), tuple(d["coef"]),
                 float(d["lam"]))


def _transfer(model: Ridge, rows: Sequence[Mapping], features, methods, target: str, seed: int) -> dict:
    rows = [r for r in V.usable(rows, features, target) if r["method"] in methods]
    if len(rows) < 3:
        return {"transfer_rho": None, "transfer_rmse": None, "transfer_pairs": 0}
    pred = [V.predict(model, r, features, methods) for r in rows]
    s = V.score(rows, pred, target, seed=seed)
    return {"transfer_rho": s["rho"], "transfer_ci": s["ci"], "transfer_rmse": s["rmse"], "transfer_pairs": s["pairs"],
            "transfer_per_method": {m: {"rho": v["rho"], "rmse": v["rmse"]} for m, v in s["per_method"].items()}}


def _pair_key(r: Mapping) -> frozenset:
    return frozenset((r["a"], r["b"]))


def _transfer_rows(rows: Sequence[Mapping], transfer: Sequence[Mapping]) -> list[Mapping]:
    """The study rows the transfer model is fitted on: every row whose pair (by expert names) is
    not one of the other zoo's. The study zoo copies the demo zoo's experts, so without this the
    transfer test would score pairs the model was fitted on."""
    shared = {_pair_key(r) for r in transfer}
    return [r for r in rows if _pair_key(r) not in shared]


def build_kind(rows: Sequence[Mapping], *, transfer: Sequence[Mapping] = (), reliability: Mapping | None = None,
               seed: int = 0, resamples: int = V.RESAMPLES) -> dict:
    """Everything about one kind's forecast; rows of that kind only."""
    rows = V.usable(with_derived(rows), V.MODEL_FEATURES)
    if len(V.experts_of(rows)) < 4:
        raise ValueError(f"leave-one-expert-out needs at least 4 experts; the rows have {V.experts_of(rows)}")
    methods = V.method_names(rows)
    preds, folds = V.loeo(rows, V.MODEL_FEATURES)
    scored, sp = V.predicted(rows, preds)
    if len(scored) < 3:
        raise ValueError(f"leave-one-expert-out predicted {len(scored)} of {len(rows)} fusions: too few measured kept fractions")
    val = {"protocol": V.PROTOCOL, **V.score(scored, sp, seed=seed, resamples=resamples), "folds": folds,
           "reliability": (reliability or {}).get("kept_min"), "reliability_per_method": (reliability or {}).get("per_method")}
    model = V.fit(rows, V.MODEL_FEATURES, methods=methods)
    fit_rows = _transfer_rows(rows, transfer)
    tmodel = V.fit(fit_rows, V.MODEL_FEATURES, methods=methods) if len(fit_rows) < len(rows) else model
    val.update(_transfer(tmodel, with_derived(transfer), V.MODEL_FEATURES,
                         methods, "kept_min", seed),
               transfer_fit_pairs=len({_pair_key(r) for r in fit_rows}) if transfer else None)
    val["meets_targets"] = V.meets_targets(val)
    sides = V.side_rows(rows)
    side_rows, side_pred = V.predicted(sides, V.loeo(sides, V.SIDE_FEATURES, "kept")[0])
    side_val = V.score(side_rows, side_pred, "kept", seed=seed, resamples=resamples)
    # mean accuracy after merging (points) from the held-out per-expert kept fractions
    by = {(s["pair"], s["method"], s["side"]): p for s, p in zip(side_rows, side_pred)}
    acc = [(r, float(np.mean([by[(r["pair"], r["method"], s)] * r[f"single_{s}"] for s in "ab"])))
           for r in rows if all((r["pair"], r["method"], s) in by for s in "ab") and r.get("mean") is not None]
    mean_val = V.score([r for r, _ in acc], [p for _, p in acc], "mean", seed=seed, resamples=resamples) if len(acc) > 3 else None
    alone = {}
    for s in SIGNALS_ALONE:
        rs = V.usable(rows, [s])
        if len(rs) >= 3:
            sc = V.score(rs, [float(r[s]) for r in rs], seed=seed, resamples=resamples)
            sc.pop("rmse", None)  # a raw signal is not on the kept scale
            for m in sc["per_method"].values():
                m.pop("rmse", None)
            tr = [r for r in V.usable(with_derived(transfer), [s], "kept_min") if r["method"] in methods]
            sc["transfer_rho"] = V._spearman([float(r[s]) for r in tr], [float(r["kept_min"]) for r in tr]) if tr else None
            alone[s] = sc
    return {"features": list(V.MODEL_FEATURES), "methods": methods, "model": asdict(model),
            "side_model": asdict(V.fit(sides, V.SIDE_FEATURES, "kept", methods)), "validation": val,
            "side_validation": side_val, "mean_validation": mean_val, "signals_alone": alone,
            "heldout": [{"pair": r["pair"], "method": r["method"], "kept_min": r["kept_min"], "predicted": p}
                        for r, p in zip(scored, sp)]}


def build(rows: Sequence[Mapping], *, transfer: Sequence[Mapping] = (), reliability: Mapping | None = None,
          zoo: Mapping | None = None, transfer_zoo: Mapping | None = None, seed: int = 0,
          resamples: int = V.RESAMPLES) -> dict:
    """The predictors.json artifact: per kind (build_kind), the rows it was fitted on, and their zoos."""
    kinds = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        kinds[kind] = build_kind([r for r in rows if r["kind"] == kind],
                                 transfer=[r for r in transfer if r["kind"] == kind],
                                 reliability=(reliability or {}).get(kind), seed=seed, resamples=resamples)
    return {"format": FORMAT, "target": "kept_min", "kinds": kinds, "zoo": dict(zoo or {}),
            "transfer_zoo": dict(transfer_zoo or {}), "rows": list(rows), "transfer_rows": list(transfer),
            "definitions": V.__doc__}


@dataclass(frozen=True)
class KeptForecast:
    """One kind's fitted forecast (from predictors.json)."""

    kind: str
    model: Ridge
    side: Ridge
    methods: tuple
    validation: dict
    source: str = ""

    @classmethod
    def from_artifact(cls, art: Mapping, kind: str, source: str = "") -> "KeptForecast":
        k = (art.get("kinds") or {}).get(kind)
        if k is None:
            raise KeyError(f"the forecast {source or ''} has no {kind} model (kinds: {sorted(art.get('kinds') or {})})")
        return cls(kind, _ridge(k["model"]), _ridge(k["side_model"]), tuple(k["methods"]), dict(k["validation"]), source)

    @property
    def weak(self) -> bool:
        return not self.validation.get("meets_targets")

    def error(self, method: str) -> float:
        """Held-out RMSE of kept_min for `method` (a fraction); the pooled one for a method not validated."""
        return float(((self.validation.get("per_method") or {}).get(method) or self.validation)["rmse"])

    def predict(self, row: Mapping) -> dict:
        """{kept_min, kept_a, kept_b} of one (pair, method) row carrying the preview signals."""
        if row["method"] not in self.methods:
            raise ValueError(f"no forecast for method {row['method']!r}; the model knows {list(self.methods)}")
        out = {"kept_min": V.predict(self.model, row, V.MODEL_FEATURES, self.methods)}
        for s in "ab":
            out[f"kept_{s}"] = V.predict(self.side, {"method": row["method"], "agree": row[f"agree_{s}"],
                                                     "kl": row[f"kl_{s}"]}, V.SIDE_FEATURES, self.methods)
        return out


def load_artifact(path: str | Path | None = None) -> dict:
    """The fitted forecast: `path`, else $GRAFT_FORECAST (how a user points the app at one), else the committed one."""
    path = Path(path or os.environ.get(ENV) or COMMITTED)
    if path.is_dir():
        path = path / "predictors.json"
    try:
        art = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no fitted forecast at {str(path)!r}: run `python -m graft_ui forecast` "
                                "(docs/ADVISOR.md)") from None
    if art.get("format") != FORMAT:
        raise ValueError(f"{path} is forecast format {art.get('format')!r}, this version reads {FORMAT}")
    return dict(art, _path=str(path))
