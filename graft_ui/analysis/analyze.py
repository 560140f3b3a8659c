"""High-level analysis: experts of a manifest on a target dataset -> statistics, scores, JSON.

This is what the CLI (`python -m graft_ui analyze`) and the UI's Analyze tab call:

    result = analyze_experts(manifest, ["math-lora", "code-lora"], "math", k=32)
    result.save("out/analysis.json")
    figures = plots.analysis_figures(result)

LoRA experts of one base share one loaded base model (adapters are attached side by
side and activated in turn); full experts are loaded one at a time and freed.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, ContextManager, Mapping, Sequence

import torch

from graft_ui.analysis import scores as S
from graft_ui.analysis.cache import AnalysisCache
from graft_ui.analysis.collect import collect_stats
from graft_ui.analysis.data import Sample, iter_inputs, load_target
from graft_ui.analysis.modules import parse_name
from graft_ui.analysis.stats import DEFAULT_EPS, ActivationStats, ModuleStats
from graft_ui.models.loading import attach_adapter, load_model, load_processor, resolve_device
from graft_ui.models.manifest import Manifest, ModelEntry, load_manifest
from graft_ui.recipe import Scope

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class ExpertAnalysis:
    name: str
    kind: str
    domain: str | None
    stats: ActivationStats
    modules: dict[str, dict[str, float]]  # module -> raw and normalised statistics, rho, rho_n
    compatibility: float
    acceptable: bool

    @classmethod
    def from_stats(cls, entry: ModelEntry | Mapping[str, Any], stats: ActivationStats, threshold: float) -> "ExpertAnalysis":
        name, kind, domain = (
            (entry.name, entry.kind, entry.domain) if isinstance(entry, ModelEntry)
            else (entry["name"], entry.get("kind", "full"), entry.get("domain"))
        )
        comp = S.compatibility(stats)
        return cls(name=name, kind=kind, domain=domain, stats=stats, modules=S.module_scores(stats),
                   compatibility=comp, acceptable=S.acceptable(comp, threshold))


@dataclass
class AnalysisResult:
    dataset: str
    k: int
    seed: int
    eps: float
    threshold: float
    experts: dict[str, ExpertAnalysis]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    with_answer: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "dataset": self.dataset,
            "k": self.k,
            "seed": self.seed,
            "eps": self.eps,
            "threshold": self.threshold,
            "with_answer": self.with_answer,
            "sample_ids": list(self.sample_ids),
            "experts": {
                n: {
                    "kind": e.kind,
                    "domain": e.domain,
                    "source": e.stats.source,
                    "compatibility": e.compatibility,
                    "acceptable": e.acceptable,
                    "modules": {
                        m: {**vals, **_key_dict(m), "calls": e.stats.modules[m].calls}
                        for m, vals in e.modules.items()
                    },
                }
                for n, e in self.experts.items()
            },
            "pairs": list(self.pairs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnalysisResult":
        experts = {}
        for n, e in d["experts"].items():
            stats = ActivationStats(
                source=e["source"], eps=float(d["eps"]), k=int(d["k"]), sample_ids=list(d.get("sample_ids") or []),
                modules={m: ModuleStats(name=m, mu=v["mu"], s=v["s"], v=v["v"], calls=v.get("calls", 0))
                         for m, v in e["modules"].items()},
                model=n, dataset=d["dataset"],
            )
            experts[n] = ExpertAnalysis(
                name=n, kind=e["kind"], domain=e.get("domain"), stats=stats,
                modules={m: {k: v[k] for k in ("mu", "s", "v", "rho", "mu_n", "s_n", "v_n", "rho_n")}
                         for m, v in e["modules"].items()},
                compatibility=float(e["compatibility"]), acceptable=bool(e["acceptable"]),
            )
        return cls(dataset=d["dataset"], k=int(d["k"]), seed=int(d["seed"]), eps=float(d["eps"]),
                   threshold=float(d["threshold"]), experts=experts, pairs=list(d.get("pairs") or []),
                   sample_ids=list(d.get("sample_ids") or []), with_answer=bool(d.get("with_answer", False)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AnalysisResult":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_threshold(self, threshold: float) -> "AnalysisResult":
        """The same result judged against another threshold (no recomputation)."""
        experts = {n: dataclasses.replace(e, acceptable=S.acceptable(e.compatibility, threshold))
                   for n, e in self.experts.items()}
        pairs = [dict(p, acceptable=S.acceptable(p["score"], threshold)) for p in self.pairs]
        return dataclasses.replace(self, threshold=float(threshold), experts=experts, pairs=pairs)

    def table(self) -> list[dict[str, Any]]:
        """One row per expert (for printing / a dataframe)."""
        return [
            {"expert": n, "kind": e.kind, "domain": e.domain, "source": e.stats.source,
             "compatibility": round(e.compatibility, 4), "acceptable": e.acceptable}
            for n, e in self.experts.items()
        ]


def _key_dict(name: str) -> dict[str, Any]:
    key = parse_name(name)
    if key is None:
        return {}
    return {"tower": key.tower, "layer": key.layer, "module_type": key.module_type}


def pair_rows(experts: Mapping[str, ExpertAnalysis], threshold: float) -> list[dict[str, Any]]:
    """Pair scores for every pair of experts of the same kind and activation source."""
    rows = []
    for a, b in itertools.combinations(experts.values(), 2):
        if a.kind != b.kind or a.stats.source != b.stats.source:
            continue
        score = S.pair_score(a.stats, b.stats)
        rows.append({"a": a.name, "b": b.name, "kind": a.kind, "score": score,
                     "score_mean": S.pair_score_mean(a.stats, b.stats), "acceptable": S.acceptable(score, threshold)})
    return rows


def analyze_model(
    model: torch.nn.Module,
    processor,
    samples: Sequence[Sample],
    *,
    scope: Scope | None = None,
    source: str = "auto",
    eps: float = DEFAULT_EPS,
    with_answer: bool = False,
    inputs: Sequence[Any] | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    model_name: str | None = None,
    dataset: str | None = None,
) -> ActivationStats:
    """Statistics of one loaded model (plain, or peft with its expert adapter active) on `samples`."""
    batches = list(inputs) if inputs is not None else list(iter_inputs(processor, samples, with_answer=with_answer))
    return collect_stats(model, batches, scope=scope, source=source, eps=eps, progress=progress,
                         sample_ids=[s.id for s in samples], model_name=model_name, dataset=dataset)


def prepare_inputs(manifest: Manifest, dataset: str, k: int, *, seed: int = 0, with_answer: bool = False,
                   cache: AnalysisCache | None = None) -> tuple[list[Sample], Any, list, tuple]:
    """(samples, processor, encoded inputs, their cache key) of K samples of `dataset` (through `cache`)."""
    samples = load_target(dataset, k, manifest=manifest, seed=seed)
    base = manifest.base.path
    processor = cache.processor(base, load_processor) if cache else load_processor(base)
    encode = lambda: list(iter_inputs(processor, samples, with_answer=with_answer))  # noqa: E731
    data_key = (base, dataset, len(samples), seed, with_answer, tuple(s.id for s in samples))
    return samples, processor, cache.inputs(data_key, encode) if cache else encode(), data_key


def analyze_experts(
    manifest: Manifest | str | Path,
    experts: Sequence[str] | None,
    dataset: str,
    *,
    k: int = 32,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
    source: str = "auto",
    scope: Scope | None = None,
    threshold: float = S.DEFAULT_THRESHOLD,
    with_answer: bool = False,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool | Callable[[int, int], None] | None = None,
    allow_base_mismatch: Collection[str] = (),
    cache: AnalysisCache | None = None,
    use: Callable[[ModelEntry], ContextManager[torch.nn.Module]] | None = None,
) -> AnalysisResult:
    """Analyse `experts` (names in the manifest; None = all) on K samples of `dataset`.
    Adapters recorded on another base are refused, except those named in `allow_base_mismatch`.

    `cache` (analysis/cache.py) reuses the processor, the encoded inputs and finished
    statistics across calls; `use(entry)`, when given, lends an already loaded model
    configured as that expert (the chat pool's base with the expert's adapter active)
    instead of loading one here.

    progress: True for tqdm bars, or a callable(done, total) counting samples over all
    experts (total = number of experts x K), e.g. a UI progress bar.

    `dataset` is a manifest domain, a JSONL path, or a union "dom1+dom2". Every expert
    sees the same samples. Pair scores are computed for every pair of the same kind.
    """
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    entries = [manifest.expert(n) for n in experts] if experts else list(manifest.experts)
    if not entries:
        raise ValueError(f"manifest {manifest.name!r} lists no experts to analyse")
    samples, processor, inputs, data_key = prepare_inputs(manifest, dataset, k, seed=seed, with_answer=with_answer,
                                                          cache=cache)
    dev = resolve_device(device)
    results: dict[str, ExpertAnalysis] = {}
    keys = {e.name: (e.path, e.kind, *data_key, float(eps), source, repr(scope), str(dev), str(dtype)) for e in entries}
    for e in entries:
        hit = cache.stats(keys[e.name]) if cache else None
        if hit is not None:
            log.info("analysis of %s on %s (K=%d): reused from this session", e.name, dataset, len(samples))
            results[e.name] = ExpertAnalysis.from_stats(e, hit, threshold)
    todo = [e for e in entries if e.name not in results]

    grand = len(todo) * len(samples)
    done_before = len(results)

    def run(model, entry: ModelEntry) -> None:
        log.info("analysing %s on %s (K=%d)", entry.name, dataset, len(samples))
        step = progress
        if callable(progress):
            # one progress scale over all experts: (samples done so far, experts x K)
            offset = (len(results) - done_before) * len(samples)
            step = lambda done, _total: progress(offset + done, grand)  # noqa: E731
        stats = analyze_model(model, processor, samples, scope=scope, source=source, eps=eps, inputs=inputs,
                              progress=step, model_name=entry.name, dataset=dataset)
        results[entry.name] = ExpertAnalysis.from_stats(entry, stats, threshold)
        if cache:
            cache.put_stats(keys[entry.name], stats)

    if use is not None:
        for e in todo:
            with use(e) as model:
                run(model, e)
        todo = []
    loras = [e for e in todo if e.kind == "lora"]
    if loras:
        model = load_model(manifest.base, device=dev, dtype=dtype)
        for e in loras:
            model = attach_adapter(model, e.path, e.name, allow_base_mismatch=e.name in allow_base_mismatch)
            model.set_adapter(e.name)
            run(model, e)
        del model
        gc.collect()
    for e in todo:
        if e.kind == "full":
            model = load_model(e, device=dev, dtype=dtype)
            run(model, e)
            del model
            gc.collect()
    ordered = {e.name: results[e.name] for e in entries}
    return AnalysisResult(dataset=dataset, k=len(samples), seed=seed, eps=float(eps), threshold=float(threshold),
                          experts=ordered, pairs=pair_rows(ordered, threshold),
                          sample_ids=[s.id for s in samples], with_answer=with_answer)
