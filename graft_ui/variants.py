"""A fused variant made in an app session (its recipe, output folder, summary), and the small
JSON-able summary of a merge result shown for it. Used by graft_ui.studio."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from graft_ui.recipe import Recipe


@dataclass
class FusedVariant:
    """A fusion made in this session: its recipe, where it was written, and how it went."""

    name: str
    recipe: Recipe
    out_dir: Path
    kind: str  # lora | full
    summary: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @property
    def gates_path(self) -> Path | None:
        p = self.out_dir / "gates.json"
        return p if p.is_file() else None

    def row(self) -> dict:
        return {
            "name": self.name,
            "method": self.recipe.method,
            "experts": " → ".join(e.name or Path(e.path).name for e in self.recipe.experts),
            "kind": self.kind,
            "modules": self.summary.get("modules_fused", "—"),
            "seconds": self.summary.get("seconds", "—"),
            "device": self.summary.get("device", "—"),
            "folder": str(self.out_dir),
        }


def fusion_summary(result: Any, seconds: float, device: str) -> dict:
    """A small JSON-able summary of a merge result (whatever shape run_recipe returns)."""
    d: dict[str, Any] = {}
    if callable(getattr(result, "summary", None)):
        d = dict(result.summary())
    elif dataclasses.is_dataclass(result):
        d = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, Mapping):
        d = dict(result)
    elif hasattr(result, "__dict__"):
        d = dict(vars(result))
    out = {
        "seconds": round(float(d.get("seconds") or seconds), 2),
        "device": str(d.get("device_label") or d.get("device") or device),
    }
    for key in ("modules_fused", "modules", "n_modules", "fused_modules"):
        if key in d:
            v = d[key]
            out["modules_fused"] = len(v) if isinstance(v, (list, tuple, dict, set)) else v
            break
    for key in ("copied", "modules_copied", "tensors_copied"):  # tensors (full) or modules (LoRA) kept from expert 1
        if key in d:
            v = d[key]
            out["modules_copied"] = len(v) if isinstance(v, (list, tuple, dict, set)) else v
            break
    for key in ("method", "experts_kind", "output_kind", "out_dir", "rank", "svd_error", "relative_error"):
        if key in d and d[key] is not None:
            out[key] = d[key] if isinstance(d[key], (int, float, str, bool)) else str(d[key])
    if d.get("notes"):
        out["notes"] = [str(n) for n in d["notes"]]
    return out
