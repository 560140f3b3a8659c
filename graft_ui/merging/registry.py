"""The merge-method registry: a plain dict from name to `Method`.

Every method module defines one `Method` and registers it with `register`. The CLI
(`python -m graft_ui methods`), the recipe validator and the UI's Fuse tab all read
`METHODS`, so a method exists in one place only. What the merge engine needs to know about
a method (does it need a base, is it linear in the deltas, which fast paths it has, which
parameters a recipe may set per module) is on its entry, so the engine never tests a name.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method, with the range the validator enforces."""

    name: str
    default: Any
    kind: str = "float"  # float | int | bool | choice
    low: float | None = None  # inclusive bounds, None = unbounded
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""
    above: float | None = None  # exclusive lower bound (a strictly positive parameter: above=0)
    # the method needs the base model whenever this parameter is not this value (see Method.base_params)
    needs_base_unless: Any = None

    def check(self, value: Any) -> Any:
        """Return `value` coerced to this parameter's type, or raise ValueError naming it."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"parameter {self.name!r}={value!r} is not one of {list(self.choices)}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"parameter {self.name!r}={value!r} must be true or false")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"parameter {self.name!r}={value!r} must be a number")
        if not math.isfinite(value):  # NaN passes every comparison below; inf breaks int()
            raise ValueError(f"parameter {self.name!r}={value!r} must be a finite number")
        if self.kind == "int":
            if int(value) != value:
                raise ValueError(f"parameter {self.name!r}={value!r} must be an integer")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"parameter {self.name!r}={value!r} must be a finite number")
        if self.above is not None and not value > self.above:
            raise ValueError(f"parameter {self.name!r}={value!r} must be above {self.above}")
        if self.low is not None and value < self.low:
            raise ValueError(f"parameter {self.name!r}={value!r} is below its minimum {self.low}")
        if self.high is not None and value > self.high:
            raise ValueError(f"parameter {self.name!r}={value!r} is above its maximum {self.high}")
        return value


@dataclass(frozen=True)
class Method:
    """A registered merge method.

    `merge(base, experts, weights, params, generator)` merges ONE tensor (or row block):
    `base` is the backbone tensor (None when the method does not need it), `experts` the
    experts' tensors in fusion order, all the same shape. It returns `(merged, stats)`,
    stats being a small JSON-able dict for gates.json.

    Traits the merge engine reads:
    - `needs_base`: merge takes the backbone tensor (task vectors); False: base is None,
      unless a parameter asks for it (`Param.needs_base_unless`, e.g. Graft's `scale`):
      the engine asks `uses_base(params)`.
    - `linear`: the result is a weighted sum of the experts' deltas, so LoRA experts stay
      exact by concatenating their factors with the coefficients `merge` gives one-hot inputs.
    - `kernels`: {hook: "module:function"} fast paths on whole checkpoints (the hooks are
      listed in graft_ui/kernels/__init__.py). Dotted names, resolved on first use, so this
      package stays torch-only while a kernel may use numpy.
    - `module_params`: parameters a recipe's `phi` table may set per module (and that phi
      calibration learns; the app offers calibration for methods that have them).
    - `min_experts` / `max_experts`: how many experts a recipe may list (Graft fuses pairs:
      at least 2; SLERP interpolates the base and one expert: exactly 1; None = no limit).
    - `expert_params`: parameters a recipe may also set per expert (mergekit's per-model
      `density`, `gamma`, `epsilon`); `merge` then receives a list, one value per expert.
    - `weight_space`: why the method needs the full weights and not only the deltas (its
      result is not base + f(deltas): SLERP between base and expert, ...); LoRA experts are
      refused with this reason. Empty: the method reads task vectors only, so LoRA experts
      run on their dense deltas (or stay factors when `linear`).
    - `kernel_params`: the parameter values the kernels were written for; other values go
      through `merge` (e.g. TIES without normalisation).
    - `in_defaults`: part of "every method" in studies and `eval --methods` (the mergekit
      family runs when named).
    - `streams`: `merge` also takes stored.Stored inputs (read in row blocks from the files)
      and `out=` a stored.Sink that receives the result block by block, so the engine never
      holds a whole tensor; every step of the method is blockwise.
    """

    name: str
    merge: Callable[..., tuple[Any, dict]]
    params: tuple[Param, ...]
    paper: str
    summary: str
    needs_base: bool = True
    linear: bool = False
    kernels: Mapping[str, str] = field(default_factory=dict)
    module_params: tuple[str, ...] = ()
    min_experts: int = 1
    max_experts: int | None = None
    expert_params: tuple[str, ...] = ()
    weight_space: str = ""
    kernel_params: Mapping[str, Any] = field(default_factory=dict)
    in_defaults: bool = True
    streams: bool = False
    # (params, weights) -> why LoRA experts cannot be merged exactly with these settings, or ""
    lora_check: Callable[[Mapping[str, Any], Sequence[float]], str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def base_params(self, params: Mapping[str, Any] | None) -> list[str]:
        """The parameters whose value in `params` (defaults filled) makes the merge read the base."""
        params = params or {}
        return [p.name for p in self.params
                if p.needs_base_unless is not None and params.get(p.name, p.default) != p.needs_base_unless]

    def uses_base(self, params: Mapping[str, Any] | None) -> bool:
        """Whether merging with `params` takes the backbone tensor (`needs_base` or a base parameter)."""
        return self.needs_base or bool(self.base_params(params))

    def lora_refusal(self, params: Mapping[str, Any] | None, weights: Sequence[float] = ()) -> str:
        """Why LoRA experts cannot be merged exactly with `params` ("" when they can): the method
        needs the full weights (`weight_space`), or it reads no base and is not linear, so it
        would treat the deltas as weights."""
        if self.weight_space:
            return self.weight_space
        if not self.linear and "lora_factors" not in self.kernels and not self.uses_base(params):
            unless = self.base_params({p.name: not p.needs_base_unless for p in self.params
                                       if p.needs_base_unless is not None})
            hint = f" (set {', '.join(unless)} and give the base)" if unless else ""
            return f"without the base it works on the full weights, not on task vectors{hint}"
        return self.lora_check(params or {}, weights) if self.lora_check is not None else ""

    def kernel(self, hook: str, params: Mapping[str, Any] | None = None) -> Callable | None:
        """The fast path registered for `hook`, or None (the engine then uses `merge`): also
        None when `params` set a `kernel_params` entry to another value."""
        ref = self.kernels.get(hook)
        if ref is None:
            return None
        if params and any(params.get(k, v) != v for k, v in self.kernel_params.items()):
            return None
        if params and any(isinstance(params.get(k), (list, tuple)) for k in self.expert_params):
            return None  # kernels take one value for all experts
        module, _, attr = ref.partition(":")
        fn = getattr(importlib.import_module(module), attr, None) if attr else None
        if fn is None:
            raise ValueError(f"method {self.name!r}: kernel {hook}={ref!r} names no function")
        return fn


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    from graft_ui import merging  # noqa: F401  (importing the package registers every method)

    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; known: {sorted(METHODS)}") from None


def known_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Param]:
    """{name: Param} of method `name`, after rejecting any key of `params` it does not have, by name."""
    known = {p.name: p for p in get_method(name).params}
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {name!r}; allowed: {sorted(known)}")
    return known


def validate_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and check ranges; unknown keys are rejected by name. An `expert_params`
    entry may be a list (one value per expert), each value checked."""
    method = get_method(name)
    known = known_params(name, params)
    params = dict(params or {})
    out = {}
    for n, p in known.items():
        v = params.get(n, p.default)
        per_expert = n in method.expert_params and isinstance(v, (list, tuple))
        out[n] = [p.check(x) for x in v] if per_expert else p.check(v)
    return out


