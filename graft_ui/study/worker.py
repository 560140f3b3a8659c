"""One unit of study work, run in the main process or in a worker process.

A task is a JSON-able dict (so it crosses a process boundary):

    {"type": "single", "expert": NAME, "domains": [...], ...common}
    {"type": "pair", "a": NAME, "b": NAME, "variants": [label, ...], "compat": bool, "weights": bool, ...common}
    common: manifest, cache, work, k, seed, limit, device, batch_size

Each finished piece is written to the cache at once (atomically), so an interrupted study
loses at most the fusion in flight. LoRA work reuses one loaded base per process: experts
and fused adapters are attached to it in turn and detached after use, rather than
reloading the base for every model.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from graft_ui.analysis import scores as S
from graft_ui.analysis.analyze import analyze_experts
from graft_ui.models import merge
from graft_ui.models.loading import attach_adapter, load_model, load_processor
from graft_ui.models.manifest import load_manifest
from graft_ui.recipe import ExpertRef, Output, Recipe
from graft_ui.study.pairs import parse_variant
from graft_ui.study.weights import task_vector_similarity
from graft_ui.zoo.evaluate import evaluate_model

log = logging.getLogger(__name__)

Report = Callable[[dict], None]


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader (or a resumed run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)


def safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in label)


class Cache:
    """Finished pieces of one study configuration: singles/, compat/, weights/, fused/<pair>/."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def single(self, expert: str) -> Path:
        return self.root / "singles" / f"{safe_name(expert)}.json"

    def compat(self, pair: str) -> Path:
        return self.root / "compat" / f"{safe_name(pair)}.json"

    def weights(self, pair: str) -> Path:
        return self.root / "weights" / f"{safe_name(pair)}.json"

    def fused(self, pair: str, variant: str) -> Path:
        return self.root / "fused" / safe_name(pair) / f"{safe_name(variant)}.json"

    def store(self, files: dict[str, Any]) -> None:
        """Write pieces a detached task returned (run_task_detached), each atomically."""
        for rel, data in files.items():
            path = (self.root / rel).resolve()
            if self.root.resolve() not in path.parents:
                raise ValueError(f"cache piece {rel!r} lies outside the cache {self.root}")
            write_json(path, data)

    @staticmethod
    def read(path: Path) -> Any | None:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # absent, or left unreadable by a crash: redo it


class ModelSet:
    """Per-process model holder: one base (wrapped by peft once an adapter is attached)."""

    def __init__(self, manifest, device: str):
        self.manifest = manifest
        self.device = device
        self.processor = load_processor(manifest.base.path)
        self._lora = None
        self._n = 0

    def with_adapter(self, path: str):
        """The shared base with adapter `path` active (the previous one is detached)."""
        if self._lora is None:
            self._lora = load_model(self.manifest.base, device=self.device)
        previous = list(getattr(self._lora, "peft_config", {}) or [])
        self._n += 1
        name = f"study{self._n}"
        self._lora = attach_adapter(self._lora, path, name)
        self._lora.set_adapter(name)
        for old in previous:
            self._lora.delete_adapter(old)
        return self._lora

    def full(self, path: str):
        return load_model(path, device=self.device)

    def model(self, path: str, kind: str):
        return self.with_adapter(path) if kind == "lora" else self.full(path)


_MODELS: dict[tuple[str, str], ModelSet] = {}  # per process: reused across tasks


def models_for(manifest, device: str) -> ModelSet:
    key = (str(manifest.source), device)
    if key not in _MODELS:
        _MODELS.clear()  # one manifest at a time: drop another's base
        _MODELS[key] = ModelSet(manifest, device)
    return _MODELS[key]


def release_models() -> None:
    """Drop this process's loaded models (the study is done with them)."""
    _MODELS.clear()
    gc.collect()


def _evaluate(models: ModelSet, model, domains: list[str], limit: int | None,
              batch_size: int) -> tuple[dict[str, float], dict[str, str]]:
    """({domain: accuracy}, {domain: per-item correctness as a "0110..." string, eval split order});
    the items let graft_ui.study.reliability split each domain in halves."""
    datasets = {d: models.manifest.dataset(d).eval for d in domains}
    res = evaluate_model(model, models.processor, datasets, limit=limit, batch_size=batch_size, keep_outputs=True)
    return ({d: float(v["accuracy"]) for d, v in res["domains"].items()},
            {d: "".join("1" if o["ok"] else "0" for o in v["outputs"]) for d, v in res["domains"].items()})


