"""Which modules of a model the analysis hooks, and how they are named.

Names and scope are the merge engine's (`graft_ui.models.keys`, `graft_ui.models.scope`):
a module's canonical name is its transformers-5 path in a plain
`Qwen2VLForConditionalGeneration` (`model.language_model.layers.3.self_attn.q_proj`),
the name gates.json and recipe `phi` use; peft's `base_model.model.` prefix is dropped.
For heatmaps each module also has a row (`L3` for language layer 3, `V0` for vision
block 0) and a column (its module type; vision ones prefixed `vis.`).
"""

from __future__ import annotations

from typing import Iterable

import torch

from graft_ui.models.keys import VISION, VISION_TYPES
from graft_ui.models.keys import ModuleKey as EngineKey
from graft_ui.models.keys import canonical_name as _engine_canonical
from graft_ui.models.keys import parse_module
from graft_ui.models.scope import in_scope as _engine_in_scope
from graft_ui.recipe import ALL_MODULES, Scope

__all__ = ["HeatKey", "canonical_name", "parse_name", "in_scope", "is_lora_layer", "scope_modules",
           "module_keys", "column_order", "row_order"]


class HeatKey(tuple):
    """(tower, layer, module_type) with heatmap labels; tower is "language" or "vision"."""

    __slots__ = ()

    def __new__(cls, tower: str, layer: int, module_type: str):
        return super().__new__(cls, (tower, int(layer), module_type))

    tower = property(lambda self: self[0])
    layer = property(lambda self: self[1])
    module_type = property(lambda self: self[2])

    @property
    def row_label(self) -> str:
        return f"{'V' if self.tower == VISION else 'L'}{self.layer}"

    @property
    def column_label(self) -> str:
        return f"vis.{self.module_type}" if self.tower == VISION else self.module_type


def canonical_name(name: str) -> str:
    return _engine_canonical(name)


def parse_name(name: str) -> HeatKey | None:
    key: EngineKey | None = parse_module(name)
    if key is None:
        return None
    return HeatKey(key.tower, key.layer, key.module)


def in_scope(name: str, scope: Scope | None) -> bool:
    """Whether module `name` is fused under `scope` (None = the default Scope()), as the merge engine decides."""
    return _engine_in_scope(parse_module(name), scope or Scope())


def is_lora_layer(module: torch.nn.Module) -> bool:
    """A peft LoRA layer (duck-typed so that peft is only imported by whoever made the model)."""
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base_layer")


def scope_modules(model: torch.nn.Module, scope: Scope | None = None) -> dict[str, torch.nn.Module]:
    """Canonical name -> module for every linear in scope, in model order.

    For a peft model these are the LoRA-wrapped layers (the wrapper, not its base_layer);
    in-scope modules without an adapter are left out: fusing LoRA experts only changes
    adapted modules.
    """
    lora_model = any(is_lora_layer(m) for m in model.modules())
    out: dict[str, torch.nn.Module] = {}
    for raw, module in model.named_modules():
        if raw.endswith(".base_layer") or ".lora_" in raw:
            continue
        if not in_scope(raw, scope):
            continue
        if lora_model:
            if is_lora_layer(module):
                out[canonical_name(raw)] = module
        elif isinstance(module, torch.nn.Linear):
            out[canonical_name(raw)] = module
    if not out:
        raise ValueError(
            f"no module of the model is in the fusion scope {scope or Scope()!r}"
            + (" and carries a LoRA adapter" if lora_model else "")
        )
    return out


def module_keys(names: Iterable[str]) -> dict[str, HeatKey]:
    keys = {}
    for n in names:
        k = parse_name(n)
        if k is None:
            raise ValueError(f"module name {n!r} is not a language-model or vision-block projection")
        keys[n] = k
    return keys


def column_order(keys: Iterable[HeatKey]) -> list[str]:
    """Heatmap columns: language projections in ALL_MODULES order, then vision ones."""
    present = {k.column_label for k in keys}
    order = list(ALL_MODULES) + [f"vis.{t}" for t in VISION_TYPES]
    return [c for c in order if c in present] + sorted(present - set(order))


def row_order(keys: Iterable[HeatKey]) -> list[str]:
    """Heatmap rows: vision blocks first (they run first), then language layers, each ascending."""
    ks = sorted({(k.tower != VISION, k.layer, k.row_label) for k in keys})
    return [label for _, _, label in ks]

