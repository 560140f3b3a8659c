"""Every pair of one kind on a target dataset: its signals, predicted gain ± error, ranking, recommendation.

    fc = forecast(manifest, "lora", "math+code", predictor, study=study)
    fc.rows[0]            the recommended pair (highest predicted mean accuracy of the fused model)
    fc.recommendation     "Fuse math-lora + code-lora: predicted +2 ± 4 points on math+code ..."

Signals of a pair {a, b} on the target domains D (each from the cheapest place that has it):

    compatibility   the paper's pair score on K samples of D: given by the caller (the Analyze
                    tab has just computed it), else analysis.analyze_experts on D
    tv_cosine       the task-vector cosine: the study's row when the study is of this very zoo,
                    else computed from the weights (no forward pass)
    best_single     max over a, b of the expert's mean accuracy on D's held-out split: the
                    study's singles when the study is of this zoo and has D, else evaluated

predicted gain = the kind's predictor on those signals, ± its held-out RMSE; predicted
accuracy = best_single + predicted gain, clipped to [0, 100]. Pairs are ranked by predicted accuracy (a pair
whose experts do not know D has little to gain and little to offer). The study measured
each pair on its own domains only, so a pair whose domains are not D is marked
`extrapolated`; `measured` is the study's gain where it exists for exactly D on this zoo.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from graft_ui.advisor.source import Predictor, provenance
from graft_ui.models.manifest import Manifest
from graft_ui.study.lookup import pair_row, zoo_fingerprint

log = logging.getLogger(__name__)


@dataclass
class PairForecast:
    a: str
    b: str
    kind: str
    domains: list  # the pair's own domains
    compatibility: float
    tv_cosine: float
    best_single: float
    stronger: str
    predicted_gain: float
    error: float
    predicted_accuracy: float
    extrapolated: bool
    measured_gain: float | None = None

    @property
    def pair(self) -> str:
        return f"{self.a}+{self.b}"


@dataclass
class Forecast:
    kind: str
    target: list
    rows: list  # PairForecast, best first
    note: str  # provenance and held-out quality of the predictor
    sources: dict = field(default_factory=dict)  # signal -> where it came from

    @property
    def recommendation(self) -> str:
        return recommendation(self.rows, self.target)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "note": self.note, "sources": self.sources,
                "recommendation": self.recommendation, "pairs": [dict(asdict(r), pair=r.pair) for r in self.rows]}


def target_domains(dataset: str, manifest: Manifest) -> list[str]:
    """'math+code' -> ['math', 'code'], each a domain of the manifest (else ValueError naming it)."""
    parts = [p.strip() for p in str(dataset or "").split("+") if p.strip()]
    if not parts:
        raise ValueError("name the target dataset as one or more domains, e.g. math+code")
    bad = [p for p in parts if p not in manifest.datasets]
    if bad:
        raise ValueError(f"target domain(s) {bad} are not datasets of manifest {manifest.name!r} "
                         f"({sorted(manifest.datasets)}); the forecast needs a domain's held-out split")
    return list(dict.fromkeys(parts))


def same_zoo(manifest: Manifest, study: Mapping | None) -> bool:
    if not study or not manifest.source:
        return False
    fp = zoo_fingerprint(manifest.source)
    return fp is not None and fp == (study.get("zoo") or {}).get("fingerprint")


def _compat(manifest, names, target, given, k, seed, device) -> tuple[dict, str]:
    if given is not None:
        return {frozenset(p): float(s) for p, s in given.items()}, "given (the analysis just run)"
    from graft_ui.analysis.analyze import analyze_experts

    res = analyze_experts(manifest, names, "+".join(target), k=k, seed=seed, device=device)
    return {frozenset((p["a"], p["b"])): float(p["score"]) for p in res.pairs}, f"computed on K={res.k} samples"


def _tv_cosine(manifest, a, b, study, same) -> tuple[float | None, str]:
    row = pair_row(study, a.name, b.name) if same else None
    if row is not None and row.get("tv_cosine") is not None:
        return float(row["tv_cosine"]), "study"
    from graft_ui.study.weights import task_vector_similarity

    return task_vector_similarity(manifest, a, b)["cosine"], "computed"


def _singles(manifest, names, target, study, same, limit, device) -> tuple[dict, str]:
    have = ((study or {}).get("singles") or {}) if same else {}
    out = {n: sum(have[n][d] for d in target) / len(target) for n in names
           if n in have and all(d in have[n] for d in target)}
    todo = [n for n in names if n not in out]
    if not todo:
        return out, "study"
    from graft_ui.zoo.evaluate import evaluate_specs

    res = evaluate_specs(todo, manifest, domains=target, limit=limit, device=device)
    for n in todo:
        out[n] = float(res["models"][n]["mean"])
    return out, ("study + evaluated" if len(todo) < len(names) else "evaluated") + (f" (first {limit})" if limit else "")


def forecast(manifest: Manifest, kind: str, dataset: str, predictor: Predictor, *, study: Mapping | None = None,
             experts: Sequence[str] | None = None, compat: Mapping[tuple[str, str], float] | None = None,
             k: int = 16, seed: int = 0, limit: int | None = None, device: str = "cpu") -> Forecast:
    """The forecast of every pair of `kind` among `experts` (default: all of the manifest) on `dataset`."""
    target = target_domains(dataset, manifest)
    entries = [manifest.expert(n) for n in experts] if experts else list(manifest.experts)
    entries = [e for e in entries if e.kind == kind]
    if len(entries) < 2:
        raise ValueError(f"the forecast needs two or more {kind} experts; have {[e.name for e in entries]}")
    if predictor.kind != kind:
        raise ValueError(f"the predictor is of {predictor.kind} pairs, not {kind}")
    names = [e.name for e in entries]
    same = same_zoo(manifest, study)
    scores, compat_src = _compat(manifest, names, target, compat, k, seed, device)
    singles, singles_src = _singles(manifest, names, target, study, same, limit, device)
    rows, tv_src = [], set()
    for a, b in itertools.combinations(entries, 2):
        score = scores.get(frozenset((a.name, b.name)))
        if score is None:
            raise ValueError(f"no compatibility score for {a.name} + {b.name} on {'+'.join(target)}")
        tv, src = _tv_cosine(manifest, a, b, study, same)
        tv_src.add(src)
        best = max(singles[a.name], singles[b.name])
        signals = {"pair_score": score, "tv_cosine": tv, "best_single": best}
        gain = predictor.predict(signals)
        own = list(dict.fromkeys([a.domain, b.domain]))
        row = pair_row(study, a.name, b.name) if same and set(own) == set(target) else None
        rows.append(PairForecast(a.name, b.name, kind, own, score, tv, best,
                                 a.name if singles[a.name] >= singles[b.name] else b.name, gain, predictor.error,
                                 min(100.0, max(0.0, best + gain)), set(own) != set(target),
                                 None if row is None or row.get(predictor.target) is None else float(row[predictor.target])))
    rows.sort(key=lambda r: (-r.predicted_accuracy, -r.predicted_gain, r.pair))
    note = provenance(predictor, zoo_fingerprint(manifest.source) if manifest.source else None)
    return Forecast(kind, target, rows, note, {"compatibility": compat_src, "tv_cosine": " + ".join(sorted(tv_src)),
                                               "best_single": singles_src})


def recommendation(rows: Sequence[PairForecast], target: Sequence[str]) -> str:
    """One line for the top pair, e.g. 'Fuse math-lora + finance-lora: predicted +6 ± 4 points on math+finance ...'."""
    if not rows:
        return "No pair to recommend."
    r = rows[0]
    t = "+".join(target)
    # whole points; the error rounded up (no "-0", no "± 0" for an error of 0.4)
    text = (f"Fuse {r.a} + {r.b}: predicted {round(r.predicted_gain):+d} ± {math.ceil(r.error - 1e-9):d} points on {t} "
            f"over the better expert ({r.stronger}, {r.best_single:.0f}%), about {r.predicted_accuracy:.0f}% mean accuracy")
    if r.measured_gain is not None:
        text += f"; the study measured {round(r.measured_gain):+d}"
    if r.extrapolated:
        text += f" (extrapolated: the study measured pairs on their own domains, these experts' are {'+'.join(r.domains)})"
    return text + "."


def forecast_from_analysis(manifest: Manifest, kind: str, dataset: str, analysis: Mapping | None, *,
                           explicit_study: str | None = None, limit: int | None = 32, device: str = "cpu",
                           k: int = 16) -> Forecast:
    """The app's forecast: the Analyze tab's result supplies the compatibility scores (and the experts)
    when it was computed on this very dataset; otherwise the forecast computes them on every expert of
    `kind`. An expert's score, when the study lacks it, is measured on the first `limit` held-out items."""
    from graft_ui.advisor.source import load_predictor

    predictor, study = load_predictor(kind, explicit_study)
    compat, experts = None, None
    if analysis and analysis.get("dataset") == dataset:
        experts = [n for n, e in (analysis.get("experts") or {}).items() if e.get("kind") == kind]
        compat = {(p["a"], p["b"]): p["score"] for p in analysis.get("pairs") or [] if p.get("kind") == kind}
        if len(experts) < 2:
            compat, experts = None, None  # the analysis had fewer than two experts of this kind: use them all
    return forecast(manifest, kind, dataset, predictor, study=study, experts=experts, compat=compat, k=k,
                    limit=limit, device=device)
