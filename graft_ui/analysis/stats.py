"""Activation statistics per fused module (paper 3.4, eqs 9-11; DESIGN.md §2.5).

For K samples and every module i in the fusion scope, with A_i^(k) the module's
activation tensor on sample k (all positions x channels; a module called more than once
in one forward pass contributes all its calls to the same tensor):

    mu_i = 1/K sum_k mean |A_i^(k)|                 (mean magnitude, eq 9)
    s_i  = 1/K sum_k frac(|A_i^(k)| < eps)          (sparsity, eq 10)
    v_i  = 1/K sum_k Var(A_i^(k))                   (variance, eq 11; population variance)

Which activation ("source"):
- "output": the module's full output. The only choice for fully fine-tuned experts.
- "adapter": for LoRA experts, the adapter branch's own output `scale * B @ A @ x`.
  This is the default for LoRA ("auto"): fusion only changes the adapters, and a
  module's full output is dominated by the frozen base weights, so it is nearly the same
  for every expert of one base and would score the base model, not the expert.

How: every call is reduced to five sums (sum|x|, x0, sum(x - x0), sum(x - x0)^2,
count(|x| >= thr)), pooled per module and sample on the host in float64. No activation
outlives its sample, and a device's sums come to the host in one transfer at the end of
the sample (no device sync per module). Small activations make torch's per-op dispatch,
not the arithmetic, the cost (a 16k-element reduction is a few microseconds, like
dispatching one op), so which code reduces them matters more than the formulas:
- CUDA with Triton: one fused kernel per call (`_triton_stats`).
- CPU: in the hook, while the activation is still in cache, one pass of a small C
  kernel (`_native_stats`, built on first use with the system compiler) over the
  tensor's own memory for float32 and bfloat16. Without a compiler (and for other
  dtypes) numpy does it on the same memory with preallocated scratch (no allocation per
  call, no thread pool), at most HOST_CHUNK elements at a time, so the scratch stays
  under 13 bytes x HOST_CHUNK (13 MiB; 9 bytes for float32) whatever the activation size.
- other devices (CUDA without Triton): activations of up to `stage_bytes / 4 /
  STAGE_MIN_ROWS` elements are copied (as float32; a copy, so later in-place ops cannot
  change them) into a row of a staging buffer per length, and reduced a whole buffer
  at a time in a few batched ops, at the end of the sample or when the buffer is full.
  A device holds at most `stage_buffers` buffers plus one scratch buffer of
  `stage_bytes` each (72 MiB with the defaults), freed when the hooks are removed.
  Larger activations, and float64 ones anywhere, are reduced by torch ops in the hook.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from graft_ui.analysis import _native_stats
from graft_ui.analysis.modules import is_lora_layer, scope_modules
from graft_ui.recipe import Scope

log = logging.getLogger(__name__)

SOURCES = ("auto", "output", "adapter")
DEFAULT_EPS = 1e-3
PATHS = ("auto", "native", "numpy", "staged", "direct")
HOST_CHUNK = 1 << 20  # elements a numpy step reduces at once (bounds the host scratch)
STAGE_BYTES = 8 << 20  # one staging buffer (float32 rows of one activation length)
STAGE_BUFFERS = 8  # staging buffers per device before all of them are reduced and reused
# a buffer holds at least this many rows: above that length the per-op cost is small next to
# the reduction itself, and the extra copy would only add to it
STAGE_MIN_ROWS = 8
_NATIVE_DTYPES = (torch.float32, torch.bfloat16)
# the call table's columns (the native kernel writes whole rows: _native_stats.c)
COLUMNS = ("l1", "x0", "sd", "sq", "big", "numel", "module", "scale")
ROW_BYTES = 8 * len(COLUMNS)
_META_COLUMNS = [COLUMNS.index(c) for c in ("module", "numel", "scale")]  # the other paths' (idx, n, scale)
FOLD_ROWS = 4096  # the call table's rows; finished samples are folded out once they fill half of it


@dataclass
class ModuleStats:
    """Statistics of one module averaged over the K samples (eqs 9-11)."""

    name: str
    mu: float  # mean magnitude
    s: float  # sparsity: fraction of |a| < eps
    v: float  # variance
    calls: int = 0  # forward calls seen over all samples
    elements: int = 0  # activation elements seen over all samples


@dataclass
class ActivationStats:
    """Per-module statistics of one model on K samples."""

    source: str  # "output" | "adapter" (resolved, never "auto")
    eps: float
    k: int
    modules: dict[str, ModuleStats]
    sample_ids: list[str] = field(default_factory=list)
    model: str | None = None
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "source": self.source,
            "eps": self.eps,
            "k": self.k,
            "sample_ids": list(self.sample_ids),
            "modules": {n: {k: v for k, v in asdict(m).items() if k != "name"} for n, m in self.modules.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActivationStats":
        modules = {n: ModuleStats(name=n, **m) for n, m in d["modules"].items()}
        return cls(
            source=d["source"], eps=float(d["eps"]), k=int(d["k"]), modules=modules,
            sample_ids=list(d.get("sample_ids") or []), model=d.get("model"), dataset=d.get("dataset"),
        )


def _active_adapter(name: str, module: torch.nn.Module) -> str:
    active = [a for a in getattr(module, "active_adapters", []) if a in module.lora_A]
    if len(active) != 1:
        raise ValueError(
            f"module {name!r} has active adapters {active!r}; the adapter-branch statistics need exactly one "
            "(use source='output' or activate one adapter)"
        )
    if getattr(module, "merged", False):
        raise ValueError(f"module {name!r} has its adapter merged into the base weights; its branch cannot be observed")
    return active[0]


def hook_targets(
    modules: Mapping[str, torch.nn.Module], source: str
) -> tuple[str, dict[str, tuple[torch.nn.Module, float]]]:
    """Resolve `source` and return name -> (module to hook, output scale)."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {list(SOURCES)}")
    lora = [n for n, m in modules.items() if is_lora_layer(m)]
    if source == "auto":
        source = "adapter" if lora else "output"
    targets: dict[str, tuple[torch.nn.Module, float]] = {}
    for name, module in modules.items():
        if source == "output":
            targets[name] = (module, 1.0)
            continue
        if not is_lora_layer(module):
            raise ValueError(f"source='adapter' needs LoRA-wrapped modules; {name!r} is a {type(module).__name__}")
        adapter = _active_adapter(name, module)
        # peft computes result + lora_B(lora_A(dropout(x))) * scaling: hook lora_B, fold the scale into the stats
        targets[name] = (module.lora_B[adapter], float(module.scaling[adapter]))
    return source, targets


