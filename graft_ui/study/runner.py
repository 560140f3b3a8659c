"""Run the fusion-quality study: plan what is missing from the cache, do it, assemble the rows.

    study = run_study("path/to/zoo", "out/study", kinds=("lora",), methods=["graft", "ties"])

Work units (each cached on completion under DIR/cache/<config hash>/, see worker.py):
single-expert evaluations on the domains the expert's pairs need; per pair, the activation
compatibility (analysis.analyze_experts on the pair's domains), the task-vector similarity,
and one fusion + evaluation per method variant. A second run with the same settings
finds everything cached and only re-assembles the report. `workers` > 1 runs pair tasks
in spawned processes, `ray` one task per fusion + evaluation on a Ray cluster (graft_ui.fanout;
the pieces stream back into the same cache); every process uses `threads` torch threads
(default 1: the zoo's tiny models run fastest single-threaded on busy cores, see zoo.build.torch_threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from graft_ui.fanout import Backend, run_jobs
from graft_ui.models.manifest import Manifest, load_manifest
from graft_ui.study import predictors, report
from graft_ui.study.lookup import fingerprint
from graft_ui.study.pairs import Pair, default_variants, enumerate_pairs
from graft_ui.study.worker import Cache, init_worker, release_models, run_task, run_task_detached, write_json
from graft_ui.zoo.build import torch_threads

log = logging.getLogger(__name__)

STUDY_FORMAT = 1


@dataclass(frozen=True)
class StudyConfig:
    """Everything that changes a cached result (selection options such as kinds/pairs do not)."""

    k: int = 32
    seed: int = 0
    limit: int | None = None
    all_domains: bool = False
    device: str = "cpu"
    batch_size: int = 16

    def key(self, fingerprint: dict | None, manifest_source: str) -> str:
        data = {"config": asdict(self), "zoo": fingerprint or {"manifest": manifest_source}}
        data["config"].pop("device")  # results do not depend on where they ran (up to float noise)
        data["config"].pop("batch_size")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class RunStats:
    fusions_done: int = 0
    fusions_cached: int = 0
    singles_done: int = 0
    compat_done: int = 0
    fuse_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0


def resolve_manifest(src: str | Path | Manifest) -> tuple[Manifest, Path | None, dict | None]:
    """(manifest, zoo folder or None, build_info or None); `src` is a manifest, a folder or a file
    (the command line resolves zoo profile names with the other commands' --zoo)."""
    manifest = src if isinstance(src, Manifest) else load_manifest(src)
    folder = Path(manifest.source).parent if manifest.source else None
    info = None
    if folder is not None and (folder / "build_info.json").is_file():
        info = json.loads((folder / "build_info.json").read_text())
    return manifest, (folder if info else None), info


def eval_domains(pair: Pair, manifest: Manifest, all_domains: bool) -> list[str]:
    return list(manifest.datasets) if all_domains else pair.domains


def plan(manifest: Manifest, pairs: Sequence[Pair], variants: Sequence[str], cache: Cache, config: StudyConfig,
         common: dict, split: bool = False) -> tuple[list[dict], int]:
    """(tasks for everything not cached yet, number of fusions already cached). `split`: one task per
    fusion + evaluation (and one for a pair's compatibility and weights) instead of one per pair, for
    a cluster with more workers than pairs; a local worker keeps one pair's loaded base across its variants."""
    need: dict[str, list[str]] = {}
    for p in pairs:
        for e in (p.a, p.b):
            need.setdefault(e.name, [])
            need[e.name] = list(dict.fromkeys(need[e.name] + eval_domains(p, manifest, config.all_domains)))
    tasks = []
    for name, domains in need.items():
        have = Cache.read(cache.single(name))
        if not have or not set(domains) <= set(have.get("accuracy", {})):
            tasks.append({**common, "type": "single", "expert": name, "domains": domains})
    cached = 0
    for p in pairs:
        # a failed fusion is retried on the next run (it may have been a full disk or a kill)
        todo = [v for v in variants if (Cache.read(cache.fused(p.name, v)) or {"error": 1}).get("error")]
        cached += len(variants) - len(todo)
        compat = Cache.read(cache.compat(p.name)) is None
        weights = Cache.read(cache.weights(p.name)) is None
        pair = {**common, "type": "pair", "a": p.a.name, "b": p.b.name,
                "domains": eval_domains(p, manifest, config.all_domains)}
        if split:
            if compat or weights:
                tasks.append({**pair, "variants": [], "compat": compat, "weights": weights})
            tasks += [{**pair, "variants": [v], "compat": False, "weights": False} for v in todo]
        elif todo or compat or weights:
            tasks.append({**pair, "variants": todo, "compat": compat, "weights": weights})
    return tasks, cached


class _Progress:
    """Counts fusions, logs each with an ETA from the mean time per unit of work so far."""

    def __init__(self, total_fusions: int, total_other: int, note: Callable[[str], None]):
        self.total = total_fusions + total_other
        self.done = 0
        self.t0 = time.perf_counter()
        self.note = note
        self.stats = RunStats()

    def __call__(self, ev: dict) -> None:
        self.done += 1
        kind = ev["event"]
        if kind == "fused":
            self.stats.fusions_done += 1
        elif kind == "single":
            self.stats.singles_done += 1
        elif kind == "compat":
            self.stats.compat_done += 1
        elapsed = time.perf_counter() - self.t0
        left = max(0, self.total - self.done)
        eta = elapsed / self.done * left if self.done else 0.0
        what = {"fused": f"{ev.get('variant')} on {ev.get('pair')}", "single": f"expert {ev.get('expert')}",
                "compat": f"compatibility of {ev.get('pair')}"}[kind]
        err = f" FAILED ({ev['error']})" if ev.get("error") else ""
        self.note(f"[{self.done}/{self.total}] {what}: {ev['seconds']:.1f} s{err}; "
                  f"elapsed {elapsed:.0f} s, ETA {eta:.0f} s")


def _execute(tasks: list[dict], backend: Backend, progress: _Progress, cache: Cache) -> None:
    if backend.ray:
        # a cluster machine may not see this cache: each task returns its pieces, stored here as they come
        run_jobs(tasks, run_task_detached, backend, on_event=progress, on_result=lambda t, files: cache.store(files),
                 initializer=init_worker, initargs=(backend.threads,))
    elif backend.workers <= 1:
        with torch_threads(backend.threads):
            run_jobs(tasks, run_task, backend, on_event=progress)
    else:
        # plan() lists the singles first: they are short, so early ETAs are not skewed by them
        run_jobs(tasks, run_task, backend, on_event=progress, initializer=init_worker, initargs=(backend.threads,))


def collect(manifest: Manifest, pairs: Sequence[Pair], variants: Sequence[str], cache: Cache,
            config: StudyConfig) -> tuple[dict, list[dict], list[dict]]:
    """(singles {expert: {domain: acc}}, pair info rows, fused rows) from the cache."""
    singles = {}
    for e in dict.fromkeys([x for p in pairs for x in (p.a, p.b)]):
        got = Cache.read(cache.single(e.name))
        if got is None:
            raise RuntimeError(f"single-expert result for {e.name!r} is missing from {cache.root}")
        singles[e.name] = got["accuracy"]
    infos, fused = [], []
    for p in pairs:
        infos.append({"pair": p.name, "a": p.a.name, "b": p.b.name, "kind": p.kind, "relatedness": p.relatedness,
                      "domains": p.domains, "domain_a": p.a.domain, "domain_b": p.b.domain,
                      "eval_domains": eval_domains(p, manifest, config.all_domains),
                      "compat": Cache.read(cache.compat(p.name)), "weights": Cache.read(cache.weights(p.name))})
        for v in variants:
            row = Cache.read(cache.fused(p.name, v))
            if row is None:
                raise RuntimeError(f"fusion result {v!r} on {p.name!r} is missing from {cache.root}")
            fused.append(row)
    return singles, infos, fused


def collect_items(pairs: Sequence[Pair], variants: Sequence[str], cache: Cache) -> dict:
    """Per-item correctness from the cache, in graft_ui.study.reliability's input form:
    {"singles": {expert: {domain: "0110..."}}, "fusions": [{"pair", "variant", "kind", "a", "b",
    "domain_a", "domain_b", "correct"}]}; pieces cached before items were recorded are left out."""
    singles = {}
    for e in dict.fromkeys([x for p in pairs for x in (p.a, p.b)]):
        got = Cache.read(cache.single(e.name)) or {}
        if got.get("correct"):
            singles[e.name] = got["correct"]
    fusions = []
    for p in pairs:
        if p.a.name not in singles or p.b.name not in singles:
            continue
        for v in variants:
            row = Cache.read(cache.fused(p.name, v)) or {}
            if row.get("correct"):
                fusions.append({"pair": p.name, "variant": v, "kind": p.kind, "a": p.a.name, "b": p.b.name,
                                "domain_a": p.a.domain, "domain_b": p.b.domain, "correct": row["correct"]})
    return {"singles": singles, "fusions": fusions}


def items_reliability(items: dict, seed: int = 0) -> dict:
    """{kind: {variant: split_half_reliability(...)}} over the fusions in `items` (collect_items)."""
    from graft_ui.study.reliability import split_half_reliability

    groups: dict[str, dict[str, list]] = {}
    for f in items["fusions"]:
        groups.setdefault(f["kind"], {}).setdefault(f["variant"], []).append(f)
    return {kind: {v: split_half_reliability(fs, items["singles"], seed=seed) for v, fs in by.items()}
            for kind, by in groups.items()}


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
        try:
            d.rmdir()
        except OSError:
            pass  # not empty


def run_study(src: str | Path | Manifest, out_dir: str | Path, *, kinds: Sequence[str] = ("lora", "full"),
              methods: Sequence[str] | None = None, pairs: Sequence[str] | None = None, ablations: bool = True,
              config: StudyConfig = StudyConfig(), workers: int = 1, threads: int = 1, resamples: int = 1000,
              keep_fused: bool = False, command: str | None = None, png: bool = True,
              progress: Callable[[str], None] | None = None, ray: str | None = None) -> dict:
    """Run (or resume) the study and write DIR/study.json, study.md and the figures; returns the study dict.
    `ray` (a cluster address or "auto") runs one Ray task per fusion + evaluation (fanout.py) instead of
    `workers` local processes; the cache is the same, so either kind of run resumes the other."""
    t0 = time.perf_counter()
    note = progress or (lambda msg: log.info("%s", msg))
    # a Ray task asks for GPUs only when the study runs on one (then 1 per task if the cluster has any)
    backend = Backend(workers=workers, threads=threads, ray=ray, gpus=0 if config.device == "cpu" else None)
    manifest, zoo, info = resolve_manifest(src)
    fp = fingerprint(info) if info else None
    chosen = enumerate_pairs(manifest, kinds, is_zoo=info is not None, only=pairs)
    variants = [v.label for v in default_variants(methods, ablations=ablations)]
    out = Path(out_dir)
    key = config.key(fp, str(manifest.source))
    cache = Cache(out / "cache" / key)
    # absolute: a Ray worker does not start in this folder
    common = {"manifest": str(Path(manifest.source).resolve()), "cache": str(cache.root),
              "work": str((out / "work").resolve()),
              "k": config.k, "seed": config.seed, "limit": config.limit, "device": config.device,
              "batch_size": config.batch_size, "keep_fused": keep_fused}
    tasks, cached = plan(manifest, chosen, variants, cache, config, common, split=bool(ray))
    n_fusions = sum(len(t.get("variants", [])) for t in tasks)
    n_other = sum(1 for t in tasks if t["type"] == "single") + sum(1 for t in tasks if t.get("compat"))
    note(f"study of {len(chosen)} pair(s) x {len(variants)} variant(s): {n_fusions} fusion(s) to run, "
         f"{cached} cached, {n_other} other step(s) on {backend.describe()}; cache {cache.root}")
    prog = _Progress(n_fusions, n_other, note)
    prog.stats.fusions_cached = cached
    try:
        _execute(tasks, backend, prog, cache)
    finally:
        release_models()  # the in-process base model is not needed once the work is done
    singles, infos, fused = collect(manifest, chosen, variants, cache, config)
    prog.stats.wall_seconds = time.perf_counter() - t0
    timing = [r for r in fused if "fuse_seconds" in r]
    prog.stats.fuse_seconds = [r["fuse_seconds"] for r in timing]
    prog.stats.eval_seconds = [r["eval_seconds"] for r in timing]
    study = predictors.assemble(singles, infos, fused, variants, resamples=resamples, seed=config.seed)
    items = collect_items(chosen, variants, cache)
    if items["fusions"]:  # per-item correctness: DIR/items.json, and the split-half reliability
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "items.json", items)
        study["reliability"] = items_reliability(items, seed=config.seed)
    study.update({
        "format": STUDY_FORMAT,
        "zoo": {"path": str(zoo) if zoo else None, "manifest": manifest.source, "fingerprint": fp,
                "build_info": {k: info.get(k) for k in ("format", "profile", "seed", "seconds", "built_at",
                                                         "versions", "host") if k in info} if info else None},
        "config": {**asdict(config), "kinds": list(kinds), "methods": list(methods or []), "pairs": list(pairs or []),
                   "ablations": ablations, "workers": workers, "threads": threads, "ray": ray, "resamples": resamples,
                   "cache_key": key},
        "variants": variants,
        "run": {**asdict(prog.stats), "command": command, **report.machine()},
    })
    report.write(study, out, png=png)
    _remove_empty_dirs(out / "work")  # kept fused models (--keep-fused) stay
    note(f"study written to {out} in {prog.stats.wall_seconds:.0f} s "
         f"({prog.stats.fusions_done} fusion(s) run, {prog.stats.fusions_cached} cached)")
    return study
