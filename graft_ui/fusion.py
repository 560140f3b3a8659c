"""One fusion from a recipe: prepare -> calibrate (when the recipe asks) -> run.

The merge engine (models/merge.py) only fuses; learning Graft's phi needs the analysis
layer (forward passes on target data), which sits above it. This module composes the two
for the callers that take recipes from users: Studio.fuse and the `merge` command.
"""

from __future__ import annotations

from pathlib import Path

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