_FUSED: Any = None  # the Triton kernel launcher, False when unavailable (resolved on first CUDA activation)
_FUSED_DEVICES = ("cuda",)  # device types whose activations go to the fused kernel


def _fused():
    """`fused_stats` from _triton_stats when Triton works here, else None (torch reductions are used)."""
    global _FUSED
    if _FUSED is None:
        if os.environ.get("GRAFT_NO_TRITON"):
            _FUSED = False
        else:
            try:
                from graft_ui.analysis._triton_stats import fused_stats

                _FUSED = fused_stats
            except Exception as exc:  # no triton, or no working compiler: the torch path is exact too
                log.info("Triton kernel unavailable (%s); activation statistics use torch reductions", exc)
                _FUSED = False
    return _FUSED or None


def count_forward_hooks(model: torch.nn.Module) -> int:
    """Forward hooks and statistics-wrapped forwards anywhere in `model` (analysis must leave none behind)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + hasattr(m.__dict__.get("forward"), "graft_stats")
               for m in model.modules())


class _Stage:
    """Rows of one activation length waiting in a staging buffer, and who they belong to."""

    __slots__ = ("buf", "arena", "rows", "meta", "thrs")

    def __init__(self, arena: torch.Tensor, length: int):
        self.arena = arena
        self.buf = arena[: (arena.numel() // length) * length].view(-1, length)
        self.rows = 0
        self.meta: list[tuple[int, int, float]] = []  # (module index, numel, scale) per row
        self.thrs: list[float] = []


class StatsAccumulator:
    """Running per-module sums over samples; hooks feed it, `end_sample` closes a sample.

    `path` picks how activations that the Triton kernel does not take are reduced:
    "auto" (CPU: "native" when the C kernel builds here, else "numpy"; other devices:
    "staged"), "native" or "numpy" (CPU only; other devices as "auto"), "staged" or
    "direct" (torch reductions per call). All give the same sums to
    float32 reduction accuracy; the choice is speed (module docstring). `stage_bytes` is
    the size of one staging buffer, `stage_buffers` how many of them one device may hold.
    """

    def __init__(
        self, names: Sequence[str], eps: float, *, path: str = "auto",
        stage_bytes: int = STAGE_BYTES, stage_buffers: int = STAGE_BUFFERS,
    ):
        if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps={eps!r} must be a positive finite number")
        if path not in PATHS:
            raise ValueError(f"path={path!r} is not one of {list(PATHS)}")
        if stage_bytes < 4 * STAGE_MIN_ROWS or stage_buffers < 1:
            raise ValueError(f"stage_bytes={stage_bytes!r} and stage_buffers={stage_buffers!r} are too small")
        self.names = list(names)
        self.eps = float(eps)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._native = _native_stats.load() if path in ("auto", "native") else None
        if path == "native" and self._native is None:
            raise RuntimeError("path='native' needs the C statistics kernel, which is unavailable here "
                               "(no C compiler, GRAFT_NO_NATIVE set, or the build failed: see the log)")
        self._host_ok = path in ("auto", "native", "numpy")
        self._stage_ok = path != "direct"
        self._arena_numel = int(stage_bytes) // 4
        self._stage_max = self._arena_numel // STAGE_MIN_ROWS  # longest activation that is staged
        self._stage_buffers = int(stage_buffers)
        self._free_buffers()
        n = len(self.names)
        self.sum_mu = np.zeros(n)
        self.sum_s = np.zeros(n)
        self.sum_v = np.zeros(n)
        self.seen = np.zeros(n, np.int64)  # samples in which the module ran
        self.calls = np.zeros(n, np.int64)
        self.elements = np.zeros(n, np.int64)
        self.k = 0
        # the call table: one row per call of finished samples not yet folded into the sums
        # (the native kernel writes its rows here directly), and where each sample's rows end
        self._used = 0
        self._bounds: list[int] = []
        self._resize_table(FOLD_ROWS)
        self._reset_pending()

    def _free_buffers(self) -> None:
        self._free: dict[torch.device, list[torch.Tensor]] = {}  # allocated staging buffers not in use
        self._arenas: dict[torch.device, int] = {}  # staging buffers allocated per device
        self._scratch: dict[torch.device, torch.Tensor] = {}
        # host path: x - x0 then |x|, |x| >= thr, and ones (for BLAS sums); a float32 copy of other dtypes
        self._host: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._host_cast: torch.Tensor | None = None

    def _reset_pending(self) -> None:
        # numpy path: finished rows (module index, numel, scale, [l1, x0, sd, sq, big])
        self._rows: list[tuple[int, int, float, list[float]]] = []
        # direct calls: host metadata, and 0-dim device tensors brought over once per sample
        self._meta: list[tuple[int, int, float]] = []  # (module index, numel, scale)
        self._l1: list[torch.Tensor] = []  # sum |x|
        self._x0: list[torch.Tensor] = []  # shift: the call's first element
        self._sd: list[torch.Tensor] = []  # sum (x - x0)
        self._sq: list[torch.Tensor] = []  # sum (x - x0)^2
        self._big: list[torch.Tensor] = []  # count |x| >= eps / |scale| (as a float sum)
        # fused-kernel (CUDA) calls of this sample: zeroed output slots in chunks, and their metadata
        self._chunks: list[torch.Tensor] = []
        self._fmeta: list[tuple[int, int, float, int, int]] = []  # (module, numel, scale, chunk, row)
        self._chunk_used = 0
        # staged calls: buffers in use by (device, length), and reduced buffers' (rows, 5) results
        self._stages: dict[tuple[torch.device, int], _Stage] = {}
        self._sres: list[tuple[list[tuple[int, int, float]], torch.Tensor]] = []

    def _slot(self, device: torch.device, idx: int, n: int, scale: float) -> torch.Tensor:
        """A zeroed (5,) float32 slot for one fused-kernel call; slots come in chunks (one launch per chunk)."""
        if not self._chunks or self._chunk_used == self._chunks[-1].shape[0] or self._chunks[-1].device != device:
            self._chunks.append(torch.zeros((max(64, len(self.names)), 5), dtype=torch.float32, device=device))
            self._chunk_used = 0
        slot = self._chunks[-1][self._chunk_used]
        self._fmeta.append((idx, n, scale, len(self._chunks) - 1, self._chunk_used))
        self._chunk_used += 1
        return slot

    def observe(self, name: str, a: torch.Tensor, scale: float = 1.0) -> None:
        """Reduce one activation x of module `name` (the observed activation is scale * x) to five sums.

        Per call: sum|x|, x0, sum(x - x0), sum(x - x0)^2 and count(|x| >= thr), in float32.
        The variance comes from sums shifted by the call's first element x0 (one of the
        values, so within a few standard deviations of the mean), which avoids the
        cancellation of E[x^2] - E[x]^2 when the mean is large against the spread. The
        count is exact on every path: a boolean compare on the host, 0/1 floats on a
        device. Welford-style `var_mean` would be several times slower, and so are torch's
        boolean compare-and-count kernels, hence `sum(min(sign(|x| - thr) + 1, 1))` per call
        and an in-place float `ge_` for staged rows. Which path does it: module docstring.
        """
        n = a.numel()
        if n == 0:
            return
        idx = self._index[name]
        # |scale * x| < eps  <=>  |x| < eps / |scale|
        thr = self.eps / abs(scale) if scale != 0 else math.inf
        if self._native is not None and a.is_cpu and a.dtype in _NATIVE_DTYPES and type(a) is torch.Tensor:
            self._native_sums(a, n, idx, scale, thr)
            return
        a = a.detach()
        if a.device.type in _FUSED_DEVICES and a.dtype != torch.float64 and _fused() is not None:
            # one fused kernel reading the activation once (bf16/fp16 converted in registers)
            flat = a.reshape(-1)
            flat = flat if flat.is_contiguous() else flat.contiguous()
            slot = self._slot(a.device, idx, n, scale)
            try:
                _fused()(flat, slot, thr)
                return
            except Exception as exc:  # a kernel that cannot compile here: fall back for good
                global _FUSED
                _FUSED = False
                self._fmeta.pop()
                log.warning("Triton statistics kernel failed (%s); using torch reductions", exc)
        if a.dtype != torch.float64:
            if a.is_cpu and self._host_ok:
                try:
                    self._rows.append((idx, n, scale, self._host_sums(a, n, thr)))
                    return
                except (RuntimeError, TypeError) as exc:  # e.g. a tensor subclass numpy cannot view
                    log.debug("numpy statistics unavailable for %s (%s); using torch reductions", name, exc)
            if n <= self._stage_max and self._stage_ok:
                self._stage(a, n, idx, scale, thr)
                return
        if a.dtype not in (torch.float32, torch.float64):
            a = a.float()  # half precision loses too much in variances; one transient copy
        flat = a.reshape(-1)
        ab = flat.abs()
        # cloned: a view would keep the whole activation alive until the end of the sample
        x0 = flat[0].clone()
        d = flat - x0
        self._meta.append((idx, n, scale))
        self._x0.append(x0)
        self._l1.append(ab.sum())
        # 1 where |x| >= thr, else 0: sign(|x| - thr) is exact (no rounding at the boundary)
        big = (ab - thr).sign_().add_(1.0).clamp_(max=1.0)
        self._big.append(big.sum())
        self._sd.append(d.sum())
        self._sq.append(torch.dot(d, d))

    def _native_sums(self, a: torch.Tensor, n: int, idx: int, scale: float, thr: float) -> None:
        """One pass of the C kernel over a CPU float32/bfloat16 activation, straight into the call table."""
        i = self._used
        if i == self._table.shape[0]:
            self._grow()
        a = a if a.is_contiguous() else a.contiguous()
        self._native[a.dtype is torch.bfloat16](a.data_ptr(), n, thr, self._table_addr + ROW_BYTES * i, idx, scale)
        self._used = i + 1

    def _grow(self, rows: int = 0) -> None:
        """Room for at least `rows` more rows (doubling): one sample may call more modules than FOLD_ROWS."""
        self._resize_table(max(self._used + rows, 2 * self._table.shape[0]))

    def _resize_table(self, rows: int) -> None:
        """A call table of `rows` rows holding the used ones."""
        table = np.zeros((rows, len(COLUMNS)), np.float64)
        if self._used:
            table[: self._used] = self._table[: self._used]
        self._table, self._table_addr = table, table.ctypes.data  # (.ctypes costs microseconds per use)

    def _host_sums(self, a: torch.Tensor, n: int, thr: float) -> list[float]:
        """The five sums of a CPU activation with numpy, in chunks of at most HOST_CHUNK elements.

        Preallocated scratch (no allocation per call), single-threaded, sums as BLAS dot
        products (like torch.dot); the chunks' partial sums add up in float64. One scratch
        buffer serves x - x0 and then |x|, to keep the footprint in cache small.
        """
        m = min(n, HOST_CHUNK)
        if self._host is None or self._host[0].size < m:
            # at least doubled: lengths that grow sample by sample do not reallocate every time
            m = min(max(m, 2 * (self._host[0].size if self._host else 0)), HOST_CHUNK)
            self._host = (np.empty(m, np.float32), np.empty(m, np.bool_), np.ones(m, np.float32))
        buf, ge_buf, ones = self._host
        if a.dtype == torch.float32:
            x = a.numpy().reshape(-1)  # a view of the tensor's memory; numpy reshapes cheaper than torch
            flat = cast = None
        else:  # bf16/fp16: converted chunk by chunk into a float32 buffer
            x, flat = None, a.reshape(-1)
            if self._host_cast is None or self._host_cast.numel() < buf.size:
                self._host_cast = torch.empty(buf.size, dtype=torch.float32)
            cast = self._host_cast
        t32 = np.float32(thr)  # the comparison in float32, as on the other paths
        x0 = None
        l1 = sd = sq = 0.0
        big = 0
        for start in range(0, n, HOST_CHUNK):
            c = min(n - start, HOST_CHUNK)
            if x is not None:
                xs = x[start : start + c]
            else:
                cast[:c].copy_(flat[start : start + c])  # type: ignore[index]
                xs = cast[:c].numpy()  # type: ignore[index]
            if x0 is None:
                x0 = xs[0]  # a numpy scalar (a copy), in float32 like the shift on the other paths
            o, s = ones[:c], buf[:c]
            np.subtract(xs, x0, out=s)
            sd += float(np.dot(s, o))
            sq += float(np.dot(s, s))
            np.abs(xs, out=s)
            l1 += float(np.dot(s, o))
            big += int(np.count_nonzero(np.greater_equal(s, t32, out=ge_buf[:c])))
        return [l1, float(x0), sd, sq, float(big)]

    def _stage(self, a: torch.Tensor, n: int, idx: int, scale: float, thr: float) -> None:
        """Copy one activation into its length's staging buffer (a copy: later in-place ops cannot change it)."""
        device = a.device
        st = self._stages.get((device, n))
        if st is None:
            st = self._stages[(device, n)] = _Stage(self._take_arena(device), n)
        # copy_ casts to float32; a strided activation is copied through a row viewed in its shape
        row = st.buf[st.rows]
        if a.is_contiguous():
            row.copy_(a.view(-1))
        else:
            row.view(a.shape).copy_(a)
        st.rows += 1
        st.meta.append((idx, n, scale))
        st.thrs.append(thr)
        if st.rows == st.buf.shape[0]:
            self._reduce_stage(st)

    def _take_arena(self, device: torch.device) -> torch.Tensor:
        free = self._free.setdefault(device, [])
        if free:
            return free.pop()
        if self._arenas.get(device, 0) >= self._stage_buffers:
            # every buffer of this device holds another length: reduce them all and reuse them
            for key in [k for k in self._stages if k[0] == device]:
                st = self._stages.pop(key)
                self._reduce_stage(st)
                free.append(st.arena)
            return free.pop()
        self._arenas[device] = self._arenas.get(device, 0) + 1
        return self._empty(device)

    def _empty(self, device: torch.device) -> torch.Tensor:
        # a normal tensor even under inference_mode: hooks may also run outside it, and an
        # inference tensor cannot be written there
        with torch.inference_mode(False):
            return torch.empty(self._arena_numel, dtype=torch.float32, device=device)

    def _reduce_stage(self, st: _Stage) -> None:
        """Reduce a staging buffer's rows in a few batched ops (one (rows, 5) result) and empty it.

        Per row the same sums as the direct path: sum|x|, x0, sum(x - x0), sum(x - x0)^2 and
        count(|x| >= thr). The buffer is scratch space once copied, so it is shifted in place.
        """
        r = st.rows
        if r == 0:
            return
        x = st.buf[:r]
        length = x.shape[1]
        scratch = self._scratch.get(x.device)
        if scratch is None:
            scratch = self._scratch[x.device] = self._empty(x.device)
        ab = scratch[: r * length].view(r, length)
        thrs = st.thrs
        if all(t == thrs[0] for t in thrs):
            thr: float | torch.Tensor = thrs[0]
        else:
            thr = torch.tensor(thrs, dtype=torch.float32).view(r, 1).to(x.device)
        x0 = x[:, :1].clone()
        torch.abs(x, out=ab)
        l1 = ab.sum(1)
        # in place, float 1.0 / 0.0: an exact count, and cheaper than a bool tensor summed in int64
        big = ab.ge_(thr).sum(1)
        d = x.sub_(x0)
        sd = d.sum(1)
        sq = d.square_().sum(1)
        self._sres.append((st.meta, torch.stack([l1, x0.view(r), sd, sq, big], 1)))
        st.rows, st.meta, st.thrs = 0, [], []

    def end_sample(self) -> None:
        """Fold the pending per-call sums of one sample into the running sums (one host transfer per device)."""
        for st in self._stages.values():
            self._reduce_stage(st)
            self._free.setdefault(st.arena.device, []).append(st.arena)
        rows, meta, fmeta, chunks, sres = self._rows, self._meta, self._fmeta, self._chunks, self._sres
        parts = self._l1 + self._x0 + self._sd + self._sq + self._big
        self._reset_pending()
        # the other paths' calls: ((module index, numel, scale) per call, (calls, 5) sums [l1, x0, sd, sq, big])
        blocks: list[tuple[list[tuple[int, int, float]], np.ndarray]] = []
        if rows:
            blocks.append(([r[:3] for r in rows], np.array([r[3] for r in rows], np.float64)))
        if meta:
            # one device -> host transfer per sample
            blocks.append((meta, torch.stack(parts).double().cpu().view(5, len(meta)).t().numpy()))
        if fmeta:
            fvals = [ch.double().cpu().numpy() for ch in chunks]  # one transfer per chunk of 64+ calls
            blocks.append(([f[:3] for f in fmeta], np.stack([fvals[ci][ri] for *_, ci, ri in fmeta])))
        by_device: dict[torch.device, list[tuple[list[tuple[int, int, float]], torch.Tensor]]] = {}
        for item in sres:
            by_device.setdefault(item[1].device, []).append(item)
        for items in by_device.values():
            blocks.append(([m for metas, _ in items for m in metas], torch.cat([t for _, t in items]).double().cpu().numpy()))
        if blocks:
            c = sum(len(ms) for ms, _ in blocks)
            if self._used + c > self._table.shape[0]:
                self._grow(c)
            new = self._table[self._used : self._used + c]
            new[:, :5] = np.concatenate([v for _, v in blocks])
            new[:, _META_COLUMNS] = np.array([m for ms, _ in blocks for m in ms], np.float64).reshape(-1, 3)
            self._used += c
        self.k += 1
        self._bounds.append(self._used)
        if self._used >= FOLD_ROWS // 2:  # the other half is room for the next sample
            self._fold()

    def _fold(self) -> None:
        """Fold the finished samples' calls into the running sums: per sample, pool each module's calls
        (mean and squared deviations by Chan et al.), then add the sample's statistics (eqs 9-11)."""
        if not self._bounds:
            return
        done = self._bounds[-1]
        t = self._table[:done]
        ns, m = len(self._bounds), len(self.names)
        sample = np.repeat(np.arange(ns), np.diff(np.array(self._bounds), prepend=0))
        l1, x0, sd, sq, big, n, mod, sc = t.T
        key = sample * m + mod.astype(np.intp)  # (sample, module) pairs
        size = ns * m
        # per call: its mean and sum of squared deviations, from the shifted sums
        mean = x0 + sd / n
        m2 = np.maximum(sq - sd * sd / n, 0.0)
        total = np.bincount(key, n, size)
        ran = total > 0
        total[~ran] = 1.0
        gmean = np.bincount(key, n * mean, size) / total
        m2 = np.bincount(key, m2 + n * (mean - gmean[key]) ** 2, size)
        scale = np.zeros(size)
        scale[key] = sc  # one scale per module
        per_sample = lambda v: v.reshape(ns, m).sum(0)  # noqa: E731
        self.sum_mu += per_sample(np.abs(scale) * np.bincount(key, l1, size) / total)
        self.sum_s += per_sample(np.bincount(key, n - big, size) / total)
        self.sum_v += per_sample(scale * scale * m2 / total)
        self.seen += per_sample(ran).astype(np.int64)
        self.calls += np.bincount(mod.astype(np.intp), None, m).astype(np.int64)
        self.elements += per_sample(np.where(ran, total, 0.0)).astype(np.int64)
        # rows after the last finished sample (none between hooks and end_sample) move to the front
        rest = self._used - done
        self._table[:rest] = self._table[done : self._used]
        self._used, self._bounds = rest, []

    def discard_sample(self) -> None:
        """Drop what the current sample has pending, fold the finished ones and free the scratch buffers
        (hooks removed, or a failure)."""
        self._reset_pending()
        self._used = self._bounds[-1] if self._bounds else 0
        self._fold()
        self._free_buffers()
        if self._table.shape[0] > FOLD_ROWS:  # grown by one large sample
            self._resize_table(FOLD_ROWS)

    def result(self) -> dict[str, ModuleStats]:
        self._fold()
        out = {}
        missing = [n for n, s in zip(self.names, self.seen) if s == 0]
        if missing and self.k:
            log.warning("%d module(s) never ran on the samples and are left out: %s", len(missing), missing[:5])
        for i, name in enumerate(self.names):
            if self.seen[i] == 0:
                continue
            # average over the samples in which the module ran (all K for every language-model
            # module; a vision block does not run on text-only samples)
            k = int(self.seen[i])
            out[name] = ModuleStats(
                name=name, mu=float(self.sum_mu[i]) / k, s=float(self.sum_s[i]) / k, v=float(self.sum_v[i]) / k,
                calls=int(self.calls[i]), elements=int(self.elements[i]),
            )
        return out


