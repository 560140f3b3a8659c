"""The app's startup warm-up: what the first Analyze, Fuse and Chat would otherwise wait for.

Measured cold (bench/bench_cold.py, ci zoo, 2 cores) the first analysis paid for importing
transformers and peft, loading the base, building the native statistics kernel, the
processor and encoding the target samples, and the first fusion for building Graft's LoRA
gate kernel. The kernels are built once per machine (cached on disk): scripts/setup.sh
builds them (`build_kernels`), so only a changed source is compiled at startup. `warm_up(studio)` does all of it once, in this order (what the user most
likely does first, first): the native kernels (graft_ui/native.py), the chat pool's base
with every LoRA expert's adapter (the analysis runs on that same loaded base, Studio.analyze),
the processor and the encoded samples of the first target dataset at the Analyze tab's
default K (Studio.analysis_cache), and plotly. `start_warm_up` runs it on a daemon thread:
app.py starts it before building the UI (the two overlap) and launches the server once it
is done, so "ready" means warm (launching first and warming behind a running server left
it too busy for gradio's own 3-second start-up check on a loaded 2-core machine). A failure
is logged and leaves that step to the first request.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

DEFAULT_K = 16  # the Analyze tab's default


def build_kernels() -> None:
    """Build (or find in the cache) and load every native kernel; scripts/setup.sh runs this."""
    from graft_ui import native

    for mod in ("graft_ui.analysis._native_stats", "graft_ui.kernels.lora_gates"):  # they register their libraries
        importlib.import_module(mod)
    native.warm(background=False)


def _steps(studio, k: int) -> list[tuple[str, Callable[[], None]]]:
    def kernels():
        build_kernels()

    def models():
        pool = studio.pool
        pool.load(pool.base_name)
        for e in studio.manifest.experts:
            if e.kind == "lora":
                pool.load(e.name)

    def data():
        from graft_ui.analysis.analyze import prepare_inputs

        studio.analysis_cache.set_processor(studio.manifest.base.path, studio.pool.processor)
        names = studio.dataset_names()
        if names:
            prepare_inputs(studio.manifest, names[0], k, cache=studio.analysis_cache)

    def plots():
        importlib.import_module("graft_ui.analysis.plots")  # plotly

    return [("native kernels", kernels), ("base and LoRA experts", models), ("processor and samples", data),
            ("plotting", plots)]


def warm_up(studio, k: int = DEFAULT_K) -> dict[str, float]:
    """Run every warm-up step now; {step: seconds} (a failed step is logged and skipped)."""
    times = {}
    for name, step in _steps(studio, k):
        t = time.perf_counter()
        try:
            step()
        except Exception as exc:  # the first request will do this step (and report its error)
            log.warning("warm-up step %r failed: %s", name, exc)
            continue
        times[name] = time.perf_counter() - t
        log.info("warm-up: %s in %.1f s", name, times[name])
    return times


def start_warm_up(studio, k: int = DEFAULT_K) -> threading.Thread:
    t = threading.Thread(target=warm_up, args=(studio, k), name="graft-warm-up", daemon=True)
    t.start()
    return t
