"""Calibrate Graft's learnable phi (paper 3.1; DESIGN.md §2 "optional calibration").

phi(d) = alpha * (d - mean d) / (std d + eps) + beta has two scalars per fused module.
Calibration learns them, and nothing else, with Adam on K target samples: the loss is
the fused model's next-token cross-entropy on the samples' answers (prompt tokens are
masked), every model weight frozen. The fused weights are a differentiable function of
(alpha, beta) through the local gate w_loc = sigmoid(phi(d)) and the dual gate
(`phi_graphs`): full experts' fused linears are substituted into the first expert's
model with `torch.func.functional_call`; LoRA experts' fused adapters run as forward
hooks on the base model. With more than two experts one (alpha, beta) per module serves
every step of the left-to-right chain, as in `Recipe.phi`.

The returned phi is the one with the lowest calibration loss seen (the initial phi
included), so calibration never makes the loss on its own samples worse; it goes into
`Recipe.phi` and gates.json, and the fusion reproduces without data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from graft_ui.analysis.data import Sample, load_target, read_jsonl, select
from graft_ui.analysis.modules import scope_modules
from graft_ui.analysis.phi_graphs import FullGraph, LoraGraph, ModuleGraph
from graft_ui.merging.registry import get_method, validate_params
from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.inputs import build_inputs
from graft_ui.models.keys import parse_module, parse_param
from graft_ui.models.loading import is_adapter, load_model, load_processor, local_folder, resolve_device
from graft_ui.models.lora_io import LoraAdapter, check_bases
from graft_ui.recipe import Recipe

log = logging.getLogger(__name__)

@dataclass
class CalibrationResult:
    phi: dict[str, dict[str, float]]
    loss_before: float
    loss_after: float
    losses: list[float] = field(default_factory=list)  # loss at each step's phi (before its update)
    best_step: int = 0


# ------------------------------------------------------------------------------- samples

def _as_sample(s: Any, i: int) -> Sample:
    if isinstance(s, Sample):
        return s
    if isinstance(s, Mapping) and "messages" in s:
        ans = s.get("answer")
        return Sample(id=str(s.get("id", f"sample-{i}")), messages=list(s["messages"]),
                      answer=None if ans is None else str(ans), root=str(s.get("root", ".")), domain=s.get("domain"))
    raise ValueError(f"calibration sample {i} is not a Sample or a dict with 'messages': {type(s).__name__}")


def calibration_samples(recipe: Recipe, manifest=None, *, seed: int | None = None) -> list[Sample]:
    """recipe.calibrate.samples samples of recipe.calibrate.dataset.

    dataset: a JSONL path, a manifest domain (or union "a+b"), or None = the first expert's
    domain in `manifest` (matched by path or name). Domains give their *train* split: phi is
    learnt, so the eval split stays held out for the benchmark of the fused model.
    """
    cal = recipe.calibrate
    if cal is None:
        raise ValueError("recipe has no 'calibrate' section")
    seed = recipe.seed if seed is None else seed
    spec = cal.dataset
    if spec is None:
        if manifest is None:
            raise ValueError("calibrate.dataset is not set and no manifest was given to find the first expert's domain")
        first = recipe.experts[0]
        for e in manifest.experts:
            if e.name == first.name or Path(e.path).resolve() == Path(first.path).resolve():
                if e.domain and e.domain in manifest.datasets:
                    spec = e.domain
                    break
        if spec is None:
            raise ValueError(f"calibrate.dataset is not set and expert {first.path!r} has no domain dataset in the manifest")
    if Path(spec).is_file():
        return select(read_jsonl(spec), cal.samples, seed)
    return load_target(spec, cal.samples, manifest=manifest, seed=seed, split="train")


def _encode(processor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Inputs with labels on the answer tokens only (prompt masked with -100)."""
    out = []
    for s in samples:
        if not s.answer:
            log.warning("calibration sample %s has no answer; skipped", s.id)
            continue
        inp = build_inputs(processor, s.messages, answer=s.answer, root=s.root)
        start = int(inp.pop("answer_start"))
        labels = inp["input_ids"].clone()
        labels[:, :start] = -100
        out.append({**dict(inp), "labels": labels})
    if not out:
        raise ValueError("no calibration sample has an answer to compute the next-token loss on")
    return out