@contextlib.contextmanager
def stat_hooks(
    targets: Mapping[str, tuple[torch.nn.Module, float]], acc: StatsAccumulator
) -> Iterator[StatsAccumulator]:
    """Observe every target's output; all of it is undone on exit, also on an exception.

    A target's `forward` is wrapped (an instance attribute over the class's method) rather
    than given a forward hook: nn.Module sends every call of a module that has hooks
    through its slow path, a few microseconds a call, which on a small model is several
    percent of the forward pass; a wrapped forward keeps the fast path.
    """
    undo: list[Callable[[], None]] = []
    try:
        for name, (module, scale) in targets.items():
            undo.append(_observe_forward(module, name, scale, acc))
        yield acc
    finally:
        for u in reversed(undo):
            u()
        acc.discard_sample()


def _observe_forward(module: torch.nn.Module, name: str, scale: float, acc: StatsAccumulator) -> Callable[[], None]:
    """Make `module` report its output to `acc`; returns what undoes it."""
    own = module.__dict__.get("forward")  # e.g. accelerate's hooks wrap forward the same way
    inner = module.forward

    def forward(*args, **kwargs):
        output = inner(*args, **kwargs)
        acc.observe(name, output[0] if isinstance(output, tuple) else output, scale)
        return output

    forward.graft_stats = True  # type: ignore[attr-defined]
    module.forward = forward

    def restore() -> None:
        if own is None:
            del module.forward
        else:
            module.forward = own

    return restore


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "answer_start"}


