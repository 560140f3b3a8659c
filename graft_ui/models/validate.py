"""Cheap checks that a folder is a usable base or expert (config and headers only, no weights
loaded), and the size of its weight files, for the Experts tab's table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Mapping

from safetensors import safe_open

from graft_ui.models.loading import adapter_config, check_reference, is_adapter
from graft_ui.models.lora_io import check_adapter_base
from graft_ui.models.manifest import Manifest, ModelEntry

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def folder_bytes(path: str | Path) -> int | None:
    """Bytes of weight files in a local folder (None for a hub id or a missing folder)."""
    p = Path(path)
    if not p.is_dir():
        return None
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def model_config(path: str) -> dict:
    p = Path(path, "config.json")
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"config {str(p)!r} is unreadable: {exc}") from None


def num_layers(path: str) -> int:
    """Language-model layers of the model folder `path` (its config.json); ValueError naming it when unknown."""
    cfg = model_config(path)
    n = (cfg.get("text_config") or cfg).get("num_hidden_layers")
    if not n:
        raise ValueError(f"cannot read the number of layers of {path!r} (no config.json with num_hidden_layers)")
    return int(n)


def _shape_signature(cfg: Mapping[str, Any]) -> tuple:
    text = cfg.get("text_config") or cfg
    return tuple(text.get(k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))


def validate_entry(entry: ModelEntry, base: ModelEntry | None = None, *, allow_base_mismatch: bool = False,
                   **override) -> None:
    """Raise a readable ValueError/FileNotFoundError if `entry` cannot be used (cheap: no weights loaded).
    A LoRA adapter that records another base than `base` is refused (`check_adapter_base`, naming the
    `override=` the user has) unless `allow_base_mismatch`."""
    ref = check_reference(entry.path)
    if not Path(ref).is_dir():
        return  # a cached hub id: its files are checked when it loads
    if entry.kind == "lora":
        if not is_adapter(ref):
            raise ValueError(f"{entry.name!r}: {ref!r} has no adapter_config.json, so it is not a LoRA adapter folder")
        cfg = adapter_config(ref)
        if cfg.get("peft_type") != "LORA":
            raise ValueError(f"{entry.name!r}: adapter peft_type={cfg.get('peft_type')!r}; only LoRA adapters are supported")
        if base is not None:
            check_adapter_base(entry.name, cfg.get("base_model_name_or_path"), base.path,
                               origin=f"the base {base.name!r} ({base.path})", allow_mismatch=allow_base_mismatch,
                               **override)
        weights = [f for f in ("adapter_model.safetensors", "adapter_model.bin") if Path(ref, f).is_file()]
        if not weights:
            raise ValueError(f"{entry.name!r}: adapter folder {ref!r} has no adapter_model.safetensors")
        if weights[0].endswith(".safetensors"):
            try:
                with safe_open(str(Path(ref, weights[0])), framework="pt") as f:
                    keys = list(f.keys())
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise ValueError(f"{entry.name!r}: adapter weights {weights[0]!r} are unreadable ({exc})") from None
            if not any("lora_" in k for k in keys):
                raise ValueError(f"{entry.name!r}: adapter weights {weights[0]!r} hold no LoRA tensors")
    else:
        cfg = model_config(ref)
        if not cfg:
            if is_adapter(ref):
                raise ValueError(f"{entry.name!r}: {ref!r} is a LoRA adapter folder; add it with kind 'lora'")
            raise ValueError(f"{entry.name!r}: {ref!r} has no config.json, so it is not a model folder")
        if cfg.get("model_type") not in ("qwen2_vl", None):
            raise ValueError(f"{entry.name!r}: model_type={cfg.get('model_type')!r}; Graft Studio runs Qwen2-VL models")
        if not any(f.suffix in WEIGHT_SUFFIXES for f in Path(ref).iterdir()):
            raise ValueError(f"{entry.name!r}: model folder {ref!r} has no weight files")
        if base is not None and base is not entry and Path(base.path).is_dir():
            want, got = _shape_signature(model_config(base.path)), _shape_signature(cfg)
            if all(want) and want != got:
                raise ValueError(
                    f"{entry.name!r} does not fit base {base.name!r}: (hidden, layers, intermediate, vocab) {got} vs {want}"
                )


def manifest_rows(m: Manifest, override: str | None = None, mismatch_allowed: Collection[str] = ()) -> list[dict]:
    """One table row per base/expert of `m`: name, role, domain, kind, rank, size, base, path, status
    (ready, where a server answers it, or what is wrong with it). Experts named in `mismatch_allowed`
    may record another base; `override` is what a refusal tells the user to do instead."""
    rows = []
    for role, e in [("base", m.base)] + [("expert", e) for e in m.experts]:
        rank, status = "—", "ready"
        remote = m.remote_of(e)
        if remote is not None:
            status = f"served by {remote.endpoint} as {remote.model}"
        try:
            if not e.remote_only:
                validate_entry(e, m.base if role == "expert" else None, allow_base_mismatch=e.name in mismatch_allowed,
                               **({"override": override} if override else {}))
            if e.kind == "lora" and Path(e.path).is_dir():
                rank = adapter_config(e.path).get("r", "?")
        except (ValueError, FileNotFoundError) as exc:
            status = f"⚠ {exc}"
        rows.append({
            "name": e.name, "role": role, "domain": e.domain or "—", "kind": "base" if role == "base" else e.kind,
            "rank": rank, "size": human_bytes(folder_bytes(e.path)) if e.path else "—",
            "base": "—" if role == "base" else m.base.name, "path": e.path, "status": status,
        })
    return rows
