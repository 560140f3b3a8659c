"""The LoRA merge job: peft adapters fused one module at a time.

Methods with exact factor forms stay low-rank: Graft concatenates gated factors
(DESIGN.md §2.4, its `lora_factors` kernel), linear methods (`Method.linear`) concatenate
factors with their coefficients; both may be compressed by SVD (`output.rank`). Other
methods merge the dense deltas (base = 0: the deltas are task vectors) and factor the
result back to `output.rank` (default: the sum of the experts' ranks) with randomized SVD,
its sketch started from the experts' dominant row directions (lora.sketch_start) and its
error exact. A method with a `lora_tiled` kernel (TIES, DARE-TIES) builds the deltas tile
by tile on CPU, the sketch taken in the same pass, one module per worker thread
(merge_job.SingleThreaded), written back in order. `output.kind: full` writes base + fused
delta as a full checkpoint instead. A module adapted by some experts but not others is
fused with a zero delta for the others (a LoRA expert that never touched a module *is* the
base there); this is logged and recorded as `missing_in` in gates.json.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from graft_ui.merging.lora import (
    RangeSketch,
    compress_lowrank,
    concat_lora,
    lowrank_from_sketch,
    sketch_basis,
    sketch_padding,
    sketch_start,
    sum_squares,
)
from graft_ui.merging.registry import Method
from graft_ui.models.checkpoint import Checkpoint, ShardedWriter, check_finite, copy_tensor
from graft_ui.models.keys import ModuleKey, parse_param
from graft_ui.models.loading import is_adapter, local_folder
from graft_ui.models.lora_io import LoraAdapter, LoraModule, check_bases, write_adapter
from graft_ui.models.merge_job import MergeContext, write_through
from graft_ui.models.scope import describe_scope, in_scope
from graft_ui.recipe import Recipe

log = logging.getLogger(__name__)

# sketch columns beyond the output rank for dense LoRA results (lora.sketch_basis)
LOWRANK_OVERSAMPLE = 8


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


class LoraJob:
    experts_kind = "lora"

    def __init__(self, recipe: Recipe, method: Method, folders: Sequence[Path]):
        self.recipe, self.method, self.folders = recipe, method, list(folders)
        self.labels = [str(f) for f in folders]
        self.notes: list[str] = []
        refusal = method.lora_refusal(recipe.params, [e.weight for e in recipe.experts])
        if refusal:
            raise ValueError(f"method {method.name!r} cannot merge LoRA experts: {refusal}; merge full checkpoints "
                             "instead (fold each adapter into its base first)")
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
            kind = self._factor_form()
            if kind is not None:
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
        keys = [p.ident for p in self.plans if isinstance(p.ident, ModuleKey) and p.ident.tower == "language"]
        self.layer_count = max((k.layer for k in keys), default=-1) + 1
        self.copied = [p.name for p in self.plans if not p.fuse]
        self.base: Checkpoint | None = None
        self.base_folder: Path | None = None
        self.base_weights: dict[str, str] = {}
        if self.output_kind == "full":
            self._open_base()

    def _factor_form(self) -> str | None:
        """How fused modules stay exact as factors: "linear" (concatenated with the method's
        coefficients), the method's name (its `lora_factors` kernel) or None (dense deltas)."""
        if self.method.linear:
            return "linear"
        return self.method.name if self.method.kernel("lora_factors", self.recipe.params) is not None else None

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

    def _read(self, p: _LoraModulePlan, ctx: MergeContext) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
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

    def _fuse_job(self, p: _LoraModulePlan, ctx: MergeContext, sketch_rank: int | None = None) -> Callable[[], tuple]:
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
        params, weights = ctx.params(p.name), ctx.weights(p.name)
        tiled = self.method.kernel("lora_tiled", params) if p.fuse and ctx.device.type == "cpu" else None
        if tiled is not None:
            return self._tiled_job(tiled, p, ctx, stats, sketch_rank)
        factors = self.method.kernel("lora_factors", params) if p.fuse else None
        if factors is not None:

            def job():  # reads use pread and the kernel keeps no shared state: modules run concurrently
                B, A, st = factors(self._read(p, ctx), params, ctx)
                return "factors", B, A, dict(stats, **st)

            job.independent = True
            return job
        read = self._read(p, ctx)
        if not p.fuse:
            B, A, s = read[0]
            return done("factors", B * s, A, {})
        if self.method.linear:
            k = len(read)
            onehot = [torch.eye(k)[i] for i in range(k)]
            coef, st = self.method.merge(torch.zeros(k), onehot, weights, params, ctx.generator)
            B, A = concat_lora([b for b, _, _ in read], [a for _, a, _ in read],
                               [s * float(c) for (_, _, s), c in zip(read, coef)], [1.0] * k)
            return done("factors", B, A, dict(stats, **st, coefficients=[float(c) for c in coef]))
        M, N = p.out_features, p.in_features
        P = None
        if sketch_rank is not None:
            # drawn before the merge, as on the tiled path (DARE draws from the same generator)
            pad = self._sketch_padding(p, sketch_rank, ctx)
            start = sketch_start([B * (s * w) for (B, _, s), w in zip(read, weights)], [A for _, A, _ in read], pad[0])
            P = sketch_basis(N, pad[0], None, start, pad=pad[1], device=ctx.device)
        deltas = [(B @ A).mul_(s) if B.shape[1] else torch.zeros(M, N, device=ctx.device) for B, A, s in read]
        base = torch.zeros_like(deltas[0]) if self.method.uses_base(rec.params) else None
        merged, st = self.method.merge(base, deltas, weights, params, ctx.generator)
        del deltas
        sketch = None
        if P is not None:
            X = merged.float()
            sketch = RangeSketch(X @ P, sum_squares(X))
        return done("dense", merged, sketch, dict(stats, **st))

    def _sketch_padding(self, p: _LoraModulePlan, rank: int, ctx: MergeContext):
        """(q, Gaussian columns or None) for `lora.sketch_basis`. The sketch starts from the
        experts' dominant row directions (`lora.sketch_start`), which the merged delta's rows
        mostly lie near, so no power iteration is needed (bench_merge.py reports the gap to
        the exact SVD); random columns only fill up when the experts have fewer than q."""
        M, N = p.out_features, p.in_features
        q = min(rank + LOWRANK_OVERSAMPLE, M, N)
        return q, sketch_padding(N, q, sum(m.rank for _, m in p.members if m is not None), ctx.generator)

    def _tiled_job(self, tiled, p: _LoraModulePlan, ctx: MergeContext, stats: dict, sketch_rank: int | None):
        """The method's `lora_tiled` kernel on the LoRA deltas, the sketch taken in the same pass:
        the method's values on the dense deltas, which never exist whole. Reading, the sketch
        basis and the merge all run in the job (main-thread torch ops would compete with the
        workers); only the generator's draws happen here, in plan order."""
        weights = ctx.weights(p.name)
        M, N = p.out_features, p.in_features
        pad = self._sketch_padding(p, sketch_rank, ctx) if sketch_rank is not None else None
        run = tiled((M, N), len(p.members), ctx.params(p.name), ctx.generator)

        def job():
            factors = [(B * s, A.contiguous()) for B, A, s in self._read(p, ctx)]  # float32
            P = None
            if pad is not None:
                start = sketch_start([B * w for (B, _), w in zip(factors, weights)], [A for _, A in factors], pad[0])
                P = sketch_basis(N, pad[0], None, start, pad=pad[1])
            out = ctx.thread_scratch("lora_dense", M * N).view(M, N)
            Y, sumsq, st = run(factors, weights, out, P, ctx.thread_scratch)
            return "dense", out, None if Y is None else RangeSketch(Y, sumsq), dict(stats, **st)

        job.independent = True
        return job

    def execute(self, tmp: Path, ctx: MergeContext) -> tuple[dict[str, dict], list[str]]:
        return self._execute_adapter(tmp, ctx) if self.output_kind == "adapter" else self._execute_full(tmp, ctx)

    def _execute_adapter(self, tmp: Path, ctx: MergeContext):
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

        def fill() -> None:
            window = 0
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

        def cancel() -> None:
            for _, fut in pending:
                fut.cancel()

        return stats, write_through(writer, fill, self.folders[0], tmp, on_abort=cancel)

    def _execute_full(self, tmp: Path, ctx: MergeContext):
        base = self.base
        fused_names = set(self.base_weights)
        specs = [(n, ctx.out_dtype if n in fused_names else base.info(n).dtype, base.info(n).shape) for n in base.names]
        writer = ShardedWriter(tmp, specs)
        stats: dict[str, dict] = {}

        def fill() -> None:
            for n in base.names:
                if n in fused_names:
                    p = self.plan_by_name[self.base_weights[n]]
                    job = self._fuse_job(p, ctx)
                    threads = ctx.module_threads if getattr(job, "independent", False) else None
                    # on a worker for its single-threaded ops (see merge_job.SingleThreaded)
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

        return stats, write_through(writer, fill, self.base_folder, tmp)

    def close(self) -> None:
        for ad in self.adapters:
            ad.close()
        if self.base:
            self.base.close()
