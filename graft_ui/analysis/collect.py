"""Run a model over K samples with the statistics observers attached (DESIGN.md §2.5).

`collect_stats` resolves which activation each module reports ("source", see stats.py),
wraps the modules' forwards (`stats.stat_hooks`), runs one forward pass per sample and
returns the `ActivationStats`; the reductions themselves are stats.StatsAccumulator's.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from graft_ui.analysis.modules import is_lora_layer, scope_modules
from graft_ui.analysis.stats import DEFAULT_EPS, ActivationStats, StatsAccumulator, stat_hooks
from graft_ui.recipe import Scope

log = logging.getLogger(__name__)

SOURCES = ("auto", "output", "adapter")


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
