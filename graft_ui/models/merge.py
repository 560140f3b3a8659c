"""Apply a recipe's method to real artifacts: the `merge` engine.

`run_recipe(recipe, out_dir)` fuses full fine-tunes (HF folders) or LoRA adapters (peft
folders) one module at a time and writes, atomically, into `out_dir`:

- the fused model (sharded safetensors + index + the first expert's config, tokenizer and
  processor files) or the fused peft adapter;
- `recipe.yaml`: the resolved recipe (device used, base, output kind and rank);
- `gates.json`: `{"method", "device", "seconds", "kind", "experts", "modules": {name: stats}}`
  with per-module gate statistics for Graft and the method's stats (kept fractions ...)
  for the others. Module names are canonical (keys.py).

Full fine-tunes: Graft fuses the experts' weights directly (no base) for 2-D linear
weights in scope, each bias taking its weight's per-row gates; task-vector baselines need
`recipe.base`. Out-of-scope tensors are copied from the first expert. More than two
experts fuse left to right in recipe order (DESIGN.md §2).

LoRA experts: Graft uses the exact rank-concatenation form (DESIGN.md §2.4) with
optional SVD compression (`output.rank`); baselines merge the dense deltas (base = 0, the
deltas are task vectors) and factor the result back to `output.rank` (default: the sum of
the experts' ranks) with randomized SVD, its sketch started from the experts' dominant row
directions (lora.sketch_start) and its error exact; average and task_arithmetic are linear
in the deltas and stay exact by concatenating factors. On CPU, TIES and DARE-TIES build the
deltas tile by tile (fastgraft.lora_ties, the sketch taken in the same pass), one module
per worker thread (fastgraft.SingleThreaded), written back in order. `output.kind: full` writes base + fused
delta as a full checkpoint instead. A module adapted by some experts but not others is
fused with a zero delta for the others (a LoRA expert that never touched a module *is*
the base there); this is logged and recorded as `missing_in` in gates.json.

Every input tensor that is touched is checked for NaN/inf, including copied ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from graft_ui.merging.registry import Method, get_method
from graft_ui.models.checkpoint import (
    BufferPool,
    Checkpoint,
    ShardedWriter,
    check_finite,
    copy_sidecar_files,
    copy_tensor,
)
from graft_ui.models.keys import ModuleKey, canonical_name, parse_param
from graft_ui.models.loading import check_reference, device_label, is_adapter, resolve_device
from graft_ui.models.lora_io import ADAPTER_WEIGHTS, LoraAdapter, LoraModule, check_bases, write_adapter
from graft_ui.models.scope import describe_scope, in_scope
from graft_ui.recipe import Output, Recipe

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

# methods whose result is linear in the experts' deltas: on LoRA they stay exact low-rank
LINEAR_METHODS = ("average", "task_arithmetic")
# methods whose LoRA deltas are merged tile by tile on CPU (fastgraft.lora_ties)
FAST_LORA_TIES = ("ties", "dare_ties")
# sketch columns beyond the output rank for dense LoRA results (lora.sketch_basis)
LOWRANK_OVERSAMPLE = 8
GRAFT_KEYS = ("a", "c", "bins", "gates", "global_form", "alpha", "beta")


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


# ---------------------------------------------------------------------------- helpers

def local_folder(ref: str | Path) -> Path:
    """A local folder for a folder path or hub id (hub ids come from the HF cache/hub)."""
    ref = check_reference(ref)
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(snapshot_download(ref, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises several unrelated types
        raise FileNotFoundError(f"could not get {ref!r} from the hub cache: {exc}") from None


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


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _phi_table(recipe: Recipe) -> dict[str, tuple[float, float]]:
    return {canonical_name(k): (float(v["alpha"]), float(v["beta"])) for k, v in recipe.phi.items()}


def _graft_kwargs(recipe: Recipe, phi: dict[str, tuple[float, float]], name: str) -> dict[str, Any]:
    kw = {k: recipe.params[k] for k in GRAFT_KEYS if k in recipe.params}
    if name in phi:
        kw["alpha"], kw["beta"] = phi[name]
    return kw


class _Ctx:
    """Per-run state shared by the jobs: device, generator, buffers, progress."""

    def __init__(self, recipe: Recipe, device: torch.device, total: int, progress: Progress | None):
        self.recipe = recipe
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(recipe.seed)
        self.pool = BufferPool()
        self.out_dtype = _torch_dtype(recipe.output.dtype)
        self.phi = _phi_table(recipe)  # per-module (alpha, beta) for Graft's local gate
        self.bar = tqdm(total=total, desc=f"merge ({recipe.method})", unit="tensor", dynamic_ncols=True)
        self.done = 0
        self.total = total
        self.callback = progress
        self._threads = None

    @property
    def module_threads(self):
        """fastgraft.SingleThreaded workers for independent CPU module jobs, one per intra-op
        thread torch would use; None where that is 1 or the device is not the CPU."""
        if self._threads is None and self.device.type == "cpu" and torch.get_num_threads() > 1:
            from graft_ui.models.fastgraft import SingleThreaded

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


# ---------------------------------------------------------------------------- full fine-tunes

@dataclass
class _FullModule:
    key: ModuleKey
    weight: str
    bias: str | None = None


class _FullJob:
    """Full fine-tunes: stream every tensor of the first expert; fuse the modules in scope."""

    experts_kind = "full"
    output_kind = "full"

    def __init__(self, recipe: Recipe, method: Method, folders: Sequence[Path]):
        self.recipe, self.method, self.folders = recipe, method, list(folders)
        self.labels = [str(f) for f in folders]
        self.notes: list[str] = []
        self.ckpts = [Checkpoint(f) for f in folders]
        first = self.ckpts[0]
        for i, ck in enumerate(self.ckpts[1:], start=1):
            missing = [n for n in first.names if n not in ck]
            extra = [n for n in ck.names if n not in first]
            if missing:
                raise ValueError(f"expert {self.labels[i]!r} is missing tensor(s) {missing[:5]} that expert {self.labels[0]!r} has")
            if extra:
                raise ValueError(f"expert {self.labels[0]!r} is missing tensor(s) {extra[:5]} that expert {self.labels[i]!r} has")
            for n in first.names:
                if first.info(n).shape != ck.info(n).shape:
                    raise ValueError(
                        f"shape mismatch for tensor {n!r}: {list(first.info(n).shape)} in {self.labels[0]!r} "
                        f"but {list(ck.info(n).shape)} in {self.labels[i]!r}"
                    )
        # fused modules, keyed by their weight tensor
        self.modules: dict[str, _FullModule] = {}
        biases: dict[ModuleKey, str] = {}
        for n in first.names:
            key, leaf = parse_param(n)
            if not in_scope(key, recipe.scope):
                continue
            if leaf == "weight":
                if len(first.info(n).shape) != 2:
                    self.notes.append(f"{n}: not a 2-D linear weight; copied from the first expert")
                    continue
                self.modules[n] = _FullModule(key, n)
            elif leaf == "bias":
                biases[key] = n
        for m in self.modules.values():
            m.bias = biases.get(m.key)
            if m.bias is not None and first.info(m.bias).shape[0] != first.info(m.weight).shape[0]:
                raise ValueError(f"bias {m.bias!r} does not match the rows of {m.weight!r}")
        self.fused_tensors = {m.weight for m in self.modules.values()} | {m.bias for m in self.modules.values() if m.bias}
        self.base: Checkpoint | None = None
        self.base_folder: Path | None = None
        if method.needs_base:
            if recipe.base is None:
                raise ValueError(
                    f"method {method.name!r} needs recipe.base (the model the experts were fine-tuned from); "
                    "set base: in the recipe"
                )
            self.base_folder = local_folder(recipe.base)
            if is_adapter(self.base_folder):
                raise ValueError(f"recipe.base {recipe.base!r} is an adapter folder; it must be a full model")
            self.base = Checkpoint(self.base_folder)
            for n in sorted(self.fused_tensors):
                if n not in self.base:
                    raise ValueError(f"base {recipe.base!r} is missing tensor {n!r}, which the experts have")
                if self.base.info(n).shape != first.info(n).shape:
                    raise ValueError(
                        f"shape mismatch for tensor {n!r}: {list(self.base.info(n).shape)} in base {recipe.base!r} "
                        f"but {list(first.info(n).shape)} in the experts"
                    )
        elif recipe.base is not None:
            log.info("method %s does not use the base %s", method.name, recipe.base)
        if not self.modules:
            self.notes.append(f"no module matches the scope ({describe_scope(recipe.scope)}): output = first expert")
        self.fused = [m.key.name for m in self.modules.values()]
        self.copied = [n for n in first.names if n not in self.fused_tensors]

    @property
    def total(self) -> int:
        return len(self.ckpts[0].names)

    def plan(self) -> list[dict]:
        first = self.ckpts[0]
        return [
            {"module": m.key.name, "weight": m.weight, "bias": m.bias, "shape": list(first.info(m.weight).shape)}
            for m in self.modules.values()
        ]

    def _read(self, ck: Checkpoint, name: str, role: str, ctx: _Ctx, who: str, check: bool = True) -> torch.Tensor:
        info = ck.info(name)
        t = ck.read(name, ctx.pool.bytes(role, info.nbytes))
        if check:
            check_finite(t, f"tensor {name!r} of {who}")
        return ctx.to_device(t)

    def execute(self, tmp: Path, ctx: _Ctx) -> tuple[dict[str, dict], list[str]]:
        first = self.ckpts[0]
        specs = [(n, ctx.out_dtype if n in self.fused_tensors else first.info(n).dtype, first.info(n).shape) for n in first.names]
        writer = ShardedWriter(tmp, specs)
        stats: dict[str, dict] = {}
        try:
            for n in first.names:
                if n in self.modules:
                    m = self.modules[n]
                    stats[m.key.name] = self._fuse(m, writer, ctx)
                    ctx.step(2 if m.bias else 1, m.key.name)
                elif n not in self.fused_tensors:
                    copy_tensor(first, n, writer, ctx.pool, what=f" of {self.labels[0]!r}")
                    ctx.step(1, n)
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        files += copy_sidecar_files(self.folders[0], tmp)
        return stats, files

    def _fuse(self, m: _FullModule, writer: ShardedWriter, ctx: _Ctx) -> dict:
        rec = self.recipe
        graft = rec.method == "graft"
        who = [f"{self.labels[i]!r}" for i in range(len(self.ckpts))]
        # graft checks its inputs itself (the aminmax it needs for the entropy range)
        ws = [self._read(ck, m.weight, f"e{i}", ctx, who[i], check=not graft) for i, ck in enumerate(self.ckpts)]
        bs = [self._read(ck, m.bias, f"b{i}", ctx, who[i]) for i, ck in enumerate(self.ckpts)] if m.bias else None
        if graft:
            fw, fb, stats = self._graft(m, ws, bs, ctx)
        else:
            fw, fb, stats = self._baseline(m, ws, bs, ctx)
        writer.write(m.weight, fw)
        if bs:
            writer.write(m.bias, fb)
        return dict(stats, shape=list(ws[0].shape), bias_fused=bool(bs))

    def _graft(self, m: _FullModule, ws, bs, ctx: _Ctx):
        """Left-to-right Graft; the weight through the streaming kernel, the bias with the same gates."""
        from graft_ui.merging.graft import apply_row_weights
        from graft_ui.models.fastgraft import fuse_into, graft_row_weights_dense

        kw = _graft_kwargs(self.recipe, ctx.phi, m.key.name)
        shape = (ws[0].shape[0], ws[0][0].numel())
        fw, fb, steps = ws[0], (bs[0] if bs else None), []
        what = f"tensor {m.weight!r} of "
        for i in range(1, len(ws)):
            last = i == len(ws) - 1
            diff = ctx.scratch(f"diff{i % 2}", shape)  # alternate: the previous result is the next input
            wb, st = graft_row_weights_dense(
                fw, ws[i], diff, kw, (what + (f"{self.labels[0]!r}" if i == 1 else "the partial fusion"), what + repr(self.labels[i])),
                scratch=ctx.scratch("g32", (diff.numel(),)),
            )
            if bs:
                fb = apply_row_weights(wb, fb, bs[i], out_dtype=ctx.out_dtype if last else torch.float32)
            fw = fuse_into(diff, wb, ws[i], ctx.scratch("g32", (diff.numel(),)))  # float32 (M, K)
            steps.append(st)
        stats = dict(steps[-1])
        if len(steps) > 1:
            stats["steps"] = steps
        if fw.dtype != ctx.out_dtype:
            fw = ctx.scratch("out", fw.shape, ctx.out_dtype).copy_(fw)
        return fw.reshape(ws[0].shape), fb, stats

    def _baseline(self, m: _FullModule, ws, bs, ctx: _Ctx):
        rec = self.recipe
        weights = [e.weight for e in rec.experts]
        base_w = self._read(self.base, m.weight, "base", ctx, f"base {rec.base!r}") if self.base else None
        fw, stats = self._merge_one(base_w, ws, weights, ctx)
        fb = None
        if bs:
            base_b = self._read(self.base, m.bias, "base_b", ctx, f"base {rec.base!r}") if self.base else None
            fb, bstats = self._merge_one(base_b, bs, weights, ctx)
            stats = dict(stats, bias=bstats)
        return fw, fb, stats

    def _merge_one(self, base, experts, weights, ctx: _Ctx):
        rec = self.recipe
        if rec.method == "ties" and base is not None and base.numel() > 1 << 16:
            # the trim thresholds by radix select (same values as kthvalue, far fewer passes)
            from graft_ui.merging.steps import trim_
            from graft_ui.merging.ties import ties_merge
            from graft_ui.models.fastgraft import ties_thresholds

            p = rec.params
            n = base.numel()
            thr = ties_thresholds(base, experts, p["density"], ctx.scratch("abs", (n,)))
            if ctx.device.type == "cpu":
                from graft_ui.models.fastgraft import ties_dense

                bufs = lambda role: ctx.scratch("t_" + role, (n,), torch.bool if role == "mask" else torch.float32)  # noqa: E731
                out, stats = ties_dense(base, experts, weights, thr, p["lam"], bufs)
            else:
                out, stats = ties_merge(base, experts, weights, density=p["density"], lam=p["lam"],
                                        prepare=lambda taus: trim_(taus, thr))
            stats["density"] = p["density"]
        else:
            out, stats = self.method.merge(base, experts, weights, rec.params, ctx.generator)
        return out.to(ctx.out_dtype), stats

    def close(self) -> None:
        for ck in self.ckpts + ([self.base] if self.base else []):
            ck.close()


# ---------------------------------------------------------------------------- LoRA experts

@dataclass
class _LoraModulePlan:
    ident: Any
    name: str  # canonical
    path: str  # spelling written (the first adapter's that has it)
    out_features: int
    in_features: int
    members: list[tuple[int, LoraModule | None]]  # per expert: its module, None = missing (zero delta)
    fuse: bool
    rank: int  # rank written (adapter output)
    mode: str  # copy | graft | graft+svd | linear | linear+svd | dense+svd


class _LoraJob:
    experts_kind = "lora"

    def __init__(self, recipe: Recipe, method: Method, folders: Sequence[Path]):
        self.recipe, self.method, self.folders = recipe, method, list(folders)
        self.labels = [str(f) for f in folders]
        self.notes: list[str] = []
        self.adapters = [LoraAdapter(f, label=lbl) for f, lbl in zip(folders, self.labels)]
        self.base_ref = check_bases(self.adapters, recipe.base)
        self.output_kind = recipe.output.kind
        self.rank_req = recipe.output.rank
        # union of modules, first adapter's order first
        idents: dict[Any, None] = {}
        for ad in self.adapters:
            for ident in ad.modules:
                idents.setdefault(ident, None)
        self.plans: list[_LoraModulePlan] = []
        missing_by: dict[tuple[str, ...], list[str]] = {}
        for ident in idents:
            members = [(i, ad.modules.get(ident)) for i, ad in enumerate(self.adapters)]
            present = [(i, m) for i, m in members if m is not None]
            i0, m0 = present[0]
            for i, m in present[1:]:
                if (m.out_features, m.in_features) != (m0.out_features, m0.in_features):
                    raise ValueError(
                        f"shape mismatch for LoRA module {m0.name!r}: ({m0.out_features}, {m0.in_features}) in "
                        f"{self.labels[i0]!r} but ({m.out_features}, {m.in_features}) in {self.labels[i]!r}"
                    )
            fuse = in_scope(m0.key, recipe.scope)
            if not fuse:
                if members[0][1] is None:
                    self.notes.append(f"{m0.name}: out of scope and not in the first expert; left out")
                    continue
                mod = members[0][1]
                self.plans.append(_LoraModulePlan(ident, mod.name, mod.path, mod.out_features, mod.in_features,
                                                  [(0, mod)], False, mod.rank, "copy"))
                continue
            missing = tuple(self.labels[i] for i, m in members if m is None)
            if missing:
                missing_by.setdefault(missing, []).append(m0.name)
            rsum = sum(m.rank for _, m in present)
            M, N = m0.out_features, m0.in_features
            if method.name == "graft" or method.name in LINEAR_METHODS:
                kind = "graft" if method.name == "graft" else "linear"
                if self.rank_req is not None and self.rank_req < rsum:
                    rank, mode = min(self.rank_req, M, N), kind + "+svd"
                else:
                    rank, mode = rsum, kind
            else:
                rank, mode = min(self.rank_req or rsum, M, N), "dense+svd"
            path = (members[0][1] or m0).path
            self.plans.append(_LoraModulePlan(ident, m0.name, path, M, N, members, True, rank, mode))
        for missing, names in missing_by.items():
            note = (f"{len(names)} module(s) in scope not adapted by {list(missing)} (e.g. {names[0]}): "
                    "fused with a zero delta there (see missing_in in gates.json)")
            self.notes.append(note)
            log.warning("%s", note)
        if not any(p.fuse for p in self.plans):
            self.notes.append(f"no adapted module matches the scope ({describe_scope(recipe.scope)}): output = first expert")
        self.fused = [p.name for p in self.plans if p.fuse]
        self.copied = [p.name for p in self.plans if not p.fuse]
        self.base: Checkpoint | None = None
        self.base_folder: Path | None = None
        self.base_weights: dict[str, str] = {}
        if self.output_kind == "full":
            self._open_base()

    def _open_base(self) -> None:
        self.base_folder = local_folder(self.base_ref)
        if is_adapter(self.base_folder):
            raise ValueError(f"base {self.base_ref!r} is an adapter folder; output.kind=full needs the full base model")
        self.base = Checkpoint(self.base_folder)
        by_key: dict[ModuleKey, str] = {}
        for n in self.base.names:
            key, leaf = parse_param(n)
            if key is not None and leaf == "weight":
                by_key[key] = n
        for p in self.plans:
            if isinstance(p.ident, ModuleKey):
                name = by_key.get(p.ident)
            else:
                cands = [p.path + ".weight", p.path.replace("model.language_model.", "model.", 1) + ".weight",
                         p.path.replace("model.visual.", "visual.", 1) + ".weight"]
                name = next((c for c in cands if c in self.base), None)
            if name is None:
                raise ValueError(f"base {self.base_ref!r} has no weight for adapted module {p.name!r}")
            shape = self.base.info(name).shape
            if shape != (p.out_features, p.in_features):
                raise ValueError(
                    f"shape mismatch for module {p.name!r}: base {self.base_ref!r} has {list(shape)}, "
                    f"the adapters ({p.out_features}, {p.in_features}); adapters trained on another base?"
                )
            self.base_weights[name] = p.name
        self.plan_by_name = {p.name: p for p in self.plans}

    @property
    def total(self) -> int:
        return len(self.base.names) if self.output_kind == "full" else len(self.plans)

    def plan(self) -> list[dict]:
        return [
            {"module": p.name, "action": "fuse" if p.fuse else "copy", "mode": p.mode,
             "shape": [p.out_features, p.in_features],
             "ranks": [m.rank if m else 0 for _, m in p.members],
             "rank_out": p.rank if self.output_kind == "adapter" else None}
            for p in self.plans
        ]

    # -- per-module maths: ("factors", B, A, stats) or ("dense", delta, sketch, stats)

    def _read(self, p: _LoraModulePlan, ctx: _Ctx) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """(B, A, scale) per expert; an expert without the module gives rank-0 factors (zero delta)."""
        read = []
        for i, m in p.members:
            if m is None:
                z = torch.zeros(0, device=ctx.device)
                read.append((z.new_zeros(p.out_features, 0), z.new_zeros(0, p.in_features), 1.0))
            else:
                B, A = self.adapters[i].read(m, ctx.device)
                read.append((B, A, m.scale))
        return read

    def _fuse_job(self, p: _LoraModulePlan, ctx: _Ctx, sketch_rank: int | None = None) -> Callable[[], tuple]:
        """The fused module as a job: every draw from the run's generator happens now, in plan order;
        the returned callable does the rest. Dense results come with their range sketch
        (lora.RangeSketch) for a rank-`sketch_rank` factorisation when that is asked for, else
        None. A job marked `.independent` touches no shared state (reads use pread), so module
        jobs may run concurrently."""
        done = lambda *result: lambda: result  # noqa: E731
        rec = self.recipe
        stats: dict[str, Any] = {"ranks": [m.rank if m else 0 for _, m in p.members]}
        missing = [self.labels[i] for i, m in p.members if m is None]
        if missing:
            stats["missing_in"] = missing
        if p.fuse and rec.method in FAST_LORA_TIES and ctx.device.type == "cpu":
            return self._ties_tiled_job(p, ctx, stats, sketch_rank)
        read = self._read(p, ctx)
        if not p.fuse:
            B, A, s = read[0]
            return done("factors", B * s, A, {})
        if rec.method == "graft":
            from graft_ui.models.fastgraft import graft_lora_fast

            kw = _graft_kwargs(rec, ctx.phi, p.name)
            n = p.out_features * p.in_features
            bufs = (ctx.scratch("delta0", (n,)), ctx.scratch("delta1", (n,)), ctx.scratch("hist", (n,)))
            B, A, s0 = read[0]
            B, steps = B * s0, []
            for Bg, Ag, sg in read[1:]:
                B, A, st = graft_lora_fast(B, A, 1.0, Bg, Ag, sg, kw, bufs)
                steps.append(st)
            st = dict(steps[-1])
            if len(steps) > 1:
                st["steps"] = steps
            return done("factors", B, A, dict(stats, **st))
        if rec.method in LINEAR_METHODS:
            from graft_ui.merging.lora import concat_lora

            k = len(read)
            onehot = [torch.eye(k)[i] for i in range(k)]
            coef, st = self.method.merge(torch.zeros(k), onehot, [e.weight for e in rec.experts], rec.params, ctx.generator)
            B, A = concat_lora([b for b, _, _ in read], [a for _, a, _ in read],
                               [s * float(c) for (_, _, s), c in zip(read, coef)], [1.0] * k)
            return done("factors", B, A, dict(stats, **st, coefficients=[float(c) for c in coef]))
        from graft_ui.merging.lora import RangeSketch, sketch_basis, sketch_start, sum_squares

        M, N = p.out_features, p.in_features
        weights = [e.weight for e in rec.experts]
        P = None
        if sketch_rank is not None:
            # drawn before the merge, as on the tiled path (DARE draws from the same generator)
            pad = self._sketch_padding(p, sketch_rank, ctx)
            start = sketch_start([B * (s * w) for (B, _, s), w in zip(read, weights)], [A for _, A, _ in read], pad[0])
            P = sketch_basis(N, pad[0], None, start, pad=pad[1], device=ctx.device)
        deltas = [(B @ A).mul_(s) if B.shape[1] else torch.zeros(M, N, device=ctx.device) for B, A, s in read]
        base = torch.zeros_like(deltas[0]) if self.method.needs_base else None
        merged, st = self.method.merge(base, deltas, weights, rec.params, ctx.generator)
        del deltas
        sketch = None
        if P is not None:
            X = merged.float()
            sketch = RangeSketch(X @ P, sum_squares(X))
        return done("dense", merged, sketch, dict(stats, **st))

    def _sketch_padding(self, p: _LoraModulePlan, rank: int, ctx: _Ctx):
        """(q, Gaussian columns or None) for `lora.sketch_basis`. The sketch starts from the
        experts' dominant row directions (`lora.sketch_start`), which the merged delta's rows
        mostly lie near, so no power iteration is needed (bench_merge.py reports the gap to
        the exact SVD); random columns only fill up when the experts have fewer than q."""
        from graft_ui.merging.lora import sketch_padding

        M, N = p.out_features, p.in_features
        q = min(rank + LOWRANK_OVERSAMPLE, M, N)
        return q, sketch_padding(N, q, sum(m.rank for _, m in p.members if m is not None), ctx.generator)

    def _ties_tiled_job(self, p: _LoraModulePlan, ctx: _Ctx, stats: dict, sketch_rank: int | None):
        """TIES / DARE-TIES of the LoRA deltas tile by tile (fastgraft.lora_ties), the sketch
        taken in the same pass: the method's values on the dense deltas, which never exist whole.
        Reading, the sketch basis and the merge all run in the job (main-thread torch ops would
        compete with the workers); only the generator's draws happen here."""
        from graft_ui.merging.lora import RangeSketch, sketch_basis, sketch_start
        from graft_ui.merging.registry import validate_params
        from graft_ui.models.fastgraft import dare_keep_masks, lora_ties

        rec = self.recipe
        prm = validate_params(rec.method, rec.params)
        weights = [e.weight for e in rec.experts]
        M, N = p.out_features, p.in_features
        pad = self._sketch_padding(p, sketch_rank, ctx) if sketch_rank is not None else None
        if rec.method == "ties":
            kw, extra = {"density": prm["density"]}, {"density": prm["density"]}
        else:
            kw = {"drop": (prm["p"], dare_keep_masks(M, N, len(p.members), prm["p"], ctx.generator))}
            extra = {"p": prm["p"]}

        def job():
            factors = [(B * s, A.contiguous()) for B, A, s in self._read(p, ctx)]  # float32
            P = None
            if pad is not None:
                start = sketch_start([B * w for (B, _), w in zip(factors, weights)], [A for _, A in factors], pad[0])
                P = sketch_basis(N, pad[0], None, start, pad=pad[1])
            out = ctx.thread_scratch("lora_dense", M * N).view(M, N)
            Y, sumsq, st = lora_ties(factors, weights, lam=prm["lam"], out=out, sketch=P, buffer=ctx.thread_scratch, **kw)
            return "dense", out, None if Y is None else RangeSketch(Y, sumsq), dict(stats, **st, **extra)

        job.independent = True
        return job

    def execute(self, tmp: Path, ctx: _Ctx) -> tuple[dict[str, dict], list[str]]:
        return self._execute_adapter(tmp, ctx) if self.output_kind == "adapter" else self._execute_full(tmp, ctx)

    def _execute_adapter(self, tmp: Path, ctx: _Ctx):
        from graft_ui.merging.lora import compress_lowrank, lowrank_from_sketch

        specs = [(p.path, p.out_features, p.in_features, p.rank) for p in self.plans]
        writer = write_adapter(tmp, specs, template=self.adapters[0].config, base_model=self.base_ref, dtype=ctx.out_dtype)
        stats: dict[str, dict] = {}

        def to_adapter(p: _LoraModulePlan, job) -> tuple[torch.Tensor, torch.Tensor, dict]:
            form, X, A, st = job()
            if form == "dense":  # A is the range sketch
                B, A, err = lowrank_from_sketch(X.float(), p.rank, A)
                st.update(rank=int(B.shape[1]), lowrank_rel_err=err)
            elif p.mode.endswith("+svd"):
                full_rank = int(X.shape[1])
                B, A, err = compress_lowrank(X, A, p.rank)
                st.update(rank=int(B.shape[1]), rank_before=full_rank, lowrank_rel_err=err)
            else:
                B = X
                if p.fuse:
                    st["rank"] = int(B.shape[1])
            for t, what in ((B, "B"), (A, "A")):
                check_finite(t, f"the fused LoRA {what} of {p.name!r}")
            return B, A, st

        def write(p: _LoraModulePlan, result: Future) -> None:
            B, A, st = result.result()
            writer.write(p.path, B, A)
            if p.fuse:
                stats[p.name] = st
            ctx.step(1, p.name)

        # independent module jobs run on ctx.module_threads, written back in plan order; at
        # most one more in flight than there are threads bounds the memory held
        pending: deque[tuple[_LoraModulePlan, Future]] = deque()
        window = 0
        try:
            for p in self.plans:
                job = self._fuse_job(p, ctx, sketch_rank=p.rank if p.mode == "dense+svd" else None)
                threads = ctx.module_threads if getattr(job, "independent", False) else None
                if threads is not None:
                    fut = threads.submit(to_adapter, p, job)
                    window = threads.n
                else:
                    fut = Future()
                    fut.set_result(to_adapter(p, job))
                pending.append((p, fut))
                while len(pending) > window:
                    write(*pending.popleft())
            while pending:
                write(*pending.popleft())
            files = writer.close()
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            writer.abort()
            raise
        files += copy_sidecar_files(self.folders[0], tmp)
        return stats, files

    def _execute_full(self, tmp: Path, ctx: _Ctx):
        base = self.base
        fused_names = set(self.base_weights)
        specs = [(n, ctx.out_dtype if n in fused_names else base.info(n).dtype, base.info(n).shape) for n in base.names]
        writer = ShardedWriter(tmp, specs)
        stats: dict[str, dict] = {}
        try:
            for n in base.names:
                if n in fused_names:
                    p = self.plan_by_name[self.base_weights[n]]
                    job = self._fuse_job(p, ctx)
                    threads = ctx.module_threads if getattr(job, "independent", False) else None
                    # on a worker for its single-threaded ops (see fastgraft.SingleThreaded)
                    form, X, A, st = threads.submit(job).result() if threads is not None else job()
                    info = base.info(n)
                    W = ctx.to_device(base.read(n, ctx.pool.bytes("base", info.nbytes)))
                    check_finite(W, f"tensor {n!r} of base {self.base_ref!r}")
                    delta = X if form == "dense" else X @ A
                    out = delta.add_(W).to(ctx.out_dtype)
                    check_finite(out, f"the fused weight {n!r}")
                    writer.write(n, out)
                    if p.fuse:
                        stats[p.name] = st
                else:
                    copy_tensor(base, n, writer, ctx.pool, what=f" of base {self.base_ref!r}")
                ctx.step(1, n)
            files = writer.close()
        except BaseException:
            writer.abort()
            raise
        files += copy_sidecar_files(self.base_folder, tmp)
        return stats, files

    def close(self) -> None:
        for ad in self.adapters:
            ad.close()
        if self.base:
            self.base.close()


