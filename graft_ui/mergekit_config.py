"""mergekit configurations in and out: `from_mergekit(config) -> Recipe`, `to_mergekit(recipe) -> dict`.

A mergekit config is told apart from a recipe by its `merge_method` key (DESIGN.md §9). Read:
the `models:` form and a `slices:` form of ONE output slice whose sources span the same
layers of every model (the usual SLERP config); `base_model`, `dtype`/`out_dtype`, global,
slice and per-model `parameters` with gradients and filters (same syntax as ours:
merging/schedule.py); `model: BASE+LORA` references (all experts LoRA adapters on one base:
merged as adapters, written as a full checkpoint, as mergekit does). The recipe merges every
tensor (`scope.all_tensors`), as mergekit does. Refused with a message: `modules:`, several
output slices or sources with different layer ranges (frankenmerges), `passthrough`.

Names and defaults that differ are mapped here, explicitly, never by changing our methods:
`lambda` <-> `lam`; DARE's `density` <-> `p = 1 - density`; mergekit's DARE `rescale` (an L1
rescale) <-> `rescale: l1 | none`; `nuslerp_flatten` / `nuslerp_row_wise` <-> `flatten` /
`row_wise`; `task_vectors` <-> a base_model given to nuslerp / multislerp; mergekit's TIES
density default 1 and DARE-TIES normalize default false are written out. Export writes
every default mergekit reads (`normalize`, `lambda`, `rescale`, `density`) explicitly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from graft_ui.merging.registry import get_method
from graft_ui.recipe import DTYPES, ExpertRef, Output, Recipe, Scope

log = logging.getLogger(__name__)

NO_EQUIVALENT = {"graft": "Graft", "consensus": "TALL (consensus)", "mmer": "MMER"}
# our name -> mergekit's where they differ (every mergekit name is ours too)
METHOD_OUT = {"average": "linear"}
# methods that take no per-model weight in mergekit: none is written for them
NO_WEIGHT = {"slerp", "nearswap", "arcee_fusion", "karcher", "model_stock", "sce", "ram", "ramplus_tl"}
# mergekit parameter -> ours (per method family); the rest keep their names
PARAM_IN = {"lambda": "lam", "nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"}
PARAM_OUT = {v: k for k, v in PARAM_IN.items()}
IGNORED_IN = {"int8_mask"}
NO_RESCALE = ("task_arithmetic", "ties")  # mergekit's rescale: false default, ours have no such switch  # memory layout only: the result does not change
DARE = ("dare_linear", "dare_ties")
# mergekit's defaults where ours differ: set on import unless the config sets them
DEFAULTS_IN = {"ties": {"density": 1.0}, "dare_linear": {"p": 0.0, "rescale": "l1"},
               "dare_ties": {"p": 0.0, "rescale": "l1", "normalize": False}}
TASK_VECTOR_SWITCH = ("nuslerp", "multislerp")  # base optional in mergekit: our task_vectors


def is_mergekit(data: Any) -> bool:
    return isinstance(data, Mapping) and "merge_method" in data


def _map_setting(setting: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply `fn` to every value of a setting (scalar, gradient knots, filter values)."""
    if isinstance(setting, Mapping):
        return {**setting, "value": _map_setting(setting["value"], fn)}
    if isinstance(setting, list):
        return [_map_setting(v, fn) for v in setting]
    return fn(setting)


def _flip(x):
    return round(1.0 - float(x), 12)


def _dtype(name: str | None, where: str) -> str | None:
    if name is None:
        return None
    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}
    d = aliases.get(name, name)
    if d not in DTYPES:
        raise ValueError(f"mergekit {where}={name!r} is not one of {list(DTYPES)}")
    return d


def _split_ref(ref: Any, where: str) -> tuple[str, str | None]:
    """(model, lora or None) of a mergekit model reference `path` or `path+lora`."""
    if isinstance(ref, Mapping):
        ref = ref.get("model") or ref.get("path")
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"mergekit {where}: model reference {ref!r} must be a path or hub id")
    model, plus, lora = ref.partition("+")
    return model, (lora if plus else None)


