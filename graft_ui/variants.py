"""Fused variants on disk: what a fusion leaves in `<work_dir>/fused/<folder>` and how a new
session finds it again (no gradio).

A fusion's folder holds the weights, `recipe.yaml`, `gates.json` (models/merge.py) and
`variant.json`, written here: `{"name", "kind", "summary", "created", "removed"}`. At start,
and whenever the model set changes, `restore_variants` lists the complete folders whose recipe
was made on the current base, so a page reload or an app restart keeps every variant made
before. Removing a variant from the app marks its record (`"removed": true`): the folder stays
on disk and is not restored.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from graft_ui.atomic import write_bytes
from graft_ui.models.loading import is_adapter
from graft_ui.models.manifest import same_path
from graft_ui.recipe import Recipe

log = logging.getLogger(__name__)

RECORD = "variant.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")


def check_variant_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise ValueError(
            f"the name {name!r} is not usable: use 1 to 48 letters, digits, '-', '_' or '.', "
            "starting with a letter or a digit"
        )
    return name


@dataclass
class FusedVariant:
    """A fused model: its recipe, where it was written, and how it went."""

    name: str
    recipe: Recipe
    out_dir: Path
    kind: str  # lora | full
    summary: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    restored: bool = False  # found on disk at start (made by an earlier session)

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
            "made": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created)),
            "folder": str(self.out_dir),
        }


def next_free_name(prefix: str, taken: Iterable[str], fused_root: Path | None = None) -> str:
    """`prefix-1`, `prefix-2`, ...: the first not in `taken` and with no folder under `fused_root`."""
    taken = set(taken)
    i = 1
    while f"{prefix}-{i}" in taken or (fused_root is not None and (fused_root / f"{prefix}-{i}").exists()):
        i += 1
    return f"{prefix}-{i}"


def write_record(v: FusedVariant, *, removed: bool = False) -> None:
    """`variant.json` in the variant's folder (atomic), so a later session restores it as it was."""
    data = {"name": v.name, "kind": v.kind, "summary": v.summary, "created": v.created, "removed": removed}
    write_bytes(v.out_dir / RECORD, (json.dumps(data, indent=1, default=str) + "\n").encode())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def load_variant(folder: Path, base: str) -> FusedVariant | None:
    """The variant in `folder`, or None when it is incomplete, removed, unreadable or made on another base."""
    if folder.name.startswith(".") or ".tmp-" in folder.name or (folder / ".incomplete").exists():
        return None
    recipe_path = folder / "recipe.yaml"
    if not recipe_path.is_file():
        return None
    record = _read_json(folder / RECORD) if (folder / RECORD).is_file() else {}
    if record.get("removed"):
        return None
    try:
        recipe = Recipe.from_yaml(recipe_path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("not restoring %s: its recipe.yaml is unreadable (%s)", folder, exc)
        return None
    if recipe.base is not None and not same_path(recipe.base, base):
        return None
    summary = dict(record.get("summary") or {})
    if not summary and (folder / "gates.json").is_file():
        gates = _read_json(folder / "gates.json")
        summary = {k: gates[k] for k in ("seconds", "device") if k in gates}
        if isinstance(gates.get("modules"), dict):
            summary["modules_fused"] = len(gates["modules"])
    name = str(record.get("name") or recipe.name or folder.name)
    kind = record.get("kind") or ("lora" if is_adapter(folder) else "full")
    created = float(record.get("created") or recipe_path.stat().st_mtime)
    return FusedVariant(name=name, recipe=recipe, out_dir=folder, kind=kind, summary=summary, created=created,
                        restored=True)


def restore_variants(fused_root: Path, base: str, taken: Iterable[str] = ()) -> list[FusedVariant]:
    """Every complete variant under `fused_root` made on `base`, oldest first, with names unique
    against `taken` (a clash falls back to the folder's name, then is skipped with a log line)."""
    if not fused_root.is_dir():
        return []
    taken = set(taken)
    found = []
    for folder in sorted((p for p in fused_root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime):
        v = load_variant(folder, base)
        if v is None:
            continue
        if v.name in taken:
            v.name = folder.name
        if v.name in taken:
            log.warning("not restoring %s: the name %r is already in use", folder, v.name)
            continue
        taken.add(v.name)
        found.append(v)
    found.sort(key=lambda v: v.created)
    return found
