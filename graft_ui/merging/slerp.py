"""SLERP: spherical interpolation between the base and one expert. https://en.wikipedia.org/wiki/Slerp
(as mergekit's `slerp`, the most common community merge).

With a = base, b = expert flattened, theta = angle between them:
W = sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b; nearly collinear inputs
(|cos theta| > 0.9995) interpolate linearly. t = 0 gives the base, t = 1 the expert. Works on
the weights themselves, not on task vectors, so LoRA experts are refused.
"""

from __future__ import annotations

import math

import torch

from .registry import Method, Param, register, validate_params
from .sphere import combine, gram, norms
from .steps import check_inputs, the_one_expert

DOT_THRESHOLD, EPS = 0.9995, 1e-8


def slerp_coefficients(G: torch.Tensor, t: float) -> tuple[float, float, float]:
    """(c_a, c_b, cos theta) for the 2 x 2 Gram matrix of (a, b)."""
    na, nb = (float(n) if float(n) > EPS else 1.0 for n in norms(G))
    dot = max(-1.0, min(1.0, float(G[0, 1]) / (na * nb)))
    if abs(dot) > DOT_THRESHOLD:
        return 1 - t, t, dot
    theta = math.acos(dot)
    s = math.sin(theta)
    return math.sin((1 - t) * theta) / s, math.sin(t * theta) / s, dot


def slerp(base: torch.Tensor, expert: torch.Tensor, t: float, out=None) -> tuple[torch.Tensor, dict]:
    check_inputs(base, [expert], None, needs_base=True, method="slerp")
    ca, cb, dot = slerp_coefficients(gram([base, expert]), t)
    out = combine([base, expert], torch.tensor([ca, cb], dtype=torch.float64), out=out)
    return out, {"t": t, "cos": round(dot, 6), "coefficients": [ca, cb]}


def _merge(base, experts, weights, params, generator=None, out=None):
    p = validate_params("slerp", params)
    return slerp(base, the_one_expert(experts, "slerp", "interpolates the base and"), p["t"], out)


register(Method(
    name="slerp", merge=_merge,
    params=(Param("t", 0.5, "float", 0.0, 1.0, help="0 = base, 1 = the expert"),),
    paper="https://en.wikipedia.org/wiki/Slerp",
    summary="spherical interpolation between the base (t=0) and one expert (t=1)",
    max_experts=1, in_defaults=False, streams=True,
    weight_space="SLERP interpolates the full weights of the base and the expert, not task vectors",
))
