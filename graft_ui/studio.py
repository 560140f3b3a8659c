"""The app's state as a library (no gradio): models, fused variants, device, chat pool.

A `Studio` holds the active manifest (base + experts + target datasets), one chat
`ModelPool` over that base, and the fused variants of that base, each with its recipe and
output folder: those made now and those earlier sessions left under `<work_dir>/fused`
(graft_ui/variants.py restores them, so a reload or a restart keeps them). The UI's callbacks are thin wrappers around these methods;
scripts and tests can drive the same flow without a browser:

    studio = Studio.from_manifest(zoo_dir / "manifest.yaml")
    result = studio.analyze("math", ["math-lora", "code-lora"], k=16)
    variant = studio.fuse(studio.build_recipe("graft", ["math-lora", "code-lora"]), "graft-1")
    studio.export_zip("graft-1")
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from graft_ui.analysis.analyze import analyze_experts
from graft_ui.analysis.cache import AnalysisCache
from graft_ui.analysis.data import import_dataset
from graft_ui.analysis.scores import DEFAULT_THRESHOLD
from graft_ui.analysis.stats import DEFAULT_EPS
from graft_ui.chat.pool import APP_OVERRIDE, ModelPool
from graft_ui.chat.serving import publish_adapter
from graft_ui.checks import number
from graft_ui.fusion import fuse_recipe, merge_summary
from graft_ui.mergekit_config import parse_any
from graft_ui.models.loading import adapter_config, check_reference, device_label, is_adapter, resolve_device
from graft_ui.models.manifest import Manifest, ModelEntry, load_manifest, looks_like_hub_id
from graft_ui.models.roots import AllowedRoots
from graft_ui.models.validate import folder_bytes, human_bytes, manifest_rows, num_layers, validate_entry
from graft_ui.recipe import ALL_MODULES, Recipe
from graft_ui.variants import FusedVariant, check_variant_name, next_free_name, restore_variants, write_record

log = logging.getLogger(__name__)

def default_work_dir() -> Path:
    """`$GRAFT_STUDIO_DIR`, else `./runs/studio` (gitignored)."""
    return Path(os.environ.get("GRAFT_STUDIO_DIR") or Path.cwd() / "runs" / "studio")


class Studio:
    """See the module docstring. Thread-safe for the UI: state changes hold `self.lock`."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        device: str = "auto",
        work_dir: str | Path | None = None,
        votes: str | None = None,
        max_full: int = 2,
        roots: AllowedRoots | None = None,
        check: bool = True,
    ):
        self.device = resolve_device(device)
        self.device_label = device_label(self.device)
        self.work_dir = Path(work_dir) if work_dir else default_work_dir()
        self.votes = votes  # vote store target (SQLite path or DB URL); None = the arena's default
        self.max_full = max_full
        self.roots = roots  # where user-given server paths may point; None = anywhere (library, CLI)
        self.lock = threading.RLock()
        self.variants: dict[str, FusedVariant] = {}
        self.base_mismatch_allowed: set[str] = set()  # experts added with "allow a different base"
        self.version = 0  # bumped whenever models or variants change (the UI refreshes its choices)
        self._manifest: Manifest | None = None
        self.pool: ModelPool | None = None
        self.analysis_cache = AnalysisCache()  # processor, encoded inputs, finished statistics
        self.set_manifest(manifest, check=check)

    @classmethod
    def from_manifest(cls, path: str | Path, **kwargs) -> "Studio":
        return cls(load_manifest(path), **kwargs)

    # ---- models ----------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def set_manifest(self, manifest: Manifest, *, check: bool = True) -> None:
        """Switch to another base/experts set. Fused variants of the old base are dropped from chat.
        `check=False` accepts a base that is not there yet (the demo zoo while it is built)."""
        if check:
            validate_entry(manifest.base)
        with self.lock:
            if self.pool is not None:
                self.pool.close()
            self._manifest = manifest
            self.analysis_cache.clear()
            self.pool = ModelPool(manifest.base.path, device=self.device, max_full=self.max_full,
                                  base_name=manifest.base.name, base_remote=manifest.remote_of(manifest.base))
            for e in manifest.experts:
                self.pool.register(e.name, e.path, e.kind, role="expert", remote=manifest.remote_of(e))
            if self.variants:
                log.info("manifest changed: %d fused variant(s) of the previous base are no longer chat-able",
                         len(self.variants))
            self.variants.clear()
            self.base_mismatch_allowed.clear()
            self._restore_variants()
            self.version += 1
            self.release_memory()

    def allowed(self, ref: str | Path) -> str:
        """`ref` (a path or hub id a user gave) when `self.roots` allow it; else one generic refusal."""
        return self.roots.check(ref) if self.roots is not None else str(ref)

    def _restore_variants(self) -> None:
        """Variants made on this base by earlier sessions (their folders under `<work_dir>/fused`)."""
        taken = set(self.pool.names())
        for v in restore_variants(self.work_dir / "fused", self.manifest.base.path, taken):
            self.variants[v.name] = v
            self.pool.register(v.name, str(v.out_dir), v.kind, role="fused")
        if self.variants:
            log.info("restored %d fused variant(s) from %s", len(self.variants), self.work_dir / "fused")

    def next_variant_name(self, method: str) -> str:
        """A default name for the next fusion with `method`: free in the app and on disk."""
        with self.lock:
            return next_free_name(method, set(self.variants) | set(self.pool.names()), self.work_dir / "fused")

    def load_manifest(self, path: str | Path) -> Manifest:
        manifest = load_manifest(self.allowed(path))
        if self.roots is not None:
            self.roots.check_manifest(manifest)
        self.set_manifest(manifest)
        return manifest

    def set_base(self, ref: str, name: str | None = None) -> Manifest:
        """Start a new model set on base `ref` (a folder or hub id), with no experts yet."""
        ref = (ref or "").strip()
        if not ref:
            raise ValueError("give the base model as a local folder or a hub id (owner/name)")
        self.allowed(ref)
        name = check_variant_name(name or Path(ref).name or "base")
        base = ModelEntry(name=name, path=ref, kind="full")
        validate_entry(base)
        self.set_manifest(Manifest(base=base, experts=(), datasets={}, name="custom"))
        return self.manifest

    def add_expert(self, ref: str, name: str | None = None, domain: str | None = None, kind: str = "auto", *,
                   allow_base_mismatch: bool = False) -> ModelEntry:
        """Add an expert (LoRA adapter folder or full fine-tune; folder or hub id) to the current set.
        An adapter that records another base than the manifest's is refused unless `allow_base_mismatch`
        (the user's explicit override; it then loads with a warning wherever the app loads it)."""
        ref = (ref or "").strip()
        if not ref:
            raise ValueError("give the expert as a local folder or a hub id (owner/name)")
        check_reference(self.allowed(ref))
        if kind == "auto":
            kind = "lora" if is_adapter(ref) or (looks_like_hub_id(ref) and not Path(ref).exists() and _hub_is_adapter(ref)) else "full"
        name = check_variant_name(name or Path(ref).name)
        with self.lock:
            if name in self.pool.names() or name in self.variants:
                raise ValueError(f"a model named {name!r} is already loaded; choose another name")
            entry = ModelEntry(name=name, path=ref, kind=kind, domain=(domain or None))
            validate_entry(entry, self.manifest.base, allow_base_mismatch=allow_base_mismatch, override=APP_OVERRIDE)
            self._manifest = dataclasses.replace(self.manifest, experts=self.manifest.experts + (entry,))
            self.pool.register(entry.name, entry.path, entry.kind, role="expert",
                               allow_base_mismatch=allow_base_mismatch)
            if allow_base_mismatch:
                self.base_mismatch_allowed.add(entry.name)
            self.version += 1
        return entry

    def remove_expert(self, name: str) -> None:
        with self.lock:
            self.manifest.expert(name)
            self._manifest = dataclasses.replace(self.manifest, experts=tuple(e for e in self.manifest.experts if e.name != name))
            self.pool.unregister(name)
            self.base_mismatch_allowed.discard(name)
            self.version += 1

    def model_rows(self) -> list[dict]:
        """One row per model: name, role, domain, kind, rank, size, base it belongs to, status."""
        m = self.manifest
        rows = manifest_rows(m, override=APP_OVERRIDE, mismatch_allowed=self.base_mismatch_allowed)
        for v in self.variants.values():
            rank = "—"
            if v.kind == "lora":
                try:
                    rank = adapter_config(v.out_dir).get("r", "?")
                except ValueError:
                    rank = "?"
            rows.append({
                "name": v.name, "role": "fused", "domain": "+".join(sorted({self._domain_of(x) for x in v.recipe.experts})),
                "kind": v.kind, "rank": rank, "size": human_bytes(folder_bytes(v.out_dir)), "base": m.base.name,
                "path": str(v.out_dir), "status": "ready",
            })
        return rows

    def _domain_of(self, ref) -> str:
        for e in self.manifest.experts:
            if e.path == ref.path or e.name == ref.name:
                return e.domain or e.name
        return ref.name or Path(ref.path).name

    def expert_names(self, kind: str | None = None) -> list[str]:
        """Experts with local weights (what analysis and fusion read); remote-only entries are chat columns."""
        return [e.name for e in self.manifest.local_experts(kind)]

    def chat_names(self) -> list[str]:
        """Everything one can chat with: base, experts, fused variants."""
        return self.pool.names()

    def num_layers(self) -> int:
        """Language-model layers of the base (for the layer-range controls); 28 if unknown (Qwen2-VL-2B)."""
        try:
            return num_layers(self.manifest.base.path)
        except ValueError:
            return 28

    def dataset_names(self) -> list[str]:
        return sorted(self.manifest.datasets)

    # ---- analysis --------------------------------------------------------------------

    def analyze(
        self,
        dataset: str,
        experts: Sequence[str] | None = None,
        *,
        k: int = 16,
        eps: float | None = None,
        threshold: float | None = None,
        progress: bool | Callable[[int, int], None] | None = True,
    ):
        """Activation statistics and compatibility of `experts` on `dataset` (domain name or JSONL path).
        `experts=None` analyses every expert; an empty list is refused."""
        k = number("K", k, integer=True, low=1, high=512)
        if eps is not None and not number("eps", eps) > 0:
            raise ValueError(f"eps={eps!r} must be positive")
        if threshold is not None:
            threshold = number("threshold", threshold)
        if not dataset:
            raise ValueError("choose a target dataset (a domain or an uploaded JSONL file)")
        experts = self.expert_names() if experts is None else list(experts)
        if not experts:
            raise ValueError("choose at least one expert to analyse (none is selected)")
        with self.lock:
            manifest = self.manifest
        self.allowed_dataset(dataset, manifest)
        pool = self.pool
        dtype = pool.dtype
        # the chat pool's loaded base (with each LoRA expert's adapter) when it holds these experts
        shared = pool.spec(pool.base_name).remote is None and all(
            e in pool.names() and pool.spec(e).remote is None and pool.spec(e).path == manifest.expert(e).path
            for e in experts)
        try:
            return analyze_experts(
                manifest, experts, dataset, k=int(k), eps=float(eps if eps is not None else DEFAULT_EPS),
                threshold=float(threshold if threshold is not None else DEFAULT_THRESHOLD),
                device=str(self.device), dtype=dtype, progress=progress, cache=self.analysis_cache,
                use=(lambda e: pool.use(e.name)) if shared else None,
                allow_base_mismatch=set(self.base_mismatch_allowed),
            )
        finally:
            self.release_memory()

    def import_dataset(self, files: Sequence[str | Path]) -> Path:
        """Copy an uploaded JSONL and its images into `<work_dir>/uploads/<id>/` (analysis.data.import_dataset)."""
        return import_dataset(files, self.work_dir / "uploads")

    # ---- fusion ----------------------------------------------------------------------

    def build_recipe(
        self,
        method: str,
        experts: Sequence[str],
        params: Mapping[str, Any] | None = None,
        *,
        modules: Sequence[str] = ALL_MODULES,
        layers: str | tuple[int, int] = "all",
        vision: bool = False,
        output_kind: str | None = None,
        rank: int | None = None,
        calibrate: Mapping[str, Any] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> Recipe:
        """A recipe over the named experts of the current manifest, in the given order."""
        if not experts:
            raise ValueError("choose the experts to fuse (in fusion order)")
        entries = [self.manifest.expert(n) for n in experts]
        kinds = {e.kind for e in entries}
        if len(kinds) > 1:
            listed = ", ".join(f"{e.name} ({'LoRA' if e.kind == 'lora' else 'full'})" for e in entries)
            raise ValueError(f"LoRA adapters and full fine-tunes cannot be fused together: {listed}. "
                             "Choose experts of one kind.")
        if output_kind is None:
            output_kind = "adapter" if kinds == {"lora"} else "full"
        data: dict[str, Any] = {
            "method": method,
            "base": self.manifest.base.path,
            "experts": [{"path": e.path, "name": e.name} for e in entries],
            "params": dict(params or {}),
            "scope": {"modules": list(modules), "layers": layers if layers == "all" else list(layers), "vision": bool(vision)},
            "output": {"kind": output_kind, "rank": rank,
                       "dtype": "bfloat16" if self.device.type == "cuda" and output_kind == "full" else "float32"},
            "seed": int(seed),
            "device": "cuda" if self.device.type == "cuda" else "cpu",
        }
        if calibrate:
            data["calibrate"] = dict(calibrate)
        if name:
            data["name"] = name
        return Recipe.from_dict(data)

    def parse_recipe(self, text: str) -> Recipe:
        """A pasted recipe or mergekit config (YAML). Relative paths and expert names resolve against the current manifest."""
        if not (text or "").strip():
            raise ValueError("the recipe is empty: paste a recipe YAML")
        recipe = parse_any(text)  # a recipe, or a mergekit config (told apart by its keys)
        if self.manifest.source:
            recipe = recipe.resolve_paths(Path(self.manifest.source).parent)
        return self.allowed_recipe(recipe.resolve_names(self.manifest))

    def allowed_dataset(self, dataset: str, manifest: Manifest) -> None:
        """A dataset that is not the manifest's domains ("math", "math+code") is a JSONL path: check it."""
        if not all(d in manifest.datasets for d in str(dataset).split("+")):
            self.allowed(dataset)

    def allowed_recipe(self, recipe: Recipe) -> Recipe:
        """`recipe` when its base, experts and calibration dataset are paths (or hub ids, domains)
        `self.roots` allow."""
        for ref in ([recipe.base] if recipe.base else []) + [e.path for e in recipe.experts]:
            self.allowed(ref)
        if recipe.calibrate is not None and recipe.calibrate.dataset:
            self.allowed_dataset(recipe.calibrate.dataset, self.manifest)
        return recipe

    def fuse(
        self,
        recipe: Recipe,
        name: str,
        *,
        overwrite: bool = False,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> FusedVariant:
        """Run `recipe` into `<work_dir>/fused/<name>` (calibrating first when it asks), keep it
        as a chat-able variant."""
        name = check_variant_name(name)
        with self.lock:
            if name in self.pool.names() and name not in self.variants:
                raise ValueError(f"{name!r} is the name of a loaded model; choose another name for the fused variant")
            if name in self.variants and not overwrite:
                raise ValueError(f"a fused variant named {name!r} already exists: choose another name, "
                                 "or tick \"Overwrite\" to replace it")
        for ref in self.allowed_recipe(recipe).experts:
            check_reference(ref.path)
        if name in self.variants:
            out_dir = self.variants[name].out_dir  # overwrite=True: replace this session's own output
        else:
            # a folder left by an earlier session is never overwritten: take the next free one
            out_dir, i = self.work_dir / "fused" / name, 2
            while out_dir.exists():
                out_dir, i = self.work_dir / "fused" / f"{name}-{i}", i + 1
        recipe = recipe.replace(name=name)
        t0 = time.perf_counter()
        try:
            result = fuse_recipe(recipe, out_dir, overwrite=name in self.variants, progress=progress,
                                 manifest=self.manifest)
        finally:
            self.release_memory()
        recipe = result.recipe
        summary = merge_summary(result, time.perf_counter() - t0, self.device_label)
        if result.calibration is not None:
            summary["calibration"] = result.calibration
        kind = "lora" if is_adapter(out_dir) else "full"
        variant = FusedVariant(name=name, recipe=recipe, out_dir=out_dir, kind=kind, summary=summary)
        write_record(variant)
        with self.lock:
            self.variants[name] = variant
            self.pool.register(name, str(out_dir), kind, role="fused")
            self.version += 1
        if kind == "lora" and self.manifest.server is not None:
            # a fused adapter joins the server's models when the server allows it (chat/serving.py)
            published = publish_adapter(self.manifest.server, name, out_dir)
            summary["server"] = published.message
            if published.remote is not None:
                with self.lock:
                    self.pool.register(name, str(out_dir), kind, role="fused", remote=published.remote)
                    self.version += 1
        return variant

    def variant(self, name: str) -> FusedVariant:
        try:
            return self.variants[name]
        except KeyError:
            made = ", ".join(self.variants) or "none yet"
            raise KeyError(f"there is no fused variant named {name!r} (made so far: {made})") from None

    def remove_variant(self, name: str) -> None:
        """Drop a variant from the app; its folder stays on disk, marked so a restart does not restore it."""
        with self.lock:
            write_record(self.variant(name), removed=True)
            self.variants.pop(name)
            self.pool.unregister(name)
            self.version += 1

    def export_zip(self, name: str) -> Path:
        """A zip of the variant's folder (weights, recipe.yaml, gates.json) under `<work_dir>/exports`."""
        v = self.variant(name)
        if not (v.out_dir / "recipe.yaml").is_file():
            (v.out_dir / "recipe.yaml").write_text(v.recipe.to_yaml())
        exports = self.work_dir / "exports"
        exports.mkdir(parents=True, exist_ok=True)
        archive = shutil.make_archive(str(exports / name), "zip", root_dir=v.out_dir.parent, base_dir=v.out_dir.name)
        return Path(archive)

    # ---- housekeeping ----------------------------------------------------------------

    def release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self) -> dict:
        return self.pool.memory()

    def close(self) -> None:
        with self.lock:
            if self.pool is not None:
                self.pool.close()


def _hub_is_adapter(ref: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(ref, "adapter_config.json")
    return isinstance(hit, str)
