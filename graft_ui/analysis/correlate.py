"""Does compatibility predict fusion gain? (paper table 2 / 3.4: Spearman rho = 0.86 there)

For every pair (Ei, Ej) of experts of one kind (in manifest order; Ei is Graft's base
side), with domains di != dj:

- target T_ij: the union of the two domains' eval sets, K/2 seeded samples from each;
- score: `pair_score(Ei, Ej; T_ij)` (scores.py: mean rho' over both experts' modules under
  one joint min-max normaliser). Also recorded: `score_mean` (mean of the two separately
  normalised compatibilities) and `score_fused` (the fused model's own compatibility on
  T_ij, what Table 2's columns most plausibly are; it needs the fusion, so it is a
  diagnostic rather than a predictor);
- benchmark B(M) = mean of M's accuracies (%) on the di and dj eval sets (the harness of
  `graft_ui.zoo.evaluate`, greedy decoding, exact / code-test scoring);
- gain = B(fused) - max(B(Ei), B(Ej)), the fused model being Graft at default parameters
  (via `run_recipe`).

The Spearman correlation of score and gain over the pairs (scipy.stats.spearmanr) is
reported with its p-value, whatever it is; with 6 pairs (4 domains) the p-value is coarse.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from graft_ui.analysis import scores as S
from graft_ui.analysis.analyze import analyze_experts, analyze_model
from graft_ui.analysis.data import iter_inputs, load_target
from graft_ui.analysis.pairstats import bench as _bench
from graft_ui.analysis.pairstats import spearman  # noqa: F401  (re-exported: correlate.spearman)
from graft_ui.analysis.stats import DEFAULT_EPS
from graft_ui.models.loading import load_model, load_processor, resolve_device
from graft_ui.models.manifest import Manifest, ModelEntry, load_manifest
from graft_ui.models.merge import run_recipe
from graft_ui.recipe import ExpertRef, Output, Recipe, Scope
from graft_ui.zoo.evaluate import evaluate_model

log = logging.getLogger(__name__)

SCORE_KEYS = ("score", "score_mean", "score_fused")


@dataclass
class CorrelationResult:
    kind: str
    k: int
    seed: int
    pairs: list[dict[str, Any]]
    singles: dict[str, dict[str, float]]  # expert -> {domain: accuracy}
    spearman: dict[str, dict[str, float | None]] = field(default_factory=dict)  # score key -> {rho, p, n}
    eval_limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "seed": self.seed, "eval_limit": self.eval_limit,
                "definition": {
                    "score": "pair_score: mean rho' over both experts' modules, mu/s/v min-max normalised jointly, "
                             "on the union of the two domains' eval sets (K/2 each)",
                    "score_mean": "mean of the two experts' separately normalised compatibilities on the same target",
                    "score_fused": "compatibility of the Graft-fused model on the same target",
                    "gain": "mean accuracy (%) of the fused model on the two domains minus the better single expert's",
                },
                "spearman": self.spearman, "pairs": self.pairs, "singles": self.singles}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True))
        return path

    def table(self) -> list[dict[str, Any]]:
        return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()
                 if k in ("a", "b", "score", "score_mean", "score_fused", "fused", "best_single", "gain")}
                for p in self.pairs]


def expert_pairs(manifest: Manifest, kind: str, names: Sequence[str] | None = None) -> list[tuple[ModelEntry, ModelEntry]]:
    experts = [manifest.expert(n) for n in names] if names else [e for e in manifest.experts if e.kind == kind]
    experts = [e for e in experts if e.kind == kind]
    bad = [e.name for e in experts if not e.domain or e.domain not in manifest.datasets]
    if bad:
        raise ValueError(f"expert(s) {bad} have no domain dataset in manifest {manifest.name!r}")
    pairs = [(a, b) for a, b in itertools.combinations(experts, 2) if a.domain != b.domain]
    if not pairs:
        raise ValueError(f"manifest {manifest.name!r} has no pair of {kind} experts of different domains")
    return pairs


def _accuracies(model, processor, manifest: Manifest, domains: Sequence[str], limit: int | None) -> dict[str, float]:
    datasets = {d: manifest.dataset(d).eval for d in domains}
    res = evaluate_model(model, processor, datasets, limit=limit)
    return {d: float(v["accuracy"]) for d, v in res["domains"].items()}


def correlate(
    manifest: Manifest | str | Path,
    *,
    kind: str = "lora",
    experts: Sequence[str] | None = None,
    k: int = 32,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
    scope: Scope | None = None,
    eval_limit: int | None = None,
    out_dir: str | Path,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> CorrelationResult:
    """Score, fuse and evaluate every pair; see the module docstring for the definitions."""
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if kind not in ("lora", "full"):
        raise ValueError(f"kind={kind!r} must be 'lora' or 'full'")
    out_dir = Path(out_dir)
    pairs = expert_pairs(manifest, kind, experts)
    dev = str(resolve_device(device))
    processor = load_processor(manifest.base.path)
    note = progress or (lambda msg: log.info("%s", msg))

    # single experts: every domain that appears in a pair
    singles: dict[str, dict[str, float]] = {}
    members = list(dict.fromkeys([e for p in pairs for e in p]))
    domains = list(dict.fromkeys(e.domain for e in members))
    for e in members:
        note(f"evaluating {e.name} on {domains}")
        model = load_model(e, base=manifest.base if e.kind == "lora" else None, device=dev)
        singles[e.name] = _accuracies(model, processor, manifest, domains, eval_limit)
        del model
        gc.collect()

    rows = []
    for a, b in pairs:
        target = f"{a.domain}+{b.domain}"
        note(f"pair {a.name} + {b.name}: activation statistics on {target} (K={k})")
        res = analyze_experts(manifest, [a.name, b.name], target, k=k, seed=seed, eps=eps, scope=scope, device=dev)
        ea, eb = res.experts[a.name], res.experts[b.name]
        score = S.pair_score(ea.stats, eb.stats)
        score_mean = S.pair_score_mean(ea.stats, eb.stats)

        note(f"pair {a.name} + {b.name}: fusing with graft (defaults)")
        fused_dir = out_dir / "fused" / f"{a.name}+{b.name}"
        recipe = Recipe(method="graft", base=manifest.base.path if kind == "lora" else None,
                        experts=(ExpertRef(path=a.path, name=a.name), ExpertRef(path=b.path, name=b.name)),
                        output=Output(kind="adapter" if kind == "lora" else "full"), scope=scope or Scope(),
                        seed=seed, device=dev, name=f"graft:{a.name}+{b.name}")
        run_recipe(recipe, fused_dir, overwrite=True)
        model = load_model(str(fused_dir), base=manifest.base.path if kind == "lora" else None, device=dev)
        samples = load_target(target, k, manifest=manifest, seed=seed)
        fused_stats = analyze_model(model, processor, samples, scope=scope, eps=eps,
                                    inputs=list(iter_inputs(processor, samples)), model_name="fused", dataset=target)
        note(f"pair {a.name} + {b.name}: evaluating the fused model on {a.domain}, {b.domain}")
        acc = _accuracies(model, processor, manifest, [a.domain, b.domain], eval_limit)
        del model
        gc.collect()
        domains = [a.domain, b.domain]
        fused_b, sa, sb = _bench(acc, domains), _bench(singles[a.name], domains), _bench(singles[b.name], domains)
        rows.append({
            "a": a.name, "b": b.name, "domains": [a.domain, b.domain], "target": target,
            "score": score, "score_mean": score_mean, "score_fused": S.compatibility(fused_stats),
            "compat_a": ea.compatibility, "compat_b": eb.compatibility,
            "fused": fused_b, "single_a": sa, "single_b": sb, "best_single": max(sa, sb), "gain": fused_b - max(sa, sb),
            "fused_accuracy": acc, "fused_dir": str(fused_dir),
        })
        log.info("%s + %s: score %.4f, gain %+.2f", a.name, b.name, score, rows[-1]["gain"])
    gains = [r["gain"] for r in rows]
    result = CorrelationResult(kind=kind, k=k, seed=seed, pairs=rows, singles=singles, eval_limit=eval_limit,
                               spearman={key: spearman([r[key] for r in rows], gains) for key in SCORE_KEYS})
    return result