# ---------------------------------------------------------------------------- entry point

def _check_out_dir(out: Path, inputs: Sequence[Path], overwrite: bool, dry_run: bool) -> None:
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


def prepare(recipe: Recipe):
    """Validate a recipe against its artifacts (headers only) and return the merge job."""
    method = get_method(recipe.method)
    folders = [local_folder(e.path) for e in recipe.experts]
    kinds = ["lora" if is_adapter(f) else "full" for f in folders]
    if len(set(kinds)) > 1:
        raise ValueError(
            "experts mix LoRA adapters and full checkpoints: "
            + ", ".join(f"{e.path!r}={k}" for e, k in zip(recipe.experts, kinds))
        )
    if kinds[0] == "lora":
        return _LoraJob(recipe, method, folders)
    if recipe.output.kind == "adapter" and recipe.output.rank is not None:
        raise ValueError("output.rank is set but the experts are full checkpoints; the output is a full checkpoint")
    return _FullJob(recipe, method, folders)


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path | None,
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    manifest=None,
) -> MergeResult:
    """Fuse the recipe's experts into `out_dir` (atomically); a dry run only plans.

    A Graft recipe with a `calibrate` section first learns phi on target samples (from
    `manifest`'s datasets, or a JSONL path in `calibrate.dataset`); the resolved recipe then
    carries the learned `phi` and no `calibrate`, so it reproduces the fusion without data.

    Raises ValueError / FileNotFoundError / FileExistsError naming the problem, leaving
    nothing at `out_dir` (the work happens in `<out_dir>.tmp-<pid>`, renamed at the end).
    """
    t0 = time.perf_counter()
    if out_dir is None and not dry_run:
        raise ValueError("out_dir is required unless dry_run=True")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out, [Path(e.path) for e in recipe.experts if Path(e.path).exists()]
                       + ([Path(recipe.base)] if recipe.base and Path(recipe.base).exists() else []), overwrite, dry_run)
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
            recipe=resolved, dry_run=dry_run, out_dir=out,
        )
        if dry_run:
            result.modules = {row["module"]: row for row in job.plan()}
            result.seconds = time.perf_counter() - t0
            log.info("dry run: %d module(s) would be fused, %d taken from the first expert", len(job.fused), len(job.copied))
            return result
        if recipe.calibrate is not None and recipe.method == "graft":
            from graft_ui.analysis.calibrate import calibrate_recipe

            recipe, result.calibration = calibrate_recipe(recipe, manifest, progress=True, device=device)
            resolved = resolved.replace(phi=recipe.phi, calibrate=None)
            result.recipe = resolved
        log.info("merging %d %s expert(s) with %s on %s; %d module(s) in scope (%s)", len(recipe.experts),
                 job.experts_kind, recipe.method, label, len(job.fused), describe_scope(recipe.scope))
        for note in job.notes:
            log.info("note: %s", note)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        ctx = _Ctx(recipe, device, job.total, progress)
        try:
            stats, files = job.execute(tmp, ctx)
            result.seconds = time.perf_counter() - t0
            result.modules = _jsonable(stats)
            (tmp / "recipe.yaml").write_text(resolved.to_yaml())
            gates = {
                "method": recipe.method,
                "device": str(device),
                "device_label": label,
                "seconds": round(result.seconds, 3),
                "experts_kind": job.experts_kind,
                "output_kind": job.output_kind,
                "experts": [e.path for e in recipe.experts],
                "notes": job.notes,
                "modules": result.modules,
            }
            if result.calibration is not None:
                gates["calibration"] = result.calibration
            (tmp / "gates.json").write_text(json.dumps(gates, indent=1, allow_nan=False) + "\n")
            result.files = sorted(set(files) | {"recipe.yaml", "gates.json"})
            _publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            ctx.close()
        log.info("wrote %s in %.1f s on %s", out, result.seconds, label)
        return result
    finally:
        job.close()


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder into place; an old output is removed only after."""
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


__all__ = ["MergeResult", "run_recipe", "prepare", "local_folder", "LINEAR_METHODS", "ADAPTER_WEIGHTS"]
