"""The fusion recipe: one frozen dataclass that round-trips through YAML.

The CLI, the UI and every export read and write this and nothing else, so a fusion made
in the app can be reproduced headless with `python -m graft_ui merge recipe.yaml --out DIR`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from graft_ui.checks import number
from graft_ui.merging.registry import Param, get_method, known_params, validate_params
from graft_ui.merging.schedule import check_setting, varies

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_MODULES = ATTN_MODULES + MLP_MODULES
OUTPUT_KINDS = ("adapter", "full")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


def _reject_unknown(section: str, given: Mapping[str, Any], allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in recipe {section}; allowed: {sorted(allowed)}")


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


WEIGHT = Param("weight", 1.0, "float", help="the expert's weight")


@dataclass(frozen=True)
class ExpertRef:
    path: str
    weight: float = 1.0
    name: str | None = None
    # per-expert settings of the method's per-expert parameters and of `weight` (a gradient or
    # filters: merging/schedule.py); they take precedence over the recipe's `params`
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not str(self.path).strip():
            raise ValueError("recipe expert has an empty path")
        number(f"expert {self.path!r} weight", self.weight)
        if not isinstance(self.params, Mapping):
            raise ValueError(f"expert {self.path!r} params={self.params!r} must be a mapping")


@dataclass(frozen=True)
class Scope:
    modules: tuple[str, ...] = ALL_MODULES
    layers: str | tuple[int, int] = "all"  # "all" or (first, last), inclusive
    vision: bool = False
    # fuse every tensor the experts share (embeddings, norms, biases, lm_head), as mergekit
    # does, instead of the linear modules above only (full checkpoints; layers still apply)
    all_tensors: bool = False

    def __post_init__(self):
        bad = sorted(set(self.modules) - set(ALL_MODULES))
        if bad or not self.modules:
            raise ValueError(f"scope.modules {list(self.modules)!r}: unknown {bad}; allowed {list(ALL_MODULES)}")
        if self.layers != "all":
            lo, hi = self.layers
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
                raise ValueError(f"scope.layers={list(self.layers)!r} must be 'all' or [first, last] with 0 <= first <= last")
        if not isinstance(self.vision, bool):
            raise ValueError(f"scope.vision={self.vision!r} must be true or false")
        if not isinstance(self.all_tensors, bool):
            raise ValueError(f"scope.all_tensors={self.all_tensors!r} must be true or false")

    def layer_in_scope(self, layer: int) -> bool:
        return self.layers == "all" or self.layers[0] <= layer <= self.layers[1]


@dataclass(frozen=True)
class Output:
    kind: str = "adapter"  # adapter (LoRA experts) | full (merged checkpoint)
    rank: int | None = None  # adapter rank after SVD compression; None = exact
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"output.kind={self.kind!r} is not one of {list(OUTPUT_KINDS)}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"output.rank={self.rank!r} must be a positive integer or null")
        if self.dtype not in DTYPES:
            raise ValueError(f"output.dtype={self.dtype!r} is not one of {list(DTYPES)}")


@dataclass(frozen=True)
class Calibrate:
    """Learn Graft's per-module phi (alpha, beta) on K target samples (DESIGN.md §2)."""

    samples: int = 16
    steps: int = 20
    lr: float = 0.05
    dataset: str | None = None  # JSONL path, or domain(s) "math+code" (their train split); None = first expert's domain

    def __post_init__(self):
        for key in ("samples", "steps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"calibrate.{key}={v!r} must be a positive integer")
        if not number("calibrate.lr", self.lr) > 0:
            raise ValueError(f"calibrate.lr={self.lr!r} must be a positive number")


def validate_settings(method_name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Like registry.validate_params (which checks plain values), but a value may also be a
    gradient or a filter list."""
    if not any(varies(v) for v in (params or {}).values()):
        return validate_params(method_name, params)
    known = known_params(method_name, params)
    params = dict(params or {})
    return {n: check_setting(p, params[n]) if n in params else p.default for n, p in known.items()}


@dataclass(frozen=True)
class Recipe:
    method: str
    experts: tuple[ExpertRef, ...]
    base: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    scope: Scope = Scope()
    output: Output = Output()
    seed: int = 0
    device: str = "auto"
    calibrate: Calibrate | None = None
    # learned or hand-set phi per fused module: {module_name: {"alpha": a, "beta": b}}
    phi: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self):
        # validated params with defaults filled in, so a saved recipe is fully resolved
        object.__setattr__(self, "params", validate_settings(self.method, self.params))
        method = get_method(self.method)
        least, most = method.min_experts, method.max_experts
        if len(self.experts) < least:
            raise ValueError(f"method {self.method!r} fuses {least} or more experts; recipe lists {len(self.experts)}")
        if most is not None and len(self.experts) > most:
            raise ValueError(f"method {self.method!r} takes at most {most} expert(s) besides the base; recipe lists "
                             f"{len(self.experts)}")
        known = {p.name: p for p in method.params if p.name in method.expert_params}
        known["weight"] = WEIGHT
        for e in self.experts:
            bad = sorted(set(e.params) - set(known))
            if bad:
                raise ValueError(f"expert {e.path!r}: parameter(s) {bad} cannot be set per expert for {self.method!r}; "
                                 f"allowed: {sorted(known)}")
            object.__setattr__(e, "params", {n: check_setting(known[n], v, f"{e.path}: ") for n, v in e.params.items()})
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r} is not one of {list(DEVICES)} or 'cuda:N'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        for module, ab in self.phi.items():
            if set(ab) != {"alpha", "beta"}:
                raise ValueError(f"phi[{module!r}] must have exactly the keys alpha and beta, got {sorted(ab)}")
            for key in ("alpha", "beta"):
                number(f"phi[{module!r}].{key}", ab[key])

    # ---- YAML / dict round trip -------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        if not isinstance(data, Mapping):
            raise ValueError(f"a recipe must be a mapping, got {type(data).__name__}")
        _reject_unknown("top level", data, _fields(cls))
        if "method" not in data or "experts" not in data:
            raise ValueError("recipe needs the keys 'method' and 'experts'")
        experts = []
        for i, e in enumerate(data["experts"] or []):
            e = {"path": e} if isinstance(e, str) else e
            if not isinstance(e, Mapping):
                raise ValueError(f"experts[{i}] must be a path or a mapping, got {e!r}")
            _reject_unknown(f"experts[{i}]", e, _fields(ExpertRef))
            experts.append(ExpertRef(**e))
        scope = dict(data.get("scope") or {})
        _reject_unknown("scope", scope, _fields(Scope))
        if "modules" in scope:
            scope["modules"] = tuple(scope["modules"])
        if isinstance(scope.get("layers"), (list, tuple)):
            if len(scope["layers"]) != 2:
                raise ValueError(f"scope.layers={scope['layers']!r} must be 'all' or [first, last]")
            scope["layers"] = tuple(scope["layers"])
        elif scope.get("layers", "all") != "all":
            raise ValueError(f"scope.layers={scope['layers']!r} must be 'all' or [first, last]")
        output = dict(data.get("output") or {})
        _reject_unknown("output", output, _fields(Output))
        calibrate = data.get("calibrate")
        if calibrate is not None:
            _reject_unknown("calibrate", calibrate, _fields(Calibrate))
            calibrate = Calibrate(**calibrate)
        kwargs = {k: v for k, v in data.items() if k not in ("experts", "scope", "output", "calibrate")}
        return cls(
            experts=tuple(experts),
            scope=Scope(**scope),
            output=Output(**output),
            calibrate=calibrate,
            **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in kwargs.items() if v is not None or k == "base"},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        d["method"] = self.method
        d["base"] = self.base
        d["experts"] = [{k: (dict(v) if k == "params" else v) for k, v in dataclasses.asdict(e).items()
                         if v is not None and v != {}} for e in self.experts]
        d["params"] = dict(self.params)
        d["scope"] = {
            "modules": list(self.scope.modules),
            "layers": self.scope.layers if self.scope.layers == "all" else list(self.scope.layers),
            "vision": self.scope.vision,
        }
        if self.scope.all_tensors:
            d["scope"]["all_tensors"] = True
        d["output"] = dataclasses.asdict(self.output)
        d["seed"] = self.seed
        d["device"] = self.device
        if self.calibrate is not None:
            d["calibrate"] = dataclasses.asdict(self.calibrate)
        if self.phi:
            d["phi"] = {m: {"alpha": float(ab["alpha"]), "beta": float(ab["beta"])} for m, ab in self.phi.items()}
        return d

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"recipe is not valid YAML: {exc}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
        recipe = cls.from_yaml(path.read_text())
        # relative expert/base paths are relative to the recipe file when they exist there
        return recipe.resolve_paths(path.parent)

    def resolve_paths(self, root: Path) -> "Recipe":
        def fix(p: str | None) -> str | None:
            if p is None or Path(p).is_absolute():
                return p
            candidate = root / p
            return str(candidate) if candidate.exists() else p

        experts = tuple(dataclasses.replace(e, path=fix(e.path)) for e in self.experts)
        return dataclasses.replace(self, base=fix(self.base), experts=experts)

    def resolve_names(self, manifest) -> "Recipe":
        """Expert paths that are names of `manifest` experts become their folders; a missing
        base (or the manifest base's name) becomes the manifest's base."""
        by_name = {e.name: e for e in manifest.experts}
        experts = tuple(
            dataclasses.replace(e, path=by_name[e.path].path, name=e.name or e.path)
            if e.path in by_name and not Path(e.path).exists() else e
            for e in self.experts
        )
        base = manifest.base.path if self.base in (None, manifest.base.name) else self.base
        return dataclasses.replace(self, experts=experts, base=base)

    @property
    def varies(self) -> bool:
        """Whether some parameter is a gradient or filters (merging/schedule.py)."""
        return any(varies(v) for v in self.params.values()) or any(
            varies(v) for e in self.experts for v in e.params.values())

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)
