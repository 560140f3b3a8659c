"""NearSwap: take the expert's value where it is close to the base.
https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001 (mergekit's `nearswap`)

Per entry, w = clamp(t / max(|E - base|, 1e-6), 0, 1); W = base + w (E - base): entries
within t of the base take the expert's value, far ones move by t. One expert.
"""

from __future__ import annotations

from .registry import Method, Param, register, validate_params
from .steps import blockwise, check_inputs, the_one_expert


def nearswap(base, expert, t: float):
    check_inputs(base, [expert], None, needs_base=True, method="nearswap")

    def block(b, taus, sl):
        d = taus[0]
        return d.mul_((t / d.abs().clamp(min=1e-6)).clamp_(0, 1)).add_(b)

    return blockwise(base, [expert], block), {"t": t}


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("nearswap", params)
    return nearswap(base, the_one_expert(experts, "nearswap", "blends the base with"), p["t"])


register(Method(
    name="nearswap", merge=_merge,
    params=(Param("t", 0.0001, "float", above=0.0, help="distance below which the expert's value is taken"),),
    paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    summary="per entry, move the base toward the expert by at most t (swap where closer than t)",
    max_experts=1, in_defaults=False,
))