def _params_in(method: str, params: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    out = {}
    for k, v in (params or {}).items():
        if k in IGNORED_IN:
            continue
        if k == "rescale" and method in NO_RESCALE:
            if v is True and method != "task_arithmetic":  # task arithmetic sparsifies nothing: no-op there
                raise ValueError(f"mergekit {where}: rescale: true for {method!r} is not supported (DARE and DELLA "
                                 "rescale; use one of them)")
            continue
        name = PARAM_IN.get(k, k)
        if method in DARE and k == "density":
            name, v = "p", _map_setting(v, _flip)
        elif method in DARE and k == "rescale":
            v = _map_setting(v, lambda b: "l1" if b else "none")
        out[name] = v
    known = {p.name for p in get_method(method).params} | {"weight"}
    bad = sorted(set(out) - known)
    if bad:
        raise ValueError(f"mergekit {where}: parameter(s) {bad} are not parameters of {method!r}; allowed: "
                         f"{sorted(known)}")
    return out


def _inputs(data: Mapping[str, Any]) -> tuple[list[tuple[Any, dict]], dict]:
    """[(model reference, its parameters)], slice parameters, from `models:` or one `slices:` entry."""
    forms = [k for k in ("models", "slices", "modules") if data.get(k)]
    if len(forms) != 1:
        raise ValueError(f"a mergekit config needs exactly one of models / slices / modules; got {forms or 'none'}")
    if forms[0] == "modules":
        raise ValueError("mergekit configs with modules: are not supported; use models: or one slice")
    if forms[0] == "models":
        return [(m.get("model"), dict(m.get("parameters") or {})) for m in data["models"]], {}
    slices = data["slices"]
    if len(slices) != 1:
        raise ValueError(f"mergekit config has {len(slices)} output slices: stacking or cutting layers "
                         "(frankenmerges) is not supported; give one slice over all layers or use models:")
    out_slice = slices[0]
    sources = out_slice.get("sources") or []
    ranges = {tuple(s.get("layer_range") or ()) for s in sources}
    if len(ranges) != 1:
        raise ValueError(f"mergekit slice sources take different layer ranges {sorted(ranges)}: not supported")
    (rng,) = ranges
    if len(rng) != 2 or rng[0] != 0:
        raise ValueError(f"mergekit slice layer_range {list(rng)} must start at 0 and cover every layer")
    _check_full_range(sources, rng[1])
    if out_slice.get("base_model"):
        raise ValueError("a base_model inside a slice is not supported; set it at the top level")
    return [(s.get("model"), dict(s.get("parameters") or {})) for s in sources], dict(out_slice.get("parameters") or {})


def _check_full_range(sources, end: int) -> None:
    from graft_ui.models.validate import num_layers

    model, _ = _split_ref(sources[0].get("model"), "slices[0].sources[0]")
    try:
        n = num_layers(model)
    except (ValueError, OSError):
        return  # not a local folder with a config: mergekit checks it when it loads
    if end != n:
        raise ValueError(f"mergekit slice layer_range [0, {end}] does not cover the {n} layers of {model!r}: "
                         "cutting layers is not supported")


def from_mergekit(data: Mapping[str, Any], root: Path | None = None) -> Recipe:
    """The recipe that merges what the mergekit config `data` merges (paths relative to `root`)."""
    if not is_mergekit(data):
        raise ValueError("not a mergekit config: it has no merge_method key")
    mk_method = data["merge_method"]
    if mk_method == "passthrough":
        raise ValueError("mergekit's passthrough copies one model's layers; it does not merge: not supported")
    method = mk_method
    known = {"models", "slices", "modules", "merge_method", "base_model", "dtype", "out_dtype", "parameters",
             "tokenizer_source", "tokenizer", "chat_template", "name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the mergekit config; known: {sorted(known)}")
    get_method(method)  # names an unknown method
    if data.get("tokenizer_source") or data.get("tokenizer") or data.get("chat_template"):
        log.warning("mergekit tokenizer settings are not applied: tokenizer files come from the first expert")
    inputs, slice_params = _inputs(data)
    base_ref = data.get("base_model")
    base_model, base_lora = _split_ref(base_ref, "base_model") if base_ref else (None, None)
    if base_lora:
        raise ValueError(f"base_model {base_ref!r}: a LoRA folded into the base is not supported as the base")
    glob = _params_in(method, {**(data.get("parameters") or {}), **slice_params}, "parameters")
    global_weight = glob.pop("weight", None)
    for k, v in DEFAULTS_IN.get(method, {}).items():
        glob.setdefault(k, v)
    m = get_method(method)
    experts, loras = [], []
    for i, (ref, params) in enumerate(inputs):
        model, lora = _split_ref(ref, f"models[{i}]")
        if base_model is not None and model == base_model and lora is None and (m.needs_base or m.max_experts == 1
                                                                                or method in TASK_VECTOR_SWITCH):
            continue  # the base, listed among the inputs as mergekit allows
        p = _params_in(method, params, f"models[{i}].parameters")
        shared = sorted(set(p) - set(m.expert_params) - {"weight"})
        if shared:
            raise ValueError(f"mergekit models[{i}]: {shared} apply to the whole merge in {mk_method!r}; set them "
                             "under the top-level parameters")
        weight = p.pop("weight", global_weight)
        ref_params = dict(p)
        w = 1.0
        if isinstance(weight, (int, float)) and not isinstance(weight, bool):
            w = float(weight)
        elif weight is not None:
            ref_params["weight"] = weight
        loras.append(lora)
        experts.append(ExpertRef(path=_resolve(lora or model, root), weight=w, params=ref_params))
        if lora:
            if base_model is None:
                base_model = model
            elif model != base_model:
                raise ValueError(f"models[{i}] {ref!r} folds a LoRA into {model!r}, not into base_model {base_model!r}")
    if any(loras) and not all(loras):
        raise ValueError("the mergekit config mixes BASE+LORA references and full models: merge one kind")
    if base_model is not None and not m.uses_base({}) and method in TASK_VECTOR_SWITCH:
        glob["task_vectors"] = True
    elif base_model is not None and not (m.needs_base or any(loras)):
        # mergekit adds an unlisted base as one more input to methods that ignore a base (linear, karcher)
        if not any(e.path == _resolve(base_model, root) for e in experts):
            experts.append(ExpertRef(path=_resolve(base_model, root),
                                     weight=float(global_weight) if isinstance(global_weight, (int, float)) else 1.0))
        base_model = None
    dtype = _dtype(data.get("out_dtype") or data.get("dtype"), "dtype") or "float32"
    return Recipe(
        method=method, experts=tuple(experts), base=_resolve(base_model, root) if base_model else None,
        params=glob, name=data.get("name"),
        scope=Scope(all_tensors=not any(loras)),
        output=Output(kind="full", dtype=dtype),
    )


def _resolve(path: str, root: Path | None) -> str:
    if root is None or Path(path).is_absolute():
        return path
    candidate = root / path
    return str(candidate) if candidate.exists() else path


def to_mergekit(recipe: Recipe) -> dict[str, Any]:
    """The mergekit config for `recipe`, every default mergekit reads written out."""
    if recipe.method in NO_EQUIVALENT:
        raise ValueError(f"{NO_EQUIVALENT[recipe.method]} has no mergekit equivalent")
    method = METHOD_OUT.get(recipe.method, recipe.method)
    m = get_method(recipe.method)
    scope = recipe.scope
    if scope.layers != "all":
        raise ValueError(f"scope.layers={list(scope.layers)} has no mergekit equivalent (mergekit merges every layer)")
    if not scope.all_tensors:
        log.warning("mergekit merges every tensor; this recipe fuses only %s and copies the rest from the first "
                    "expert, so the config merges more than the recipe", ", ".join(scope.modules))
    params: dict[str, Any] = {}
    for k, v in recipe.params.items():
        if recipe.method in DARE and k == "p":
            params["density"] = _map_setting(v, _flip)
        elif recipe.method in DARE and k == "rescale":
            if v == "inverse":
                log.warning("DARE's 1/(1-p) rescale is mergekit's L1 rescale in expectation: written as rescale: true")
            params["rescale"] = _map_setting(v, lambda s: s != "none")
        elif k == "task_vectors":
            continue  # the base_model below says it
        else:
            params[PARAM_OUT.get(k, k)] = v
    if recipe.method == "task_arithmetic":
        params.setdefault("normalize", False)
    if recipe.method in DARE:
        params.setdefault("normalize", False)
    if recipe.method in NO_RESCALE:
        params.setdefault("rescale", False)
    uses_base = m.uses_base(recipe.params) or m.max_experts == 1
    if uses_base and not recipe.base:
        raise ValueError(f"recipe for {recipe.method!r} has no base; mergekit needs base_model")
    lora_base = None
    if not recipe.scope.all_tensors and _all_adapters(recipe):
        if not recipe.base:
            raise ValueError("a LoRA recipe needs base: for mergekit's BASE+LORA references")
        lora_base = recipe.base
    models = []
    if uses_base and m.max_experts == 1:
        models.append({"model": recipe.base})
    for e in recipe.experts:
        ref = f"{lora_base}+{e.path}" if lora_base else e.path
        p = {PARAM_OUT.get(k, k): (_map_setting(v, _flip) if recipe.method in DARE and k == "p" else v)
             for k, v in e.params.items()}
        if recipe.method not in NO_WEIGHT:
            p.setdefault("weight", e.weight)
        if recipe.method in DARE and "p" in e.params:
            p["density"] = p.pop("p")
        models.append({"model": ref, **({"parameters": p} if p else {})})
    out: dict[str, Any] = {"merge_method": method}
    if recipe.name:
        out["name"] = recipe.name
    if uses_base:
        out["base_model"] = recipe.base
    out["models"] = models
    out["parameters"] = params
    out["dtype"] = recipe.output.dtype
    return out


def _all_adapters(recipe: Recipe) -> bool:
    from graft_ui.models.loading import is_adapter

    return all(Path(e.path).is_dir() and is_adapter(e.path) for e in recipe.experts)


def load_any(path: str | Path) -> Recipe:
    """A recipe file or a mergekit config file, told apart by its keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{str(path)!r} is not valid YAML: {exc}") from None
    if is_mergekit(data):
        return from_mergekit(data, path.parent)
    return Recipe.load(path)


def parse_any(text: str) -> Recipe:
    """A recipe or a mergekit config pasted as YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    return from_mergekit(data) if is_mergekit(data) else Recipe.from_dict(data)


def dump_mergekit(recipe: Recipe) -> str:
    return yaml.safe_dump(to_mergekit(recipe), sort_keys=False)
