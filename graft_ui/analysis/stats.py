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

Memory stays bounded: hooks reduce each activation on its device to a handful of
scalars (no activation is kept), and the scalars of one sample are brought to the host
in one transfer at the end of that sample (no device sync per module).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from graft_ui.analysis.modules import is_lora_layer, scope_modules
from graft_ui.recipe import Scope

log = logging.getLogger(__name__)

SOURCES = ("auto", "output", "adapter")
DEFAULT_EPS = 1e-3


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
    """Forward hooks registered anywhere in `model` (tests check analysis leaves none behind)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class StatsAccumulator:
    """Running per-module sums over samples; hooks feed it, `end_sample` closes a sample."""

    def __init__(self, names: Sequence[str], eps: float):
        if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps={eps!r} must be a positive finite number")
        self.names = list(names)
        self.eps = float(eps)
        self._index = {n: i for i, n in enumerate(self.names)}
        # per hook call: host metadata, and 0-dim device tensors brought over once per sample
        self._meta: list[tuple[int, int, float]] = []  # (module index, numel, scale)
        self._l1: list[torch.Tensor] = []  # sum |x|
        self._x0: list[torch.Tensor] = []  # shift: the call's first element
        self._sd: list[torch.Tensor] = []  # sum (x - x0)
        self._sq: list[torch.Tensor] = []  # sum (x - x0)^2
        self._big: list[torch.Tensor] = []  # count |x| >= eps / |scale| (as a float sum)
        # fused-kernel (CUDA) calls of this sample: zeroed output slots in chunks, and their metadata
        self._chunks: list[torch.Tensor] = []
        self._fmeta: list[tuple[int, int, float, int, int]] = []
        self._chunk_used = 0
        n = len(self.names)
        self.sum_mu = [0.0] * n
        self.sum_s = [0.0] * n
        self.sum_v = [0.0] * n
        self.seen = [0] * n  # samples in which the module ran
        self.calls = [0] * n
        self.elements = [0] * n
        self.k = 0

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
        """Reduce one activation x of module `name` (the observed activation is scale * x) to scalars on its device.

        Cheap float reductions and no host sync: Welford-style `var_mean` is several times
        slower on CPU, and so are boolean compare-and-count kernels, so the sparsity count is
        `sum(min(sign(|x| - thr) + 1, 1))` (= count of |x| >= thr; exact, 0/1 terms). On CUDA
        with Triton all of it is one fused kernel (`_triton_stats`). The variance
        comes from sums shifted by the call's first element x0 (one of the values, so within
        a few standard deviations of the mean), which avoids the cancellation of
        E[x^2] - E[x]^2 when the mean is large against the spread.
        """
        a = a.detach()
        n = a.numel()
        if n == 0:
            return
        idx = self._index[name]
        # |scale * x| < eps  <=>  |x| < eps / |scale|
        thr = self.eps / abs(scale) if scale != 0 else math.inf
        if a.is_cuda and a.dtype != torch.float64 and _fused() is not None:
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

    def end_sample(self) -> None:
        """Fold the pending per-call scalars of one sample into the running sums (one host transfer)."""
        meta, fmeta, chunks = self._meta, self._fmeta, self._chunks
        parts = self._l1 + self._x0 + self._sd + self._sq + self._big
        self.discard_sample()
        self.k += 1
        rows: list[tuple[int, int, float, list[float]]] = []  # (module, numel, scale, [l1, x0, sd, sq, big])
        if meta:
            c = len(meta)
            vals = torch.stack(parts).double().cpu().tolist()  # one device -> host transfer per sample
            rows += [(idx, n, sc, [vals[i * c + j] for i in range(5)]) for j, (idx, n, sc) in enumerate(meta)]
        if fmeta:
            fvals = [ch.double().cpu().tolist() for ch in chunks]  # one transfer per chunk of 64+ calls
            rows += [(idx, n, sc, fvals[ci][ri]) for idx, n, sc, ci, ri in fmeta]
        if not rows:
            return
        per: dict[int, list[tuple[int, float, float, float, float]]] = {}
        scales: dict[int, float] = {}
        for idx, n, sc, (l1, x0, sd, sq, big) in rows:
            # per call: its mean and sum of squared deviations, from the shifted sums
            per.setdefault(idx, []).append((n, l1, x0 + sd / n, max(sq - sd * sd / n, 0.0), n - big))
            scales[idx] = sc
        for idx, calls in per.items():
            sc = scales[idx]
            total = sum(cl[0] for cl in calls)
            gmean = sum(cl[0] * cl[2] for cl in calls) / total
            # Chan et al.: pool the calls' squared deviations about the pooled mean
            m2 = sum(cl[3] + cl[0] * (cl[2] - gmean) ** 2 for cl in calls)
            self.sum_mu[idx] += abs(sc) * sum(cl[1] for cl in calls) / total
            self.sum_s[idx] += sum(cl[4] for cl in calls) / total
            self.sum_v[idx] += sc * sc * m2 / total
            self.seen[idx] += 1
            self.calls[idx] += len(calls)
            self.elements[idx] += total

    def discard_sample(self) -> None:
        self._meta, self._l1, self._x0, self._sd, self._sq, self._big = [], [], [], [], [], []
        self._chunks: list[torch.Tensor] = []
        self._fmeta: list[tuple[int, int, float, int, int]] = []  # (module, numel, scale, chunk, row)
        self._chunk_used = 0

    def result(self) -> dict[str, ModuleStats]:
        out = {}
        missing = [n for n, s in zip(self.names, self.seen) if s == 0]
        if missing and self.k:
            log.warning("%d module(s) never ran on the samples and are left out: %s", len(missing), missing[:5])
        for i, name in enumerate(self.names):
            if self.seen[i] == 0:
                continue
            # average over the samples in which the module ran (all K for every language-model
            # module; a vision block does not run on text-only samples)
            k = self.seen[i]
            out[name] = ModuleStats(
                name=name, mu=self.sum_mu[i] / k, s=self.sum_s[i] / k, v=self.sum_v[i] / k,
                calls=self.calls[i], elements=self.elements[i],
            )
        return out


@contextlib.contextmanager
def stat_hooks(
    targets: Mapping[str, tuple[torch.nn.Module, float]], acc: StatsAccumulator
) -> Iterator[StatsAccumulator]:
    """Register one forward hook per target; they are removed on exit, also on an exception."""
    handles = []

    def make(name: str, scale: float):
        def hook(_module, _args, output):
            acc.observe(name, output[0] if isinstance(output, tuple) else output, scale)

        return hook

    try:
        for name, (module, scale) in targets.items():
            handles.append(module.register_forward_hook(make(name, scale)))
        yield acc
    finally:
        for h in handles:
            h.remove()
        acc.discard_sample()


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
