"""Linear: mergekit's weighted mean of the experts' weights. https://arxiv.org/abs/2203.05482 (model soups)

W = sum_i w_i E_i / sum_i w_i (`normalize`, mergekit's default), or sum_i w_i E_i. The same
maths as `average`, under mergekit's name and with its `normalize` switch. Without
normalisation the base is scaled by sum_i w_i, which LoRA deltas cannot express unless the
weights sum to 1: such LoRA recipes are refused.
"""

from __future__ import annotations

from .average import average
from .registry import Method, Param, register, validate_params
from .steps import check_inputs


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("linear", params)
    w = check_inputs(None, experts, weights, needs_base=False, method="linear")
    return average(experts, w, normalize=p["normalize"]), {"weights": w, "normalize": p["normalize"]}


def _lora_check(params, weights) -> str:
    if params.get("normalize", True) is False and weights and abs(sum(weights) - 1) > 1e-9:
        return (f"normalize: false scales the base by the weights' sum ({sum(weights):g}), which LoRA deltas "
                "cannot express; use weights summing to 1 or normalize: true")
    return ""


register(Method(
    name="linear", merge=_merge,
    params=(Param("normalize", True, "bool", help="divide by the sum of the weights"),),
    paper="https://arxiv.org/abs/2203.05482",
    summary="weighted sum of the experts' weights, divided by the weights' sum (normalize)",
    needs_base=False, linear=True, in_defaults=False, lora_check=_lora_check,
))