def pair_recipe(manifest, a, b, variant, seed: int, device: str):
    """The recipe fusing experts a + b with `variant` (a method label, e.g. "graft" or "ties[density=0.3]")."""
    v = parse_variant(variant)
    return Recipe(method=v.method, params=dict(v.params), base=manifest.base.path,
                  experts=(ExpertRef(path=a.path, name=a.name), ExpertRef(path=b.path, name=b.name)),
                  output=Output(kind="adapter" if a.kind == "lora" else "full"), seed=seed, device=device,
                  name=f"{variant}:{a.name}+{b.name}")


def run_single(task: dict, report: Report) -> None:
    manifest = load_manifest(task["manifest"])
    models = models_for(manifest, task["device"])
    e = manifest.expert(task["expert"])
    t = time.perf_counter()
    model = models.model(e.path, e.kind)
    acc, correct = _evaluate(models, model, task["domains"], task["limit"], task["batch_size"])
    if e.kind == "full":
        del model
    write_json(Cache(task["cache"]).single(e.name), {"expert": e.name, "accuracy": acc, "correct": correct,
                                                     "seconds": round(time.perf_counter() - t, 3)})
    report({"event": "single", "expert": e.name, "seconds": time.perf_counter() - t})


def run_pair(task: dict, report: Report) -> None:
    manifest = load_manifest(task["manifest"])
    cache = Cache(task["cache"])
    a, b = manifest.expert(task["a"]), manifest.expert(task["b"])
    pair = f"{a.name}+{b.name}"
    target = "+".join(dict.fromkeys([a.domain, b.domain]))
    if task["weights"]:
        t = time.perf_counter()
        write_json(cache.weights(pair), {**task_vector_similarity(manifest, a, b),
                                         "seconds": round(time.perf_counter() - t, 3)})
    if task["compat"]:
        t = time.perf_counter()
        res = analyze_experts(manifest, [a.name, b.name], target, k=task["k"], seed=task["seed"], device=task["device"])
        ea, eb = res.experts[a.name], res.experts[b.name]
        write_json(cache.compat(pair), {
            "target": target, "k": res.k, "compat_a": ea.compatibility, "compat_b": eb.compatibility,
            "score": S.pair_score(ea.stats, eb.stats), "score_mean": S.pair_score_mean(ea.stats, eb.stats),
            "seconds": round(time.perf_counter() - t, 3)})
        report({"event": "compat", "pair": pair, "seconds": time.perf_counter() - t})
        gc.collect()
    if not task["variants"]:
        return
    models = models_for(manifest, task["device"])
    for variant in task["variants"]:
        out = Path(task["work"]) / safe_name(pair) / safe_name(variant)
        t0 = time.perf_counter()
        try:
            merge.run_recipe(pair_recipe(manifest, a, b, variant, task["seed"], task["device"]), out, overwrite=True)
            t1 = time.perf_counter()
            model = models.model(str(out), a.kind)
            acc, correct = _evaluate(models, model, task["domains"], task["limit"], task["batch_size"])
            del model
            t2 = time.perf_counter()
            entry = {"pair": pair, "variant": variant, "accuracy": acc, "correct": correct,
                     "fuse_seconds": round(t1 - t0, 3), "eval_seconds": round(t2 - t1, 3)}
        except (ValueError, RuntimeError, OSError) as exc:  # one failing method must not sink the study
            log.error("%s on %s failed: %s", variant, pair, exc)
            entry = {"pair": pair, "variant": variant, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if not task.get("keep_fused"):
                shutil.rmtree(out, ignore_errors=True)
        write_json(cache.fused(pair, variant), entry)
        report({"event": "fused", "pair": pair, "variant": variant, "seconds": time.perf_counter() - t0,
                "error": entry.get("error")})
        gc.collect()


def run_task(task: dict, report: Report) -> None:
    (run_single if task["type"] == "single" else run_pair)(task, report)


# ---------------------------------------------------------------- worker processes


def init_worker(threads: int) -> None:
    torch.set_num_threads(max(1, threads))  # workers split the cores instead of fighting over them
    logging.basicConfig(level=logging.WARNING)


def run_task_detached(task: dict, report: Report) -> dict[str, Any]:
    """Run `task` on a machine that may not see the caller's cache: into a private temporary cache,
    returned as {path relative to the cache root: JSON data} for the caller to store (Cache.store)."""
    with tempfile.TemporaryDirectory(prefix="graft-study-") as tmp:
        work = task["work"] if task.get("keep_fused") else str(Path(tmp) / "work")
        run_task({**task, "cache": str(Path(tmp) / "cache"), "work": work}, report)
        root = Path(tmp) / "cache"
        return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}
