"""The full-weight merge job: fine-tuned checkpoints (HF folders) fused one module at a time.

Every tensor of the first expert is streamed to a sharded output; 2-D linear weights in
scope are fused (each bias taking its weight's per-row gates when the method fuses whole
modules, `fuse_rows`), the rest copied from the first expert. Task-vector methods read
`recipe.base`. More than two experts fuse left to right in recipe order (DESIGN.md §2).
With `scope.all_tensors` every floating tensor the experts share is merged on its own
(embeddings, norms, biases and lm_head too, as mergekit does; `scope.layers` still limits
the language layers), so any Hugging Face decoder checkpoint merges, not only Qwen2-VL.
A method that streams (`Method.streams`) is given its inputs as stored.Stored readers over
the files and its output as a stored.Sink over the output shard: it reads, checks (NaN/inf)
and writes one row block at a time, so no big tensor is ever held whole (the 151936 x 1536
embedding is 0.47 GB per input); a two-pass method reads a big tensor's blocks twice, from
the page cache, and holds a small one as float32 (HELD_BYTES) after its first pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from graft_ui.merging.registry import Method
from graft_ui.merging.stored import Sink, Stored
from graft_ui.models.checkpoint import Checkpoint, ShardedWriter, check_finite, copy_tensor
from graft_ui.models.keys import ModuleKey, language_layer, parse_param
from graft_ui.models.loading import is_adapter, local_folder
from graft_ui.models.merge_job import MergeContext, write_through
from graft_ui.models.scope import describe_scope, in_scope
from graft_ui.recipe import Recipe

log = logging.getLogger(__name__)

# a streamed float input whose float32 copy takes at most this many bytes is held whole while
# its tensor merges (one buffer per input role, reused by the next tensor), so a two-pass
# method reads and converts it once: every layer weight of a 2B model (an MLP matrix is
# 55 MB as float32), not the embedding (0.93 GB)
HELD_BYTES = 64 << 20


@dataclass
class _FullModule:
    key: ModuleKey
    weight: str
    bias: str | None = None


class FullJob:
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
        layers = [language_layer(n) for n in first.names]
        self.layer_count = max((x for x in layers if x is not None), default=-1) + 1
        # fused modules, keyed by their weight tensor
        self.modules: dict[str, _FullModule] = {}
        self.tensors: list[str] = []  # scope.all_tensors: each merged on its own
        biases: dict[ModuleKey, str] = {}
        if recipe.scope.all_tensors:
            if method.kernel("fuse_rows") is not None:
                raise ValueError(f"method {method.name!r} fuses whole modules (per-row gates); scope.all_tensors "
                                 "needs a method that merges tensor by tensor")
            self.tensors = [n for n, layer in zip(first.names, layers) if first.info(n).dtype.is_floating_point
                            and (layer is None or recipe.scope.layer_in_scope(layer))]
        for n in first.names if not self.tensors else ():
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
        self.fused_tensors = ({m.weight for m in self.modules.values()} | {m.bias for m in self.modules.values() if m.bias}
                              | set(self.tensors))
        self.base: Checkpoint | None = None
        self.base_folder: Path | None = None
        if method.uses_base(recipe.params):
            if recipe.base is None:
                why = method.base_params(recipe.params)
                with_params = " with " + ", ".join(f"{p}={recipe.params[p]!r}" for p in why) if why else ""
                raise ValueError(
                    f"method {method.name!r}{with_params} needs recipe.base (the model the experts were fine-tuned "
                    "from); set base: in the recipe"
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
        if not self.modules and not self.tensors:
            self.notes.append(f"no module matches the scope ({describe_scope(recipe.scope)}): output = first expert")
        self.fused = [m.key.name for m in self.modules.values()] + self.tensors
        self.copied = [n for n in first.names if n not in self.fused_tensors]

    @property
    def total(self) -> int:
        return len(self.ckpts[0].names)

    def plan(self) -> list[dict]:
        first = self.ckpts[0]
        return [
            {"module": m.key.name, "weight": m.weight, "bias": m.bias, "shape": list(first.info(m.weight).shape)}
            for m in self.modules.values()
        ] + [{"module": n, "weight": n, "bias": None, "shape": list(first.info(n).shape)} for n in self.tensors]

    def _read(self, ck: Checkpoint, name: str, role: str, ctx: MergeContext, who: str, check: bool = True) -> torch.Tensor:
        info = ck.info(name)
        t = ck.read(name, ctx.pool.bytes(role, info.nbytes))
        if check:
            check_finite(t, f"tensor {name!r} of {who}")
        return ctx.to_device(t)

    def execute(self, tmp: Path, ctx: MergeContext) -> tuple[dict[str, dict], list[str]]:
        first = self.ckpts[0]
        specs = [(n, ctx.out_dtype if n in self.fused_tensors else first.info(n).dtype, first.info(n).shape) for n in first.names]
        writer = ShardedWriter(tmp, specs)
        stats: dict[str, dict] = {}

        def fill() -> None:
            for n in first.names:
                if n in self.modules:
                    m = self.modules[n]
                    stats[m.key.name] = self._fuse(m, writer, ctx)
                    ctx.step(2 if m.bias else 1, m.key.name)
                elif n in self.fused_tensors and self.tensors:
                    stats[n] = self._fuse_tensor(n, writer, ctx)
                    ctx.step(1, n)
                elif n not in self.fused_tensors:
                    copy_tensor(first, n, writer, ctx.pool, what=f" of {self.labels[0]!r}")
                    ctx.step(1, n)

        return stats, write_through(writer, fill, self.folders[0], tmp)


    def _fuse(self, m: _FullModule, writer: ShardedWriter, ctx: MergeContext) -> dict:
        fuse_rows = self.method.kernel("fuse_rows")
        if fuse_rows is None and self._streams(m.key.name, m.weight, ctx):
            stats = self._stream_one(m.key.name, m.weight, writer, ctx)
            if m.bias:
                stats = dict(stats, bias=self._stream_one(m.key.name, m.bias, writer, ctx))
            return dict(stats, shape=list(self.ckpts[0].info(m.weight).shape), bias_fused=bool(m.bias))
        who = [f"{self.labels[i]!r}" for i in range(len(self.ckpts))]
        # a fuse_rows kernel checks its inputs itself (the aminmax it needs anyway)
        ws = [self._read(ck, m.weight, f"e{i}", ctx, who[i], check=fuse_rows is None) for i, ck in enumerate(self.ckpts)]
        bs = [self._read(ck, m.bias, f"b{i}", ctx, who[i]) for i, ck in enumerate(self.ckpts)] if m.bias else None
        if fuse_rows is not None:
            base = None
            if self.base is not None:
                base_who = f"base {self.recipe.base!r}"
                base = (self._read(self.base, m.weight, "base", ctx, base_who),
                        self._read(self.base, m.bias, "base_b", ctx, base_who) if m.bias else None)
            params = ctx.params(m.key.name, m.weight)
            fw, fb, stats = fuse_rows(ws, bs, params, ctx, [f"tensor {m.weight!r} of {w}" for w in who], base=base)
            if self.recipe.varies:
                stats = dict(stats, used={k: v for k, v in params.items() if k in self._varying})
        else:
            fw, fb, stats = self._per_tensor(m, ws, bs, ctx)
        writer.write(m.weight, fw)
        if bs:
            writer.write(m.bias, fb)
        return dict(stats, shape=list(ws[0].shape), bias_fused=bool(bs))

    def _per_tensor(self, m: _FullModule, ws, bs, ctx: MergeContext):
        """The weight and the bias merged each on its own (`fuse_tensor` kernel or `Method.merge`)."""
        rec = self.recipe
        base_w = self._read(self.base, m.weight, "base", ctx, f"base {rec.base!r}") if self.base else None
        fw, stats = self._merge_one(m.key.name, m.weight, base_w, ws, ctx)
        fb = None
        if bs:
            base_b = self._read(self.base, m.bias, "base_b", ctx, f"base {rec.base!r}") if self.base else None
            fb, bstats = self._merge_one(m.key.name, m.bias, base_b, bs, ctx)
            stats = dict(stats, bias=bstats)
        return fw, fb, stats

    def _fuse_tensor(self, n: str, writer: ShardedWriter, ctx: MergeContext) -> dict:
        """One tensor of `scope.all_tensors`, merged on its own."""
        if self._streams(n, n, ctx):
            return dict(self._stream_one(n, n, writer, ctx), shape=list(self.ckpts[0].info(n).shape))
        who = [f"{self.labels[i]!r}" for i in range(len(self.ckpts))]
        ts = [self._read(ck, n, f"e{i}", ctx, who[i]) for i, ck in enumerate(self.ckpts)]
        base = self._read(self.base, n, "base", ctx, f"base {self.recipe.base!r}") if self.base else None
        out, stats = self._merge_one(n, n, base, ts, ctx)
        writer.write(n, out)
        return dict(stats, shape=list(ts[0].shape))

    def _streams(self, module: str, tensor: str, ctx: MergeContext) -> bool:
        """Whether this tensor goes through `Method.merge` with stored inputs (no kernel takes it)."""
        return self.method.streams and self.method.kernel("fuse_tensor", ctx.params(module, tensor)) is None

    def _stored(self, ck: Checkpoint, name: str, role: str, ctx: MergeContext, who: str) -> Stored:
        """`name` of `ck` as a row-block reader: each block is pread into the pool buffer of
        `role` and checked for NaN/inf the first time its rows are read (`read_unchecked`
        leaves that check to the caller, stored.py). A float tensor of at most HELD_BYTES as
        float32 is held instead: each block, when first read, is converted into one float32
        buffer that serves every later read, so a two-pass method reads and converts it once
        (the blocks it returns are float32, the stored values exactly)."""
        info, f = ck.info(name), ck.file(name)
        what = f"tensor {name!r} of {who}"
        item = torch.empty((), dtype=info.dtype).element_size()
        checked = [0]  # elements [0, checked) were read (and checked, or left to the caller)
        hold = info.dtype.is_floating_point and item <= 4 and info.numel * 4 <= HELD_BYTES
        held: list[torch.Tensor] = []  # the float32 copy, allocated at the first read

        def raw(start: int, stop: int) -> torch.Tensor:
            return f.read_range(name, start * item, ctx.pool.bytes(role, (stop - start) * item)).view(info.dtype)

        def read(start: int, stop: int, check: bool = True) -> torch.Tensor:
            if not hold:
                block = raw(start, stop)
                if stop > checked[0]:
                    if check:
                        check_finite(block, what)
                    checked[0] = stop
                return ctx.to_device(block)
            if not held:
                held.append(ctx.scratch(f"{role}:held", (info.numel,)))
            if stop > checked[0]:  # what earlier reads did not cover (a pass reads top to bottom)
                lo = checked[0]
                block = raw(lo, stop)
                if check:
                    check_finite(block, what)
                held[0][lo:stop].copy_(ctx.to_device(block))
                checked[0] = stop
            return held[0][start:stop]

        def recheck(start: int, stop: int) -> None:
            check_finite(held[0][start:stop] if hold and held else raw(start, stop), what)

        return Stored(info.shape, info.dtype, ctx.device, read,
                      read_unchecked=lambda start, stop: read(start, stop, check=False), check=recheck)

    def _stream_one(self, module: str, tensor: str, writer: ShardedWriter, ctx: MergeContext) -> dict:
        """One tensor merged from stored inputs into its slot of the output, block by block."""
        who = [f"{self.labels[i]!r}" for i in range(len(self.ckpts))]
        experts = [self._stored(ck, tensor, f"e{i}", ctx, who[i]) for i, ck in enumerate(self.ckpts)]
        base = self._stored(self.base, tensor, "base", ctx, f"base {self.recipe.base!r}") if self.base else None
        spec = writer.spec(tensor)
        item, done = torch.empty((), dtype=spec.dtype).element_size(), [0]

        def write(start: int, block: torch.Tensor) -> None:
            done[0] += block.numel()
            data = block.cpu().contiguous().view(torch.uint8)
            writer.write_bytes(tensor, start * item, data, last=done[0] >= spec.numel)

        out = Sink(spec.shape, spec.dtype, ctx.device, write)
        _, stats = self._merge_one(module, tensor, base, experts, ctx, out=out)
        if spec.numel == 0:
            writer.write(tensor, torch.empty(spec.shape, dtype=spec.dtype))
        elif done[0] != spec.numel:
            raise RuntimeError(f"internal error: {self.method.name} wrote {done[0]} of the {spec.numel} "
                               f"elements of {tensor!r}")
        return stats

    def _merge_one(self, module: str, tensor: str, base, experts, ctx: MergeContext, out: Sink | None = None):
        """One tensor through the `fuse_tensor` kernel or `Method.merge` (into `out` when it
        streams), with the parameters and weights of its layer and name (gradients, filters)
        recorded in its stats."""
        params, weights = ctx.params(module, tensor), ctx.weights(tensor)
        fast = self.method.kernel("fuse_tensor", params) if out is None else None
        done = fast(base, experts, weights, params, ctx) if fast is not None else None
        if done is None:
            done = (self.method.merge(base, experts, weights, params, ctx.generator) if out is None
                    else self.method.merge(base, experts, weights, params, ctx.generator, out=out))
        out, stats = done
        if self.recipe.varies:
            stats = dict(stats, used={**{k: v for k, v in params.items() if k in self._varying}, "weights": weights})
        return out.to(ctx.out_dtype), stats

    @property
    def _varying(self) -> set[str]:
        from graft_ui.merging.schedule import varies

        rec = self.recipe
        return {k for k, v in rec.params.items() if varies(v)} | {k for e in rec.experts for k in e.params}

    def close(self) -> None:
        for ck in self.ckpts + ([self.base] if self.base else []):
            ck.close()
