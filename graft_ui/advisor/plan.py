"""Which pair, with which method: the kept-fraction forecast of every (pair, method) of one kind on a target.

    p = plan(manifest, "lora", "math+code", forecaster, art=art, study=study)
    p.best                 the recommended (pair, method): highest predicted accuracy on the target
    p.recommendation       "Fuse math-lora + code-lora with ties: ..."
    p.validation_line      the forecast's measured quality (leave-one-expert-out, ρ and interval)

Signals per (pair, method) come from the fitted artifact when it was made on this very zoo (its
rows, or its transfer rows), else they are computed (advisor.signals: the merge preview on the
experts' own domains; cached under `cache`). Predicted accuracy on the target domains D:

    acc(d) = max over the pair's experts e of  single_e(d) * (kept_e if d is e's domain else kept_min)
    predicted accuracy = mean over d in D of acc(d)           (kept fractions clipped to [0, 1.5])

single_e(d) is the expert's held-out accuracy (the study's singles on this zoo, else evaluated).
A pair whose domains are not D is `extrapolated` (the kept fractions are measured on its own
domains). The ± of a forecast is the held-out RMSE of kept_min for its method.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from graft_ui.advisor.forecast import same_zoo, target_domains
from graft_ui.advisor.kept import KeptForecast
from graft_ui.advisor.report import validation_line
from graft_ui.advisor.signals import METHODS, PREVIEW_SIGNALS, collect
from graft_ui.models.manifest import Manifest
from graft_ui.study.lookup import zoo_fingerprint

log = logging.getLogger(__name__)

KEPT_CLIP = (0.0, 1.5)
WEAK_NOTE = ("weak forecast: below the targets (pooled ρ ≥ 0.85 with lower end ≥ 0.7, within each method ρ ≥ 0.7, "
             "transfer ρ ≥ 0.6); rank pairs with it, then check the chosen fusion with `eval`")


@dataclass
class PairMethod:
    a: str
    b: str
    kind: str
    method: str
    domains: list
    kept_min: float
    kept_a: float
    kept_b: float
    error: float  # held-out RMSE of kept_min for this method (a fraction)
    accuracy: float  # predicted mean accuracy on the target (%)
    extrapolated: bool
    preview: dict = field(default_factory=dict)  # agree_a, agree_b, agree_min, kl_a, kl_b, kl_max
    measured_kept_min: float | None = None

    @property
    def pair(self) -> str:
        return f"{self.a}+{self.b}"

    def to_dict(self) -> dict:
        return {"experts": [self.a, self.b], "kind": self.kind, "method": self.method,
                "predicted_kept_min": self.kept_min, "error": self.error,
                "predicted_kept": {self.a: self.kept_a, self.b: self.kept_b},
                "predicted_accuracy": self.accuracy, "domains": self.domains, "extrapolated": self.extrapolated,
                "preview": self.preview, "measured_kept_min": self.measured_kept_min}


@dataclass
class Plan:
    kind: str
    target: list
    rows: list  # PairMethod, best first
    validation: dict
    weak: bool
    sources: dict = field(default_factory=dict)

    @property
    def best(self) -> PairMethod:
        return self.rows[0]

    def best_per_pair(self) -> dict[str, PairMethod]:
        out: dict[str, PairMethod] = {}
        for r in self.rows:  # best first: the first row of a pair is its best method
            out.setdefault(r.pair, r)
        return out

    @property
    def validation_line(self) -> str:
        return validation_line(self.kind, self.validation, self.best.method if self.rows else None)

    @property
    def recommendation(self) -> str:
        if not self.rows:
            return "No pair to recommend."
        r = self.best
        text = (f"Fuse {r.a} + {r.b} with {r.method}: predicted kept_min {r.kept_min:.2f} ± {r.error:.2f} "
                f"({r.a} keeps {r.kept_a:.2f}, {r.b} {r.kept_b:.2f}), about {r.accuracy:.0f}% mean accuracy on "
                f"{'+'.join(self.target)}")
        if r.measured_kept_min is not None:
            text += f"; the study measured kept_min {r.measured_kept_min:.2f}"
        if r.extrapolated:
            text += f" (extrapolated: the experts' own domains are {'+'.join(r.domains)})"
        return text + (f" — {WEAK_NOTE}." if self.weak else ".")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "recommendation": self.recommendation,
                "best": self.best.to_dict() if self.rows else None, "weak": self.weak, "sources": self.sources,
                "pairs": [r.to_dict() for r in self.rows]}


def _clip(x: float) -> float:
    return min(KEPT_CLIP[1], max(KEPT_CLIP[0], float(x)))


def artifact_rows(art: Mapping, manifest: Manifest) -> list[dict] | None:
    """The artifact's signal rows of this very zoo (fitted on it, or transferred to it), else None."""
    fp = zoo_fingerprint(manifest.source) if manifest.source else None
    if fp is None:
        return None
    for zoo_key, rows_key in (("zoo", "rows"), ("transfer_zoo", "transfer_rows")):
        if (art.get(zoo_key) or {}).get("fingerprint") == fp and art.get(rows_key):
            return list(art[rows_key])
    return None


