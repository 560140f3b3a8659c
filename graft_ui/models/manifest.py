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

Remote models (answered by an OpenAI-compatible server, e.g. vLLM; see chat/remote.py):

    experts:
      - {name: big-math, endpoint: http://gpu-box:8000/v1, model: math-lora, api_key_env: VLLM_KEY,
         kind: lora, domain: math}                      # a column only: no local folder
    server:                                             # route every LoRA expert through one server
      endpoint: http://gpu-box:8000/v1                  # (served name = the expert's name)
      api_key_env: VLLM_KEY                             # optional
      base_model: /models/Qwen2-VL-2B-Instruct          # optional: the base column too, by its served name
      shared_dir: /mnt/shared/fused                     # optional: a folder the server can read (fused adapters)
      server_dir: /shared/fused                         # optional: that folder as the server sees it
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

KINDS = ("lora", "full")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def check_endpoint(value: Any, what: str) -> str:
    """An http(s) base URL of an OpenAI-compatible API (…/v1), trailing slash removed."""
    if not isinstance(value, str) or not _URL_RE.match(value.strip()):
        raise ValueError(f"{what}: endpoint={value!r} must be an http:// or https:// URL such as http://host:8000/v1")
    return value.strip().rstrip("/")


def check_env_name(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ENV_RE.match(value):
        raise ValueError(f"{what}: api_key_env={value!r} is not an environment variable name (letters, digits, _)")
    return value


@dataclass(frozen=True)
class RemoteModel:
    """A model answered by an OpenAI-compatible server: where, by which served name, with which key."""

    endpoint: str
    model: str
    api_key_env: str | None = None  # the environment variable holding the API key (never the key itself)

    def __post_init__(self):
        object.__setattr__(self, "endpoint", check_endpoint(self.endpoint, "remote model"))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"remote model at {self.endpoint}: model={self.model!r} must be the served model name")
        check_env_name(self.api_key_env, f"remote model {self.model!r}")


@dataclass(frozen=True)
class ServerConfig:
    """Manifest-level `server:`: one OpenAI-compatible server for every LoRA expert (vLLM multi-LoRA)."""

    endpoint: str
    api_key_env: str | None = None
    base_model: str | None = None  # the base's served name; None = the base column stays local
    shared_dir: str | None = None  # a local folder the server can read: fused adapters go there
    server_dir: str | None = None  # the same folder as the server sees it (default: shared_dir)

    def __post_init__(self):
        object.__setattr__(self, "endpoint", check_endpoint(self.endpoint, "manifest server"))
        check_env_name(self.api_key_env, "manifest server")
        if self.base_model is not None and (not isinstance(self.base_model, str) or not self.base_model.strip()):
            raise ValueError(f"manifest server: base_model={self.base_model!r} must be the base's served model name")

    def remote(self, model: str) -> RemoteModel:
        return RemoteModel(self.endpoint, model, self.api_key_env)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str = ""  # empty only for a remote-only entry
    kind: str = "full"  # lora | full
    domain: str | None = None
    remote: RemoteModel | None = None  # answered by a server instead of a local folder

    def __post_init__(self):
        if not self.name or not str(self.name).strip():
            raise ValueError(f"manifest entry with path {self.path!r} has no name")
        if self.kind not in KINDS:
            raise ValueError(f"manifest entry {self.name!r}: kind={self.kind!r} is not one of {list(KINDS)}")
        if not self.path and self.remote is None:
            raise ValueError(f"manifest entry {self.name!r} needs a 'path' (folder or hub id) or an 'endpoint'")

    @property
    def remote_only(self) -> bool:
        return self.remote is not None and not self.path

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.path:
            d["path"] = self.path
        if self.remote is not None:
            d.update({k: v for k, v in asdict(self.remote).items() if v is not None})
        d.update(kind=self.kind, domain=self.domain)
        return d


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
    server: ServerConfig | None = None

    def remote_of(self, entry: ModelEntry) -> RemoteModel | None:
        """Where `entry` is answered: its own endpoint, else the manifest `server:` (LoRA experts, and
        the base when `server.base_model` is set), else None (locally)."""
        if entry.remote is not None:
            return entry.remote
        if self.server is None:
            return None
        if entry is self.base or entry.name == self.base.name:
            return self.server.remote(self.server.base_model) if self.server.base_model else None
        return self.server.remote(entry.name) if entry.kind == "lora" else None

    def local_experts(self, kind: str | None = None) -> list[ModelEntry]:
        """Experts with a local folder or hub id (what analysis and fusion can read)."""
        return [e for e in self.experts if not e.remote_only and (kind is None or e.kind == kind)]

    def expert(self, name: str) -> ModelEntry:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(f"no expert named {name!r} in manifest {self.name!r}; known: {[e.name for e in self.experts]}")

    def model(self, name: str) -> ModelEntry:
        return self.base if name == self.base.name else self.expert(name)

    def find(self, ref: Any) -> ModelEntry | None:
        """The expert a recipe's expert reference (`.path`, `.name`) names: the same folder, else the same name."""
        hit = next((e for e in self.experts if same_path(e.path, ref.path)), None)
        if hit is None and ref.name:
            hit = next((e for e in self.experts if e.name == ref.name), None)
        return hit

    def domains_of(self, entries: Iterable[ModelEntry | None]) -> list[str]:
        """The entries' domains that have a dataset here, in their order, each once (None entries skipped)."""
        return list(dict.fromkeys(e.domain for e in entries if e is not None and e.domain in self.datasets))

    def dataset(self, domain: str) -> DatasetEntry:
        try:
            return self.datasets[domain]
        except KeyError:
            raise KeyError(f"no dataset for domain {domain!r} in manifest {self.name!r}; known: {sorted(self.datasets)}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "base": self.base.to_dict(),
            "experts": [e.to_dict() for e in self.experts],
            "datasets": {k: {kk: vv for kk, vv in asdict(v).items() if vv is not None} for k, v in self.datasets.items()},
        }
        if self.server is not None:
            out["server"] = {k: v for k, v in asdict(self.server).items() if v is not None}
        return out

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


