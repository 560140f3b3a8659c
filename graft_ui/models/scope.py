"""Which modules a recipe fuses (DESIGN.md §2 "Which parameters").

- `scope.modules` picks module types q,k,v,o (attention) and gate,up,down (MLP);
- `scope.layers` is "all" or an inclusive [first, last] range of *language-model* layers;
- `scope.vision` adds the vision tower's blocks (all of them: the layer range counts the
  language model's layers, which the heatmap shows, and the two towers are numbered
  independently). Vision modules answer to the language types as mapped in `keys.py`:
  `qkv` is in scope when any of q/k/v is, `proj` with o, `fc1` with gate or up, `fc2` with down.

Everything else (embeddings, norms, lm_head, the vision patch embedding and merger, and
modules outside the scope) comes unchanged from the first expert.
"""

from __future__ import annotations

from graft_ui.models.keys import LANGUAGE, VISION, ModuleKey
from graft_ui.recipe import Scope


def in_scope(key: ModuleKey | None, scope: Scope) -> bool:
    if key is None:
        return False
    if not set(key.types) & set(scope.modules):
        return False
    if key.tower == VISION:
        return scope.vision
    return key.tower == LANGUAGE and scope.layer_in_scope(key.layer)


def describe_scope(scope: Scope) -> str:
    layers = "all layers" if scope.layers == "all" else f"layers {scope.layers[0]}-{scope.layers[1]}"
    return f"{', '.join(scope.modules)} in {layers}" + (" + vision tower" if scope.vision else " (language model only)")
