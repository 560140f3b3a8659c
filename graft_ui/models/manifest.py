"""Manifests: the one format that names a base model, its experts and target datasets.

The demo zoo writes one; a user writes the same for Qwen2-VL-2B and real adapters
(see examples/manifest-qwen2vl-2b.yaml). YAML or JSON:

    name: demo-zoo
    base: {name: base, path: base}                       # folder or hub id
    experts:
      - {name: math-lora, domain: math, kind: lora, path: experts/math-lora}
      - {name: math-full, domain: math, kind: full, path: experts/math-full}
    datasets:
      math: {eval: data/math/eval.jsonl, train: data/math/train.jsonl}

Relative paths are relative to the manifest file; a path that does not exist locally and
looks like `owner/name` is kept as a hub id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

KINDS = ("lora", "full")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    kind: str = "full"  # lora | full
    domain: str | None = None

    def __post_init__(self):
        if not self.name or not str(self.name).strip():
            raise ValueError(f"manifest entry with path {self.path!r} has no name")
        if self.kind not in KINDS:
            raise ValueError(f"manifest entry {self.name!r}: kind={self.kind!r} is not one of {list(KINDS)}")


@dataclass(frozen=True)
class DatasetEntry:
    eval: str
    train: str | None = None


@dataclass(frozen=True)
class Manifest:
    base: ModelEntry
    experts: tuple[ModelEntry, ...] = ()
    datasets: Mapping[str, DatasetEntry] = field(default_factory=dict)
    name: str = "manifest"
    source: str | None = None  # the file it was read from

    def expert(self, name: str) -> ModelEntry:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(f"no expert named {name!r} in manifest {self.name!r}; known: {[e.name for e in self.experts]}")

    def model(self, name: str) -> ModelEntry:
        return self.base if name == self.base.name else self.expert(name)

    def dataset(self, domain: str) -> DatasetEntry:
        try:
            return self.datasets[domain]
        except KeyError:
            raise KeyError(f"no dataset for domain {domain!r} in manifest {self.name!r}; known: {sorted(self.datasets)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": asdict(self.base),
            "experts": [asdict(e) for e in self.experts],
            "datasets": {k: {kk: vv for kk, vv in asdict(v).items() if vv is not None} for k, v in self.datasets.items()},
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _resolve(root: Path, p: str) -> str:
    if Path(p).is_absolute():
        return p
    local = root / p
    if local.exists() or not looks_like_hub_id(p):
        return str(local)
    return p


def looks_like_hub_id(p: str) -> bool:
    parts = str(p).split("/")
    return len(parts) == 2 and all(parts) and not str(p).startswith((".", "~"))


def _entry(data: Any, root: Path, what: str) -> ModelEntry:
    if not isinstance(data, Mapping) or "path" not in data:
        raise ValueError(f"manifest {what} must be a mapping with at least 'path', got {data!r}")
    unknown = sorted(set(data) - {"name", "path", "kind", "domain"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in manifest {what}")
    d = dict(data)
    d.setdefault("name", Path(str(d["path"])).name)
    d["path"] = _resolve(root, str(d["path"]))
    return ModelEntry(**d)


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"manifest {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from None
    if not isinstance(data, Mapping) or "base" not in data:
        raise ValueError(f"manifest {str(path)!r} needs a 'base' entry")
    unknown = sorted(set(data) - {"name", "base", "experts", "datasets"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in manifest {str(path)!r}")
    root = path.parent
    base = _entry(data["base"], root, "base")
    experts = tuple(_entry(e, root, f"experts[{i}]") for i, e in enumerate(data.get("experts") or []))
    names = [e.name for e in experts]
    dup = sorted({n for n in names if names.count(n) > 1} | ({base.name} & set(names)))
    if dup:
        raise ValueError(f"manifest {str(path)!r} repeats the model name(s) {dup}")
    datasets = {}
    for domain, ds in (data.get("datasets") or {}).items():
        if not isinstance(ds, Mapping) or "eval" not in ds:
            raise ValueError(f"manifest dataset {domain!r} needs an 'eval' JSONL path")
        datasets[domain] = DatasetEntry(
            eval=_resolve(root, ds["eval"]), train=_resolve(root, ds["train"]) if ds.get("train") else None
        )
    return Manifest(base=base, experts=experts, datasets=datasets, name=data.get("name", path.stem), source=str(path))