# ------------------------------------------------------------------------------- calibrator

class GraftCalibrator:
    """Holds the frozen model, the per-module fusion graphs and the (alpha, beta) leaves.

    `calibrate_phi` is the one-call API; this class is exposed for tests and tools that
    want the fused tensors (`fused_tensors()`) or the loss at a given phi (`loss()`).
    """

    def __init__(self, recipe: Recipe, *, device: str | torch.device | None = None):
        if recipe.method != "graft":
            raise ValueError(f"calibration learns Graft's phi; recipe method is {recipe.method!r}")
        if len(recipe.experts) < 2:
            raise ValueError(f"calibration needs two or more experts, recipe lists {len(recipe.experts)}")
        self.recipe = recipe
        self.params = validate_params("graft", recipe.params)
        if self.params["gates"] == "global":
            log.warning("gates='global': phi (local gate) has no effect; calibration will leave it unchanged")
        self.device = resolve_device(device or recipe.device)
        paths = [e.path for e in recipe.experts]
        adapters = [is_adapter(p) for p in paths]
        if any(adapters) and not all(adapters):
            raise ValueError(f"recipe mixes LoRA adapters and full checkpoints: {paths}")
        self.kind = "lora" if all(adapters) else "full"
        self.graphs: dict[str, ModuleGraph] = {}
        self._hooks: list[Any] = []
        if self.kind == "lora":
            ads = [LoraAdapter(p, label=e.name or p) for p, e in zip(paths, recipe.experts)]
            base = check_bases(ads, recipe.base)
            self.processor_ref = base
            self.model = load_model(base, device=self.device, dtype=torch.float32)
            self.model.requires_grad_(False)
            mods = scope_modules(self.model, recipe.scope)
            partial = []
            for name, module in mods.items():
                found = [ad.modules.get(parse_module(name)) for ad in ads]
                if all(f is None for f in found):
                    continue  # no expert adapts it: the fusion copies nothing there either
                if any(f is None for f in found):
                    partial.append(name)
                factors = []
                for ad, mod in zip(ads, found):
                    if mod is None:
                        # as the merge engine: an expert that never adapted a module has a zero (rank-0) delta there
                        M, N = module.weight.shape
                        z = torch.zeros(0, device=self.device)
                        factors.append((z.new_zeros(M, 0), z.new_zeros(0, N), 1.0))
                    else:
                        B, A = ad.read(mod, self.device)
                        factors.append((B, A, float(mod.scale)))
                self.graphs[name] = LoraGraph(name, factors, self.params)
                self._hooks.append(module.register_forward_hook(self._lora_hook(self.graphs[name])))
            for ad in ads:
                ad.close()
            if partial:
                log.info("%d module(s) are adapted by some experts only; the others count as zero deltas: %s",
                         len(partial), partial[:5])
        else:
            self.processor_ref = paths[0]
            self.model = load_model(paths[0], device=self.device, dtype=torch.float32)
            self.model.requires_grad_(False)
            mods = scope_modules(self.model, recipe.scope)
            tensors: list[dict[str, torch.Tensor]] = []
            base_params = get_method("graft").base_params(self.params)  # scale != 1 reads the base
            if base_params and recipe.base is None:
                raise ValueError(f"graft with {base_params[0]}={self.params[base_params[0]]!r} needs recipe.base "
                                 "for full experts; set base: in the recipe")
            for p in ([local_folder(recipe.base)] if base_params else []) + paths[1:]:
                ck = Checkpoint(p)
                found: dict[str, torch.Tensor] = {}
                for tname in ck.names:
                    key, leaf = parse_param(tname)
                    if key is not None and key.name in mods and leaf in ("weight", "bias"):
                        found[f"{key.name}.{leaf}"] = ck.read(tname).to(self.device, torch.float32)
                ck.close()
                tensors.append(found)
            base = tensors.pop(0) if base_params else None
            for name, module in mods.items():
                ws = [module.weight.detach()]
                bs = [module.bias.detach()] if module.bias is not None else None
                for i, found in enumerate(tensors, 1):
                    if f"{name}.weight" not in found:
                        raise ValueError(f"expert {paths[i]!r} has no tensor for module {name!r}")
                    ws.append(found[f"{name}.weight"])
                    if bs is not None:
                        bs.append(found[f"{name}.bias"])
                base_wb = None
                if base is not None:
                    if f"{name}.weight" not in base:
                        raise ValueError(f"base {recipe.base!r} has no tensor for module {name!r}")
                    base_wb = (base[f"{name}.weight"], base[f"{name}.bias"] if bs is not None else None)
                self.graphs[name] = FullGraph(name, ws, bs, self.params, base_wb)
        if not self.graphs:
            raise ValueError("no fused module to calibrate in the recipe's scope")
        init = {m: recipe.phi.get(m, {"alpha": self.params["alpha"], "beta": self.params["beta"]}) for m in self.graphs}
        self.alpha = {m: torch.tensor(float(v["alpha"]), dtype=torch.float64, device=self.device, requires_grad=True)
                      for m, v in init.items()}
        self.beta = {m: torch.tensor(float(v["beta"]), dtype=torch.float64, device=self.device, requires_grad=True)
                     for m, v in init.items()}
        log.info("calibrating phi of %d %s modules on %s", len(self.graphs), self.kind, self.device)

    @staticmethod
    def _lora_hook(graph: LoraGraph):
        def hook(_module, args, output):
            return output + graph.delta(args[0]).to(output.dtype)

        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def phi(self) -> dict[str, dict[str, float]]:
        return {m: {"alpha": float(self.alpha[m].detach()), "beta": float(self.beta[m].detach())} for m in self.graphs}

    def set_phi(self, phi: Mapping[str, Mapping[str, float]]) -> None:
        with torch.no_grad():
            for m, ab in phi.items():
                if m in self.alpha:
                    self.alpha[m].fill_(float(ab["alpha"]))
                    self.beta[m].fill_(float(ab["beta"]))

    def parameters(self) -> list[torch.Tensor]:
        return [t for m in self.graphs for t in (self.alpha[m], self.beta[m])]

    def _prepare(self) -> dict[str, torch.Tensor]:
        """Rebuild the fused weights (full) or the adapter coefficients (LoRA) from alpha/beta."""
        overrides: dict[str, torch.Tensor] = {}
        for m, g in self.graphs.items():
            if isinstance(g, FullGraph):
                overrides.update(g.fused(self.alpha[m], self.beta[m]))
            else:
                g.compute(self.alpha[m], self.beta[m])
        return overrides

    def _forward_loss(self, batch: Mapping[str, Any], overrides: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if overrides:
            out = torch.func.functional_call(self.model, dict(overrides), args=(), kwargs={**batch, "use_cache": False},
                                             strict=False)
        else:
            out = self.model(**batch, use_cache=False)
        return out.loss

    def loss(self, batches: Sequence[Mapping[str, Any]]) -> float:
        """Mean next-token loss over `batches` at the current phi (no gradients)."""
        with torch.no_grad():
            overrides = self._prepare()
            return float(sum(float(self._forward_loss(b, overrides)) for b in batches) / len(batches))

    def step_loss(self, batches: Sequence[Mapping[str, Any]]) -> float:
        """Accumulate d(mean loss)/d(alpha, beta) over `batches`; returns the mean loss."""
        total = 0.0
        overrides = self._prepare()  # fused weights / coefficients: built once, shared by the samples
        for i, b in enumerate(batches):
            loss = self._forward_loss(b, overrides) / len(batches)
            # keep the (alpha, beta) -> fused-weight part of the graph for the next sample
            loss.backward(retain_graph=i < len(batches) - 1)
            total += float(loss.detach())
        return total

    def fused_tensors(self) -> dict[str, torch.Tensor]:
        """The fused tensors at the current phi: `{module}.weight/.bias` (full) or `{module}.lora_B/.lora_A` (LoRA, scale 1)."""
        with torch.no_grad():
            overrides = self._prepare()
            out = {k: v.detach().clone() for k, v in overrides.items()}
            for m, g in self.graphs.items():
                if isinstance(g, LoraGraph):
                    B, A = g.fused_adapter()
                    out[f"{m}.lora_B"] = B.clone()
                    out[f"{m}.lora_A"] = A.clone()
        return out


def calibrate_phi(
    recipe: Recipe,
    samples: Sequence[Sample | Mapping[str, Any]],
    *,
    steps: int | None = None,
    lr: float | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    device: str | torch.device | None = None,
    processor=None,
    detail: bool = False,
) -> tuple[dict[str, dict[str, float]], float, float] | CalibrationResult:
    """Learn (alpha, beta) per fused module; returns (phi, loss_before, loss_after).

    `samples`: target samples with answers (analysis `Sample`s or JSONL-style dicts with
    messages / answer / root). steps and lr default to recipe.calibrate's (else 20, 0.05).
    progress: True for a tqdm bar, or a callable(done, total). detail=True returns a
    CalibrationResult with the loss curve instead of the tuple.
    Put the result in the recipe as `recipe.replace(phi=phi)` before fusing.
    """
    cal = recipe.calibrate
    steps = int(steps if steps is not None else (cal.steps if cal else 20))
    lr = float(lr if lr is not None else (cal.lr if cal else 0.05))
    if steps < 0:
        raise ValueError(f"steps={steps!r} must be >= 0")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be positive")
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    calib = GraftCalibrator(recipe, device=device)
    try:
        processor = processor or load_processor(calib.processor_ref)
        batches = _encode(processor, samples)
        opt = torch.optim.Adam(calib.parameters(), lr=lr)
        losses: list[float] = []
        best = (math.inf, calib.phi(), 0)
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="calibrating phi", leave=False)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = calib.step_loss(batches)  # loss at the current phi, before this update
            losses.append(loss)
            if loss < best[0]:
                best = (loss, calib.phi(), step)
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            elif callable(progress):
                progress(step + 1, steps)
            log.debug("calibration step %d: loss %.5f", step, loss)
        if bar is not None:
            bar.close()
        final = calib.loss(batches)
        loss_before = losses[0] if losses else final
        if final <= best[0]:
            best = (final, calib.phi(), steps)
        calib.set_phi(best[1])
        result = CalibrationResult(phi=best[1], loss_before=loss_before, loss_after=best[0],
                                   losses=losses + [final], best_step=best[2])
        log.info("calibration: loss %.4f -> %.4f over %d steps (best at step %d)",
                 loss_before, best[0], steps, best[2])
    finally:
        calib.close()
    if detail:
        return result
    return result.phi, result.loss_before, result.loss_after


def calibrate_recipe(
    recipe: Recipe,
    manifest=None,
    *,
    progress: bool | Callable[[int, int], None] | None = None,
    device: str | torch.device | None = None,
) -> tuple[Recipe, dict[str, Any]]:
    """What the merge engine calls when `recipe.calibrate` is set.

    Returns (the recipe with the learned `phi` and no `calibrate` section, so that it
    reproduces the fusion without data; a JSON-able record for gates.json:
    {"samples", "steps", "lr", "dataset", "sample_ids", "loss_before", "loss_after",
    "losses", "best_step"}).
    """
    cal = recipe.calibrate
    if cal is None:
        raise ValueError("recipe has no 'calibrate' section")
    samples = calibration_samples(recipe, manifest)
    res = calibrate_phi(recipe, samples, steps=cal.steps, lr=cal.lr, progress=progress, device=device, detail=True)
    record = {"samples": len(samples), "steps": cal.steps, "lr": cal.lr, "dataset": cal.dataset,
              "sample_ids": [s.id for s in samples], "loss_before": res.loss_before, "loss_after": res.loss_after,
              "losses": res.losses, "best_step": res.best_step}
    return recipe.replace(phi={**dict(recipe.phi), **res.phi}, calibrate=None), record
