"""A fused variant made in an app session (its recipe, output folder, summary). Used by graft_ui.studio."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
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
