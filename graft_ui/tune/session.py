"""Tuning inside the app's Studio: the search, then held-out scoring, then the best trial as a named variant.

    for event in tune_in_studio(studio, recipe, config, stop):
        event["phase"]   "trial" (after each trial), "heldout" (scoring starts), "done"
        event["tuner"]   the Tuner (its results, experts_dev, splits for the live plot)
        event["result"], event["variant"]   on "done": the result dict and the FusedVariant of the best trial

The variant is fused from the best trial's recipe (the defaults when no trial beat them on dev),
named `tuned-<method>-N` (Studio.next_variant_name), with the run's report (tune.json, tune.md, ...) in its folder under tune/.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from graft_ui.recipe import Recipe
from graft_ui.tune import report
from graft_ui.tune.tuner import TuneConfig, Tuner


def expert_domains(manifest, recipe: Recipe) -> list[str]:
    """The domains of the recipe's experts that the manifest has datasets for, in expert order."""
    return manifest.domains_of(manifest.find(ref) for ref in recipe.experts)


def tune_in_studio(studio, recipe: Recipe, config: TuneConfig, stop: threading.Event | None = None) -> Iterator[dict]:
    work = studio.work_dir / "tune" / time.strftime("%Y%m%d-%H%M%S")
    tuner = Tuner(recipe, studio.manifest, config, work, stop=stop or threading.Event())
    try:
        for trial in tuner.run():
            yield {"phase": "trial", "tuner": tuner, "trial": trial}
        yield {"phase": "heldout", "tuner": tuner}
        result = tuner.finish()
        best = tuner.best()
        variant = None
        if best is not None:
            # a name free in the app and on disk (an earlier session's tuned variant keeps its folder)
            variant = studio.fuse(tuner.recipe_of(best), studio.next_variant_name(f"tuned-{recipe.method}"))
            report.write(result, variant.out_dir / "tune")
        yield {"phase": "done", "tuner": tuner, "result": result, "variant": variant}
    finally:
        studio.release_memory()
