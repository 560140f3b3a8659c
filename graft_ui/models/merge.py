"""Apply a recipe's method to real artifacts: the `merge` engine.

`run_recipe(recipe, out_dir)` picks the job for the experts (models/merge_full.py for full
fine-tunes, models/merge_lora.py for LoRA adapters), runs it in a temporary folder beside
`out_dir` and publishes it atomically, with:

- the fused model (sharded safetensors + index + the first expert's config, tokenizer and
  processor files) or the fused peft adapter;
- `recipe.yaml`: the resolved recipe (device used, base, output kind and rank);
- `gates.json`: `{"method", "device", "seconds", "kind", "experts", "modules": {name: stats}}`
  with per-module gate statistics for Graft and the method's stats (kept fractions ...)
  for the others. Module names are canonical (keys.py).

The engine knows methods only through their registry entries (`Method.needs_base`,
`.linear`, `.kernels`, `.module_params`). It does not calibrate: a recipe with a
`calibrate` section goes through graft_ui.fusion.fuse_recipe (prepare -> calibrate -> run).
Every input tensor that is touched is checked for NaN/inf, including copied ones.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from graft_ui.atomic import publish_folder, recover_folder, temp_folder
from graft_ui.merging.registry import get_method
from graft_ui.models.loading import device_label, is_adapter, local_folder, resolve_device
from graft_ui.models.lora_io import ADAPTER_WEIGHTS
from graft_ui.models.merge_full import FullJob
from graft_ui.models.merge_job import MergeContext, Progress
from graft_ui.models.merge_lora import LOWRANK_OVERSAMPLE, LoraJob
from graft_ui.models.scope import describe_scope
from graft_ui.recipe import Output, Recipe

log = logging.getLogger(__name__)


@dataclass
class MergeResult:
    """What a merge did (or, for a dry run, would do)."""

    method: str
    experts_kind: str  # full | lora
    output_kind: str  # full | adapter
    device: str  # e.g. "cpu", "cuda:0"
    device_label: str
    fused: list[str]  # canonical names of the modules fused
    copied: list[str]  # tensors (full) or modules (lora) taken unchanged from the first expert
    notes: list[str] = field(default_factory=list)
    modules: dict[str, dict] = field(default_factory=dict)  # per fused module stats (gates.json)
    seconds: float = 0.0
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)
    recipe: Recipe | None = None  # the resolved recipe written to recipe.yaml
    dry_run: bool = False
    calibration: dict | None = None  # phi calibration record (losses, samples) when the recipe asked for it

    def summary(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "dry_run": self.dry_run,
            "method": self.method,
            "experts_kind": self.experts_kind,
            "output_kind": self.output_kind,
            "device": self.device,
            "device_label": self.device_label,
            "seconds": round(self.seconds, 3),
            "modules_fused": len(self.fused),
            "copied": len(self.copied),
            "notes": self.notes,
        }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist()) if x.numel() > 1 else float(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def check_out_dir(out: Path, recipe: Recipe, overwrite: bool, dry_run: bool) -> None:
    """Refuse an output folder that is one of the recipe's inputs (or inside one), or that
    exists without `overwrite`."""
    inputs: Sequence[Path] = [Path(e.path) for e in recipe.experts if Path(e.path).exists()] + (
        [Path(recipe.base)] if recipe.base and Path(recipe.base).exists() else [])
    real = out.resolve()
    for p in inputs:
        rp = p.resolve()
        if real == rp or real in rp.parents:
            raise ValueError(f"output folder {str(out)!r} would overwrite the input {str(p)!r}")
    if out.exists() and not dry_run:
        if not overwrite:
            raise FileExistsError(f"output folder {str(out)!r} already exists; pass --overwrite (overwrite=True) to replace it")
        if not out.is_dir():
            raise FileExistsError(f"output path {str(out)!r} exists and is not a folder")


def prepare(recipe: Recipe) -> FullJob | LoraJob:
    """Validate a recipe against its artifacts (headers only) and return the merge job
    (close it when done)."""
    method = get_method(recipe.method)
    folders = [local_folder(e.path) for e in recipe.experts]
    kinds = ["lora" if is_adapter(f) else "full" for f in folders]
    if len(set(kinds)) > 1:
        raise ValueError(
            "experts mix LoRA adapters and full checkpoints: "
            + ", ".join(f"{e.path!r}={k}" for e, k in zip(recipe.experts, kinds))
        )
    if kinds[0] == "lora":
        return LoraJob(recipe, method, folders)
    if recipe.output.kind == "adapter" and recipe.output.rank is not None:
        raise ValueError("output.rank is set but the experts are full checkpoints; the output is a full checkpoint")
    return FullJob(recipe, method, folders)


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path | None,
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    calibration: dict | None = None,
) -> MergeResult:
    """Fuse the recipe's experts into `out_dir` (atomically); a dry run only plans.

    `calibration`: the record of a phi calibration that produced `recipe.phi`, written to
    gates.json (graft_ui.fusion.fuse_recipe passes it). A recipe that still has a
    `calibrate` section for a method with per-module parameters is refused: calibrate first.

    Raises ValueError / FileNotFoundError / FileExistsError naming the problem, leaving
    nothing at `out_dir` (the work happens in `<out_dir>.tmp-<pid>`, renamed at the end; see
    graft_ui.atomic for what a crash leaves and how the next run cleans it).
    """
    t0 = time.perf_counter()
    if out_dir is None and not dry_run:
        raise ValueError("out_dir is required unless dry_run=True")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and not dry_run:
        # a merge killed earlier (kill -9, power loss) left temp folders, or an old output moved aside
        recover_folder(out)
    if out is not None:
        check_out_dir(out, recipe, overwrite, dry_run)
    if recipe.calibrate is not None and not dry_run and get_method(recipe.method).module_params:
        raise ValueError(
            f"recipe for {recipe.method!r} has a calibrate section ({recipe.calibrate}); run it through "
            "graft_ui.fusion.fuse_recipe (prepare -> calibrate -> run) or drop calibrate"
        )
    device = resolve_device(recipe.device)
    label = device_label(device)
    job = prepare(recipe)
    try:
        resolved = recipe.replace(
            device=str(device),
            base=getattr(job, "base_ref", recipe.base),
            output=Output(kind=job.output_kind, rank=recipe.output.rank if job.output_kind == "adapter" else None,
                          dtype=recipe.output.dtype),
        )
        result = MergeResult(
            method=recipe.method, experts_kind=job.experts_kind, output_kind=job.output_kind, device=str(device),
            device_label=label, fused=list(job.fused), copied=list(job.copied), notes=list(job.notes),
            recipe=resolved, dry_run=dry_run, out_dir=out, calibration=calibration,
        )
        if dry_run:
            result.modules = {row["module"]: row for row in job.plan()}
            result.seconds = time.perf_counter() - t0
            log.info("dry run: %d module(s) would be fused, %d taken from the first expert", len(job.fused), len(job.copied))
            return result
        log.info("merging %d %s expert(s) with %s on %s; %d module(s) in scope (%s)", len(recipe.experts),
                 job.experts_kind, recipe.method, label, len(job.fused), describe_scope(recipe.scope))
        for note in job.notes:
            log.info("note: %s", note)
        tmp = temp_folder(out)
        ctx = MergeContext(recipe, job.method, device, job.total, progress, layers=job.layer_count)
        try:
            stats, files = job.execute(tmp, ctx)
            result.seconds = time.perf_counter() - t0
            result.modules = _jsonable(stats)
            result.files = sorted(set(files) | _write_records(tmp, result, job.notes))
            publish_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            ctx.close()
        log.info("wrote %s in %.1f s on %s", out, result.seconds, label)
        return result
    finally:
        job.close()


def _write_records(tmp: Path, result: MergeResult, notes: list[str]) -> set[str]:
    """recipe.yaml (the resolved recipe) and gates.json (what the merge did) beside the weights."""
    (tmp / "recipe.yaml").write_text(result.recipe.to_yaml())
    gates = {
        "method": result.method,
        "device": result.device,
        "device_label": result.device_label,
        "seconds": round(result.seconds, 3),
        "experts_kind": result.experts_kind,
        "output_kind": result.output_kind,
        "experts": [e.path for e in result.recipe.experts],
        "notes": notes,
        "modules": result.modules,
    }
    if result.calibration is not None:
        gates["calibration"] = result.calibration
    (tmp / "gates.json").write_text(json.dumps(gates, indent=1, allow_nan=False) + "\n")
    return {"recipe.yaml", "gates.json"}


__all__ = ["MergeResult", "run_recipe", "prepare", "check_out_dir", "local_folder", "ADAPTER_WEIGHTS",
           "LOWRANK_OVERSAMPLE"]
