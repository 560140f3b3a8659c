"""What the tuner searches for each method, and how one trial's values become a recipe.

Method parameters (ranges chosen to cover the useful region, not the validator's limits):

    graft            a [0, 1], c [1, 5000] (log), bins [4, 64] (log), gates {dual, local, global},
                     alpha [-4, 4], beta [-2, 2], scale [0.5, 3] (scale is NOT in the paper: 1 = the paper's Graft)
    ties             density [0.05, 1], lam [0.3, 2.5]
    dare_linear/ties p [0, 0.9], lam [0.3, 2.5]
    task_arithmetic  lam [0.2, 2.5]
    any other        its registry parameters with finite bounds (choices as categories)

Scope (unless `scope=False`): the fused layer range (two layer indices, sorted) and the
module types (all, attention q/k/v/o, or MLP gate/up/down). A range is widened to contain the
recipe's own value, so the recipe itself (trial 0, the "default" reference) is a point of it.
A recipe's `calibrate` section and `phi` table are dropped: calibration per trial would cost
more than the search, and a phi table would override the searched alpha/beta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from graft_ui.merging.registry import get_method
from graft_ui.recipe import ALL_MODULES, Recipe, Scope

MODULE_GROUPS = {"all": tuple(ALL_MODULES), "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
                 "mlp": ("gate_proj", "up_proj", "down_proj")}
SCOPE_DIMS = ("first_layer", "last_layer", "modules")


@dataclass(frozen=True)
class Dim:
    name: str
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple = ()

    def widened(self, value: Any) -> "Dim":
        """This dimension, stretched to contain `value` (a recipe's own setting)."""
        if self.kind == "choice":
            return self if value in self.choices else replace(self, choices=self.choices + (value,))
        v = float(value)
        if self.log and v <= 0:
            return replace(self, log=False, low=min(self.low, v), high=max(self.high, v))
        return replace(self, low=min(self.low, v), high=max(self.high, v))

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


_LAM = Dim("lam", "float", 0.3, 2.5)
SPACES: dict[str, tuple[Dim, ...]] = {
    "graft": (Dim("a", "float", 0.0, 1.0), Dim("c", "float", 1.0, 5000.0, log=True),
              Dim("bins", "int", 4, 64, log=True), Dim("gates", "choice", choices=("dual", "local", "global")),
              Dim("alpha", "float", -4.0, 4.0), Dim("beta", "float", -2.0, 2.0), Dim("scale", "float", 0.5, 3.0)),
    "ties": (Dim("density", "float", 0.05, 1.0), _LAM),
    "dare_linear": (Dim("p", "float", 0.0, 0.9), _LAM),
    "dare_ties": (Dim("p", "float", 0.0, 0.9), _LAM),
    "task_arithmetic": (Dim("lam", "float", 0.2, 2.5),),
}


def method_dims(method: str) -> tuple[Dim, ...]:
    """The searched parameters of `method` (see the module docstring)."""
    m = get_method(method)
    if m.name in SPACES:
        return SPACES[m.name]
    dims = []
    for p in m.params:
        if p.kind == "choice":
            dims.append(Dim(p.name, "choice", choices=tuple(p.choices)))
        elif p.kind in ("float", "int"):
            low = p.low if p.low is not None else p.above
            if low is not None and p.high is not None and math.isfinite(low) and math.isfinite(p.high):
                dims.append(Dim(p.name, p.kind, float(low), float(p.high)))
    return tuple(dims)


def _group(modules) -> str | None:
    return next((g for g, mods in MODULE_GROUPS.items() if set(mods) == set(modules)), None)


def recipe_values(recipe: Recipe, n_layers: int, scope: bool = True) -> dict[str, Any]:
    """The point of the search space that is `recipe` itself."""
    values = {d.name: recipe.params[d.name] for d in method_dims(recipe.method)}
    if scope:
        lo, hi = (0, n_layers - 1) if recipe.scope.layers == "all" else recipe.scope.layers
        values.update(first_layer=int(lo), last_layer=int(hi))
        group = _group(recipe.scope.modules)
        if group is not None:  # a hand-picked module set that is no group is kept, not searched
            values["modules"] = group
    return values


def search_dims(recipe: Recipe, n_layers: int, scope: bool = True) -> tuple[Dim, ...]:
    """Every searched dimension, widened to contain the recipe's own values."""
    if n_layers < 1:
        raise ValueError(f"the base has {n_layers} layers; nothing to search")
    dims = list(method_dims(recipe.method))
    if scope:
        dims += [Dim("first_layer", "int", 0, n_layers - 1), Dim("last_layer", "int", 0, n_layers - 1)]
        if _group(recipe.scope.modules) is not None:
            dims.append(Dim("modules", "choice", choices=tuple(MODULE_GROUPS)))
    own = recipe_values(recipe, n_layers, scope)
    return tuple(d.widened(own[d.name]) if d.name in own else d for d in dims)


def apply(recipe: Recipe, values: dict[str, Any], n_layers: int) -> Recipe:
    """`recipe` with a trial's values: parameters replaced, scope narrowed, calibration and phi dropped."""
    params = dict(recipe.params)
    params.update({k: v for k, v in values.items() if k not in SCOPE_DIMS})
    scope = recipe.scope
    if "first_layer" in values:
        lo, hi = sorted((int(values["first_layer"]), int(values["last_layer"])))
        scope = replace(scope, layers="all" if (lo, hi) == (0, n_layers - 1) else (lo, hi))
    if "modules" in values:
        scope = replace(scope, modules=MODULE_GROUPS[values["modules"]])
    return Recipe(method=recipe.method, experts=recipe.experts, base=recipe.base, params=params,
                  scope=Scope(modules=tuple(scope.modules), layers=scope.layers, vision=scope.vision),
                  output=recipe.output, seed=recipe.seed, device=recipe.device, name=recipe.name)
