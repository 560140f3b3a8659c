"""Per-layer parameter values: gradients and filters, with mergekit's semantics (`config.py`).

A recipe parameter (global or per expert) is a *setting*:
- a scalar;
- a gradient: a list of numbers, interpolated piecewise-linearly at t (t = 0 at the first
  fused layer, 1 at the last: t = (layer - first) / (last - first), 1 for a one-layer range;
  tensors outside the layers, embeddings, final norm, lm_head, take t = 0). With K knots,
  s = t (K - 1), i = floor(s): value = (1 - (s - i)) v[i] + (s - i) v[min(i + 1, K - 1)].
  A list of non-numbers (true/false, choices) picks v[floor(t (K - 1))];
- a filter list: [{filter: "self_attn", value: SETTING}, ...]: the first entry whose filter
  is missing, "*" or a substring of the tensor name wins; none matching = not set here, so
  the next scope (the global parameters, then the method's default) decides. A lone
  {filter, value} mapping is a one-entry list.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .registry import Param


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str))


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def varies(setting: Any) -> bool:
    """Whether the setting depends on the layer or the tensor name (a gradient or filters)."""
    return not _scalar(setting)


def check_setting(param: Param, setting: Any, where: str = "") -> Any:
    """The setting with every value checked by `param` (ranges, types); plain lists and dicts."""
    name = f"{where}{param.name}"
    if isinstance(setting, Mapping):
        setting = [setting]
    if _scalar(setting):
        return param.check(setting)
    if not isinstance(setting, Sequence) or not setting:
        raise ValueError(f"parameter {name!r}={setting!r} must be a value, a non-empty list (gradient) "
                         "or a list of {filter, value}")
    if all(_scalar(v) for v in setting):
        return [param.check(v) for v in setting]
    out = []
    for i, cond in enumerate(setting):
        if not isinstance(cond, Mapping) or "value" not in cond or set(cond) - {"filter", "value"}:
            raise ValueError(f"parameter {name!r}: entry {i} ({cond!r}) must be a mapping with 'value' and an "
                             "optional 'filter'")
        if cond.get("filter") is not None and not isinstance(cond["filter"], str):
            raise ValueError(f"parameter {name!r}: filter {cond['filter']!r} must be a string")
        value = cond["value"]
        if not (_scalar(value) or (isinstance(value, Sequence) and value and all(_scalar(v) for v in value))):
            raise ValueError(f"parameter {name!r}: value {value!r} of entry {i} must be a value or a gradient")
        checked = param.check(value) if _scalar(value) else [param.check(v) for v in value]
        out.append({"filter": cond.get("filter"), "value": checked} if cond.get("filter") is not None
                   else {"value": checked})
    return out


def resolve(setting: Any, tensor: str, t: float) -> Any:
    """The value of `setting` for tensor name `tensor` at position t in [0, 1]; None = not set."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if _scalar(setting):
        return setting
    if not setting:
        return None
    if all(_scalar(v) for v in setting):
        if not all(_numeric(v) for v in setting):
            return setting[int(t * (len(setting) - 1))]
        s = t * (len(setting) - 1)
        i0 = int(s)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = s - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor and f in tensor):
            return resolve(cond["value"], tensor, t)
    return None


def layer_t(layer: int | None, first: int, last: int) -> float:
    """Gradient position of `layer` in the fused range [first, last]; 0 for non-layer tensors."""
    if layer is None:
        return 0.0
    return 1.0 if last <= first else (layer - first) / (last - first)


def resolve_params(params: Mapping[str, Any], defaults: Mapping[str, Any], tensor: str, t: float,
                   overrides: Sequence[Mapping[str, Any]] = (), per_expert: Sequence[str] = ()) -> dict[str, Any]:
    """Every parameter's value for one tensor. `overrides` (one mapping per expert) take
    precedence for the `per_expert` names, which then come back as one value per expert."""
    out = {}
    for name, default in defaults.items():
        shared = resolve(params[name], tensor, t) if name in params else None
        shared = default if shared is None else shared
        if name in per_expert and any(name in o for o in overrides):
            values = [resolve(o[name], tensor, t) if name in o else None for o in overrides]
            out[name] = [shared if v is None else v for v in values]
        else:
            out[name] = shared
    return out


def parse_knots(text: str) -> list[float]:
    """"0.2, 0.5, 0.8" -> [0.2, 0.5, 0.8] (commas or spaces); ValueError naming a bad entry."""
    out = []
    for tok in str(text or "").replace(",", " ").split():
        try:
            out.append(float(tok))
        except ValueError:
            raise ValueError(f"curve knot {tok!r} is not a number (write e.g. 0.2, 0.5, 0.8)") from None
    return out


def curve_setting(knots: Sequence[float], tensor_filter: str = "", otherwise: Any = None) -> Any:
    """A gradient over the layers, or, with a filter, that gradient on the matching tensors and
    `otherwise` (the parameter's plain value) on the rest."""
    knots = [float(k) for k in knots]
    if not tensor_filter:
        return knots
    return [{"filter": tensor_filter, "value": knots}] + ([{"value": otherwise}] if otherwise is not None else [])


def per_layer(setting: Any, first: int, last: int, tensor: str = "") -> list[tuple[int, Any]]:
    """(layer, value) over the fused layers, as a tensor named `tensor` of each layer sees it."""
    return [(layer, resolve(setting, tensor.replace("{layer}", str(layer)), layer_t(layer, first, last)))
            for layer in range(first, last + 1)]
