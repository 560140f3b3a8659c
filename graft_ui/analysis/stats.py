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
  dtypes) numpy does it on the same memory (`_portable_stats`, bounded scratch).
- other devices (CUDA without Triton): small activations are copied into staging
  buffers and reduced a buffer at a time in a few batched ops; larger ones, and float64
  ones anywhere, by torch ops in the hook (`_portable_stats`, bounded buffers).
Running a model over samples with these observers attached: `collect.collect_stats`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from graft_ui.analysis import _native_stats
from graft_ui.analysis._portable_stats import STAGE_BUFFERS, STAGE_BYTES, PortableSums

log = logging.getLogger(__name__)

DEFAULT_EPS = 1e-3
PATHS = ("auto", "native", "numpy", "staged", "direct")
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
                from graft_ui.analysis._triton_stats import fused_stats  # needs triton (optional, CUDA only)

                _FUSED = fused_stats
            except Exception as exc:  # no triton, or no working compiler: the torch path is exact too
                log.info("Triton kernel unavailable (%s); activation statistics use torch reductions", exc)
                _FUSED = False
    return _FUSED or None


def count_forward_hooks(model: torch.nn.Module) -> int:
    """Forward hooks and statistics-wrapped forwards anywhere in `model` (analysis must leave none behind)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + hasattr(m.__dict__.get("forward"), "graft_stats")
               for m in model.modules())


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
        self.portable = PortableSums(stage_bytes, stage_buffers)  # the numpy, staged and direct paths
        self.names = list(names)
        self.eps = float(eps)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._native = _native_stats.load() if path in ("auto", "native") else None
        if path == "native" and self._native is None:
            raise RuntimeError("path='native' needs the C statistics kernel, which is unavailable here "
                               "(no C compiler, GRAFT_NO_NATIVE set, or the build failed: see the log)")
        self._host_ok = path in ("auto", "native", "numpy")
        self._stage_ok = path != "direct"
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

    def _reset_pending(self) -> None:
        self.portable.reset()
        # fused-kernel (CUDA) calls of this sample: zeroed output slots in chunks, and their metadata
        self._chunks: list[torch.Tensor] = []
        self._fmeta: list[tuple[int, int, float, int, int]] = []  # (module, numel, scale, chunk, row)
        self._chunk_used = 0

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
                    self.portable.host(a, n, idx, scale, thr)
                    return
                except (RuntimeError, TypeError) as exc:  # e.g. a tensor subclass numpy cannot view
                    log.debug("numpy statistics unavailable for %s (%s); using torch reductions", name, exc)
            if n <= self.portable.stage_max and self._stage_ok:
                self.portable.stage(a, n, idx, scale, thr)
                return
        self.portable.direct(a, n, idx, scale, thr)

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

    def end_sample(self) -> None:
        """Fold the pending per-call sums of one sample into the running sums (one host transfer per device)."""
        host, direct, staged = self.portable.take()
        fmeta, chunks = self._fmeta, self._chunks
        self._reset_pending()
        # the other paths' calls: ((module index, numel, scale) per call, (calls, 5) sums [l1, x0, sd, sq, big])
        blocks = host + direct
        if fmeta:
            fvals = [ch.double().cpu().numpy() for ch in chunks]  # one transfer per chunk of 64+ calls
            blocks.append(([f[:3] for f in fmeta], np.stack([fvals[ci][ri] for *_, ci, ri in fmeta])))
        blocks += staged
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
        self.portable.free_buffers()
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