def same_path(a: str | None, b: str | None) -> bool:
    """Whether two path strings name the same file or folder (equal, or equal once resolved); None equals only None."""
    if a is None or b is None:
        return a == b
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):  # a name too long, a symlink loop
        return False


REMOTE_KEYS = ("endpoint", "model", "api_key_env")
SERVER_KEYS = ("endpoint", "api_key_env", "base_model", "shared_dir", "server_dir")


def _entry(data: Any, root: Path, what: str) -> ModelEntry:
    if not isinstance(data, Mapping) or not ({"path", "endpoint"} & set(data)):
        raise ValueError(f"manifest {what} must be a mapping with 'path' (or 'endpoint' and 'model'), got {data!r}")
    unknown = sorted(set(data) - {"name", "path", "kind", "domain", *REMOTE_KEYS})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in manifest {what}")
    d = dict(data)
    remote = None
    if "endpoint" in d or "model" in d or "api_key_env" in d:
        for key in ("endpoint", "model"):
            if not d.get(key):
                raise ValueError(f"manifest {what}: {key!r} is required for a remote model (with endpoint, model)")
        model = d.pop("model")
        try:  # RemoteModel checks the endpoint, the served name and the key's variable name
            remote = RemoteModel(d.pop("endpoint"), model.strip() if isinstance(model, str) and model.strip() else model,
                                 d.pop("api_key_env", None))
        except ValueError as exc:
            raise ValueError(f"manifest {what} ({d.get('name') or model!r}): {exc}") from None
    if "path" in d:
        d.setdefault("name", Path(str(d["path"])).name)
        d["path"] = _resolve(root, str(d["path"]))
    else:
        d.setdefault("name", remote.model.rsplit("/", 1)[-1])
    return ModelEntry(**d, remote=remote)


def _server(data: Any, root: Path) -> ServerConfig | None:
    if data is None:
        return None
    if isinstance(data, str):
        data = {"endpoint": data}
    if not isinstance(data, Mapping) or "endpoint" not in data:
        raise ValueError(f"manifest server must be a URL or a mapping with 'endpoint', got {data!r}")
    unknown = sorted(set(data) - set(SERVER_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in manifest server; known: {list(SERVER_KEYS)}")
    d = dict(data)
    if d.get("shared_dir"):
        d["shared_dir"] = str((root / str(d["shared_dir"])).resolve())
    return ServerConfig(**d)


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
    unknown = sorted(set(data) - {"name", "base", "experts", "datasets", "server"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in manifest {str(path)!r}")
    root = path.parent
    base = _entry(data["base"], root, "base")
    if base.remote_only:
        raise ValueError(f"manifest {str(path)!r}: the base needs a local 'path' (fusion and analysis read it); "
                         "serve its chat column remotely with server: {endpoint, base_model}")
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
    return Manifest(base=base, experts=experts, datasets=datasets, name=data.get("name", path.stem), source=str(path),
                    server=_server(data.get("server"), root))