def plan(manifest: Manifest, kind: str, dataset: str, forecaster: KeptForecast, *, art: Mapping,
         study: Mapping | None = None, experts: Sequence[str] | None = None, methods: Sequence[str] | None = None,
         k: int = 32, seed: int = 0, limit: int | None = None, device: str = "cpu",
         cache: str | Path | None = None, backend=None) -> Plan:
    """The module docstring's forecast of every (pair, method) of `kind` on `dataset`; `backend`
    (graft_ui.fanout.Backend): where previews missing from the cache are computed."""
    target = target_domains(dataset, manifest)
    names = [e.name for e in manifest.experts if e.kind == kind and (not experts or e.name in experts)]
    if len(names) < 2:
        raise ValueError(f"the forecast needs two or more {kind} experts; have {names}")
    methods = [m for m in (methods or METHODS) if m in forecaster.methods]
    if not methods:
        raise ValueError(f"no method with a fitted forecast among {list(methods or METHODS)}; "
                         f"the forecast knows {list(forecaster.methods)}")
    rows = artifact_rows(art, manifest)
    src = "the fitted forecast's own rows (this zoo)"
    wanted = {(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    if rows is None or not wanted <= {(r["a"], r["b"]) for r in rows}:
        out = Path(cache) if cache else Path(tempfile.gettempdir()) / "graft-forecast"
        rows = collect(manifest, study, out, kinds=[kind], methods=methods, k=k, seed=seed, device=device,
                       experts=names, backend=backend)
        src = f"merge previews computed now (K={k} prompts per expert domain)"
    same = same_zoo(manifest, study)
    singles, singles_src = per_domain_singles(manifest, names, sorted({*target, *(manifest.expert(n).domain for n in names)}),
                                              study if same else None, limit, device)
    out_rows = []
    for r in rows:
        if r["method"] not in methods or (r["a"], r["b"]) not in wanted or any(r.get(s) is None for s in PREVIEW_SIGNALS):
            continue
        p = forecaster.predict(r)
        ka, kb, km = _clip(p["kept_a"]), _clip(p["kept_b"]), _clip(p["kept_min"])
        ea, eb = manifest.expert(r["a"]), manifest.expert(r["b"])
        acc = sum(max(singles[e.name][d] * ((ke if e.domain == d else km)) for e, ke in ((ea, ka), (eb, kb)))
                  for d in target) / len(target)
        own = list(dict.fromkeys([ea.domain, eb.domain]))
        out_rows.append(PairMethod(r["a"], r["b"], kind, r["method"], own, km, ka, kb, forecaster.error(r["method"]),
                                   acc, set(own) != set(target), {s: r[s] for s in PREVIEW_SIGNALS},
                                   r.get("kept_min") if same and set(own) == set(target) else None))
    out_rows.sort(key=lambda x: (-x.accuracy, -x.kept_min, x.pair, x.method))
    return Plan(kind, target, out_rows, forecaster.validation, forecaster.weak,
                {"signals": src, "singles": singles_src, "forecast": forecaster.source})


def per_domain_singles(manifest: Manifest, names: Sequence[str], domains: Sequence[str], study: Mapping | None,
                       limit: int | None, device: str) -> tuple[dict, str]:
    """({expert: {domain: accuracy %}}, where from): the study's singles (of this zoo), else evaluated."""
    have = (study or {}).get("singles") or {}
    out = {n: dict(have[n]) for n in names if n in have and all(d in have[n] for d in domains)}
    todo = [n for n in names if n not in out]
    if not todo:
        return out, "study"
    from graft_ui.zoo.evaluate import evaluate_specs

    res = evaluate_specs(todo, manifest, domains=list(domains), limit=limit, device=device)
    for n in todo:
        out[n] = {d: float(v["accuracy"]) for d, v in res["models"][n]["domains"].items()}
    return out, ("study + evaluated" if len(todo) < len(names) else "evaluated") + (f" (first {limit})" if limit else "")


__all__ = ["Plan", "PairMethod", "plan", "artifact_rows", "per_domain_singles"]
