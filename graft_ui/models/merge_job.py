"""What every merge job shares: the run's context (device, generator, buffers, progress,
worker threads) and the write tail (fill a writer, close or abort it, copy the sidecar files).

The jobs themselves are models/merge_full.py (full fine-tunes) and models/merge_lora.py
(LoRA adapters); models/merge.py picks one and runs it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from graft_ui.merging.registry import Method
from graft_ui.merging.schedule import layer_t, resolve, resolve_params
from graft_ui.models.checkpoint import BufferPool, copy_sidecar_files
from graft_ui.models.keys import canonical_name, language_layer
from graft_ui.recipe import Recipe

Progress = Callable[[int, int, str], None]


class SingleThreaded:
    """n threads whose torch ops run single-threaded, for independent jobs (LoRA modules).

    Module-level parallelism: no synchronisation inside a module, and no OpenMP team whose
    barrier waits on a descheduled thread (on a busy 2-core machine that makes small ops
    10-100x slower). torch.set_num_threads(1) is per thread for OpenMP and MKL but also sets
    the default for threads created later, so the caller's value is put back once the
    workers are set up; each worker first initialises its own thread count, or the later
    lazy initialisation would undo the 1.
    """

    def __init__(self, n: int):
        self.n = int(n)
        main = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="graft-module")
        ready = threading.Barrier(self.n)

        def init():
            torch.get_num_threads()
            torch.set_num_threads(1)
            ready.wait()  # one init per thread: each holds its thread until all have run

        try:
            for f in [self._pool.submit(init) for _ in range(self.n)]:
                f.result()
        finally:
            torch.set_num_threads(main)

    def submit(self, fn, *args, **kw):
        return self._pool.submit(fn, *args, **kw)

    def close(self) -> None:
        self._pool.shutdown()


class MergeContext:
    """Per-run state shared by the jobs: device, generator, buffers, progress, parameters."""

    def __init__(self, recipe: Recipe, method: Method, device: torch.device, total: int, progress: Progress | None,
                 layers: int | None = None):
        self.recipe = recipe
        self.method = method
        # gradients run over the fused language layers: scope.layers, else all `layers`
        scope = recipe.scope.layers
        self.span = tuple(scope) if scope != "all" else (0, max(0, (layers or 1) - 1))
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(recipe.seed)
        self.pool = BufferPool()
        self.out_dtype = getattr(torch, recipe.output.dtype)
        # per-module overrides of the method's module_params (Graft's learned phi)
        self._module_params = {
            canonical_name(k): {n: float(v[n]) for n in method.module_params if n in v} for k, v in recipe.phi.items()
        }
        self.bar = tqdm(total=total, desc=f"merge ({recipe.method})", unit="tensor", dynamic_ncols=True)
        self.done = 0
        self.total = total
        self.callback = progress
        self._threads = None

    def t(self, name: str) -> float:
        """Gradient position of a tensor or module name (merging/schedule.py)."""
        return layer_t(language_layer(name), *self.span)

    def params(self, module: str, tensor: str | None = None) -> dict[str, Any]:
        """The recipe's parameters for one module (or one tensor of it: filters match `tensor`),
        gradients taken at its layer, per-expert settings as lists, then the module's phi."""
        rec = self.recipe
        if rec.varies:
            name = tensor or module
            own = self.method.defaults()
            values = resolve_params(rec.params, own, name, self.t(name), [e.params for e in rec.experts],
                                    self.method.expert_params)
        else:
            values = dict(rec.params)
            for p in self.method.expert_params:
                if any(p in e.params for e in rec.experts):
                    values[p] = [e.params.get(p, values[p]) for e in rec.experts]
        return dict(values, **self._module_params.get(module, {}))

    def weights(self, name: str) -> list[float]:
        """Each expert's weight for a tensor or module (its per-expert `weight` setting, else `weight`)."""
        out = []
        for e in self.recipe.experts:
            w = resolve(e.params["weight"], name, self.t(name)) if "weight" in e.params else None
            out.append(float(e.weight if w is None else w))
        return out

    @property
    def module_threads(self) -> SingleThreaded | None:
        """SingleThreaded workers for independent CPU module jobs, one per intra-op thread
        torch would use; None where that is 1 or the device is not the CPU."""
        if self._threads is None and self.device.type == "cpu" and torch.get_num_threads() > 1:
            self._threads = SingleThreaded(torch.get_num_threads())
        return self._threads

    def thread_scratch(self, role: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`scratch` private to the calling thread (module jobs run concurrently)."""
        return self.scratch(f"{role}@{threading.get_ident()}", (numel,), dtype)

    def step(self, n: int = 1, desc: str = "") -> None:
        self.done += n
        self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total, desc)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.device.type == "cpu" else t.to(self.device)

    def scratch(self, role: str, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reusable work buffer on the merge device (CPU: from the pool; CUDA: the caching allocator)."""
        if self.device.type == "cpu":
            return self.pool.typed(role, shape, dtype)
        return torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def close(self) -> None:
        self.bar.close()
        self.pool.clear()
        if self._threads is not None:
            self._threads.close()


def write_through(writer, fill: Callable[[], None], sidecars_from: Path, tmp: Path,
                  on_abort: Callable[[], None] | None = None) -> list[str]:
    """Run `fill` (which writes every tensor), close the writer and copy the sidecar files
    (config, tokenizer, ...) of `sidecars_from`; on any error abort the writer (and run
    `on_abort` first) so no half-written shard stays behind. Returns the files written."""
    try:
        fill()
        files = writer.close()
    except BaseException:
        if on_abort is not None:
            on_abort()
        writer.abort()
        raise
    return files + copy_sidecar_files(sidecars_from, tmp)
