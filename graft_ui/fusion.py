"""One fusion from a recipe: prepare -> calibrate (when the recipe asks) -> run.

The merge engine (models/merge.py) only fuses; learning Graft's phi needs the analysis
layer (forward passes on target data), which sits above it. This module composes the two
for the callers that take recipes from users: Studio.fuse and the `merge` command.
`merge_summary` is the small JSON-able summary the app shows of a finished merge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from graft_ui.analysis.calibrate import calibrate_recipe
from graft_ui.merging.registry import get_method
from graft_ui.models.loading import resolve_device
from graft_ui.models.merge import MergeResult, Progress, check_out_dir, prepare, run_recipe
from graft_ui.recipe import Recipe


def fuse_recipe(
    recipe: Recipe,
    out_dir: str | Path | None,
    *,
    manifest=None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MergeResult:
    """`run_recipe`, after learning the method's per-module parameters (Graft's phi) on
    target samples when the recipe has a `calibrate` section: from `manifest`'s datasets, or
    a JSONL path in `calibrate.dataset`. The resolved recipe then carries the learned `phi`
    and no `calibrate`, so it reproduces the fusion without data; gates.json records the
    calibration. The output folder and the artifacts are checked before calibrating."""
    calibration = None
    if recipe.calibrate is not None and not dry_run and get_method(recipe.method).module_params:
        if out_dir is not None:
            check_out_dir(Path(out_dir), recipe, overwrite, dry_run)
        prepare(recipe).close()
        recipe, calibration = calibrate_recipe(recipe, manifest, progress=True, device=resolve_device(recipe.device))
    return run_recipe(recipe, out_dir, overwrite=overwrite, dry_run=dry_run, progress=progress, calibration=calibration)


def merge_summary(result: Any, seconds: float, device: str) -> dict:
    """A small JSON-able summary of a merge result (whatever shape run_recipe returns)."""
    d: dict[str, Any] = {}
    if callable(getattr(result, "summary", None)):
        d = dict(result.summary())
    elif dataclasses.is_dataclass(result):
        d = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, Mapping):
        d = dict(result)
    elif hasattr(result, "__dict__"):
        d = dict(vars(result))
    out = {
        "seconds": round(float(d.get("seconds") or seconds), 2),
        "device": str(d.get("device_label") or d.get("device") or device),
    }
    for key in ("modules_fused", "modules", "n_modules", "fused_modules"):
        if key in d:
            v = d[key]
            out["modules_fused"] = len(v) if isinstance(v, (list, tuple, dict, set)) else v
            break
    for key in ("copied", "modules_copied", "tensors_copied"):  # tensors (full) or modules (LoRA) kept from expert 1
        if key in d:
            v = d[key]
            out["modules_copied"] = len(v) if isinstance(v, (list, tuple, dict, set)) else v
            break
    for key in ("method", "experts_kind", "output_kind", "out_dir", "rank", "svd_error", "relative_error"):
        if key in d and d[key] is not None:
            out[key] = d[key] if isinstance(d[key], (int, float, str, bool)) else str(d[key])
    if d.get("notes"):
        out["notes"] = [str(n) for n in d["notes"]]
    return out