def _progress_fn(progress, total: int, desc: str):
    """progress: None/False (silent), True (tqdm bar), or a callable(done, total)."""
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False)
        return (lambda done, _t: bar.update(1)), bar.close
    if callable(progress):
        return progress, (lambda: None)
    return (lambda done, _t: None), (lambda: None)


def collect_stats(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    modules: Mapping[str, torch.nn.Module] | None = None,
    scope: Scope | None = None,
    source: str = "auto",
    eps: float = DEFAULT_EPS,
    total: int | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    sample_ids: Sequence[str] = (),
    model_name: str | None = None,
    dataset: str | None = None,
) -> ActivationStats:
    """Run one forward pass per batch (one sample each) and return per-module statistics.

    `batches` are model inputs (e.g. from `build_inputs`); `modules` defaults to
    `scope_modules(model, scope)`. Hooks are removed afterwards, also when a forward
    pass raises.
    """
    modules = dict(modules) if modules is not None else scope_modules(model, scope)
    resolved, targets = hook_targets(modules, source)
    acc = StatsAccumulator(list(modules), eps)
    device = model_device(model)
    batches = list(batches) if total is None else batches
    total = len(batches) if total is None else total  # type: ignore[arg-type]
    step, close = _progress_fn(progress, total, f"activations ({resolved})")
    was_training = model.training
    model.eval()
    try:
        with stat_hooks(targets, acc), torch.inference_mode():
            for i, batch in enumerate(batches):
                model(**_to_device(batch, device), use_cache=False, logits_to_keep=1)
                acc.end_sample()
                step(i + 1, total)
    finally:
        close()
        model.train(was_training)
    if acc.k == 0:
        raise ValueError("no samples were given to collect activation statistics on")
    stats = acc.result()
    log.info("activation statistics (%s, eps=%g) of %d modules over %d samples", resolved, eps, len(stats), acc.k)
    return ActivationStats(
        source=resolved, eps=float(eps), k=acc.k, modules=stats, sample_ids=list(sample_ids),
        model=model_name, dataset=dataset,
    )