def per_expert(value: Any, k: int, name: str = "parameter") -> list:
    """`value` as one entry per expert: a scalar repeats, a list must have k entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != k:
            raise ValueError(f"{name}={list(value)!r} has {len(value)} entries for {k} experts")
        return list(value)
    return [value] * k


def describe(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """JSON-able description of the registry (for `methods` and the UI)."""
    get_method("graft")  # ensure registration
    out = []
    for name in names or sorted(METHODS):
        m = METHODS[name]
        out.append(
            {
                "name": m.name,
                "summary": m.summary,
                "paper": m.paper,
                "needs_base": m.needs_base,
                "module_params": list(m.module_params),
                "min_experts": m.min_experts,
                "max_experts": m.max_experts,
                "expert_params": list(m.expert_params),
                "lora": "refused: " + m.weight_space if m.weight_space else ("exact" if m.linear else "dense deltas"),
                "params": [
                    {k: v for k, v in vars(p).items() if v not in ((), None, "")} for p in m.params
                ],
            }
        )
    return out


def base_unless(described: Mapping[str, Any]) -> str:
    """" unless scale != 1.0" for a described method whose parameters can ask for the base, else ""."""
    conds = [f"{p['name']} != {p['needs_base_unless']}" for p in described["params"] if "needs_base_unless" in p]
    return f" unless {' or '.join(conds)}" if conds else ""
