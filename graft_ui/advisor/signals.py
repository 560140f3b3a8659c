"""Every predictor on every (pair, method) of a zoo, joined with what a study measured there.

One row per (pair, method):

    pair, a, b, kind, method
    weights-only    cosine, sign_agreement, norm_ratio, b_overlap (LoRA)       advisor.weights
    forward/back    grad_l2, grad_cos on K prompts of the pair's domains        advisor.preview
                    pair_score: the paper's compatibility, from the study's pairs table
    preview         agree_a, agree_b, agree_min, kl_a, kl_b, kl_max             advisor.preview
    own quality     single_a, single_b: each expert's accuracy on its own domain (the study's singles)
    measured        kept_a, kept_b, kept_min, mean (accuracy after merging, %), from the study's table 1;
                    absent for a zoo no study measured

Resumable: each pair's pair-level signals and each (pair, method) preview are written atomically to
`cache/pairs/<pair>.json` and `cache/preview/<pair>/<method>.json` as they finish, under a folder
keyed by the zoo's fingerprint, K and the seed; a rerun computes only what is missing. With a
`backend` (graft_ui/fanout.py: local worker processes or a Ray cluster), the pairs missing from the
cache are computed first, one job per pair writing into the same cache, which the rows then read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from graft_ui.advisor.preview import DEFAULT_K, Previewer
from graft_ui.advisor.weights import weight_signals
from graft_ui.fanout import Backend, run_jobs
from graft_ui.models.manifest import Manifest, load_manifest
from graft_ui.study.lookup import pair_row, zoo_fingerprint
from graft_ui.study.worker import Cache, write_json

log = logging.getLogger(__name__)

METHODS = ("task_arithmetic", "ties", "graft", "average")
PAIR_SIGNALS = ("cosine", "sign_agreement", "norm_ratio", "b_overlap", "grad_l2", "grad_cos")
PREVIEW_SIGNALS = ("agree_a", "agree_b", "agree_min", "kl_a", "kl_b", "kl_max")
MEASURED = ("kept_a", "kept_b", "kept_min", "mean")


def cache_root(out: str | Path, manifest: Manifest, k: int, seed: int) -> Path:
    key = json.dumps({"zoo": zoo_fingerprint(manifest.source) if manifest.source else str(manifest.name),
                      "k": k, "seed": seed}, sort_keys=True)
    return Path(out) / "cache" / hashlib.sha256(key.encode()).hexdigest()[:12]


def measured(study: Mapping | None, pair: str, method: str) -> dict:
    """The study's table-1 figures of (pair, method): kept_a, kept_b, kept_min, mean; {} when unmeasured."""
    for r in (study or {}).get("table1") or []:
        if r.get("pair") == pair and r.get("variant") == method and r.get("kept_min") is not None:
            return {k: r.get(k) for k in MEASURED}
    return {}


def pairs_of(manifest: Manifest, kinds: Sequence[str], experts: Sequence[str] | None = None) -> list[tuple]:
    """Every unordered pair of experts of one kind (among `experts`, default all), in manifest order."""
    out = []
    for kind in kinds:
        es = [e for e in manifest.experts if e.kind == kind and (not experts or e.name in experts)]
        out.extend(itertools.combinations(es, 2))
    return out


def pair_job(job: dict, report) -> str:
    """One pair's signals and previews into the cache (a fan-out job; `collect` with a backend)."""
    manifest = load_manifest(job["manifest"])
    collect(manifest, None, job["out"], kinds=[job["kind"]], methods=job["methods"], k=job["k"], seed=job["seed"],
            device=job["device"], experts=[job["a"], job["b"]])
    report({"pair": f"{job['a']}+{job['b']}"})
    return f"{job['a']}+{job['b']}"


def _fan_out(manifest: Manifest, cache: Cache, out: str | Path, todo: list, methods: Sequence[str], k: int, seed: int,
             device: str, backend: Backend, progress: Callable[[str], None] | None) -> None:
    """The pairs of `todo` with anything missing from `cache`, computed by `backend`'s workers."""
    missing = [(a, b) for a, b in todo
               if Cache.read(cache.weights(f"{a.name}+{b.name}")) is None
               or any(Cache.read(cache.fused(f"{a.name}+{b.name}", m)) is None for m in methods)]
    if not missing:
        return
    if not manifest.source:
        raise ValueError(f"manifest {manifest.name!r} has no file, so {backend.describe()} cannot load it; save it first")
    common = {"manifest": str(Path(manifest.source).resolve()), "out": str(Path(out).resolve()), "methods": list(methods),
              "k": k, "seed": seed, "device": device}
    jobs = [{**common, "a": a.name, "b": b.name, "kind": a.kind} for a, b in missing]
    log.info("merge previews of %d pairs on %s", len(jobs), backend.describe())
    run_jobs(jobs, pair_job, backend, on_result=lambda job, pair: progress and progress(f"{pair}: previews computed"))


def collect(manifest: Manifest, study: Mapping | None, out: str | Path, *, kinds: Sequence[str] = ("lora", "full"),
            methods: Sequence[str] = METHODS, k: int = DEFAULT_K, seed: int = 0, device: str = "cpu",
            experts: Sequence[str] | None = None, progress: Callable[[str], None] | None = None,
            backend: Backend | None = None) -> list[dict]:
    """The module docstring's rows for every pair of `kinds` and every method (cached, resumable)."""
    root = cache_root(out, manifest, k, seed)
    cache = Cache(root)
    if backend is not None and (backend.ray or backend.workers > 1):
        _fan_out(manifest, cache, out, pairs_of(manifest, kinds, experts), methods, k, seed, device, backend, progress)
    pv = Previewer(manifest, k=k, seed=seed, device=device, work=root)
    singles = (study or {}).get("singles") or {}
    rows = []
    todo = pairs_of(manifest, kinds, experts)
    for n, (a, b) in enumerate(todo, 1):
        pair = f"{a.name}+{b.name}"
        t = time.perf_counter()
        ps = Cache.read(cache.weights(pair))
        if ps is None:
            target = "+".join(dict.fromkeys([a.domain, b.domain]))
            ps = {**weight_signals(manifest, a, b, seed=seed), **pv.gradient_distance(a.name, b.name, target),
                  "target": target}
            write_json(cache.weights(pair), ps)
        srow = pair_row(study, a.name, b.name) or {}
        base = {"pair": pair, "a": a.name, "b": b.name, "kind": a.kind,
                "relatedness": srow.get("relatedness"), "pair_score": srow.get("pair_score"),
                "single_a": (singles.get(a.name) or {}).get(a.domain), "single_b": (singles.get(b.name) or {}).get(b.domain),
                **{s: ps.get(s) for s in PAIR_SIGNALS}}
        for method in methods:
            path = cache.fused(pair, method)
            res = Cache.read(path)
            if res is None:
                res = pv.preview(a.name, b.name, method)
                write_json(path, res)
            rows.append({**base, "method": method, **{s: res[s] for s in PREVIEW_SIGNALS},
                         "preview_seconds": res.get("seconds"), **measured(study, pair, method)})
        if progress is not None:
            progress(f"{n}/{len(todo)} {pair}: {time.perf_counter() - t:.1f} s")
    return rows


__all__ = ["METHODS", "PAIR_SIGNALS", "PREVIEW_SIGNALS", "MEASURED", "collect", "measured", "pair_job", "pairs_of"]
