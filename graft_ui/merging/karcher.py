"""Karcher mean: the Riemannian (geodesic) mean of the experts' directions on the hypersphere,
scaled by their mean norm. https://arxiv.org/abs/2603.04972 (mergekit's `karcher`)

u_i = E_i / |E_i| (flattened; experts with norm <= tol are left out of the direction),
m = normalised mean of the u_i, then up to `max_iter` times: T = sum_i a_i theta_i/sin(theta_i)
(u_i - cos(theta_i) m) over the u_i with theta_i >= tol; stop when |T| < tol; else
m = cos|T| m + sin|T| T/|T|, renormalised. W = (sum_i |E_i| / k) m. Equal weights a_i = 1/k
whatever the recipe's weights (as mergekit). m stays a combination of the E_i, so this runs
on their Gram matrix (sphere.py). Works on the weights themselves: LoRA experts are refused.
"""

from __future__ import annotations

import math

import torch

from .registry import Method, Param, register, validate_params
from .sphere import combine, gram, norms, quad
from .steps import check_inputs


def karcher_coefficients(G: torch.Tensor, max_iter: int = 10, tol: float = 1e-5) -> tuple[torch.Tensor, int]:
    """(c, iterations) with the Karcher mean = sum c_i E_i, from the Gram matrix G (k, k)."""
    k = G.shape[0]
    n = norms(G)
    valid = [i for i in range(k) if float(n[i]) > tol]
    if not valid:
        return torch.zeros(k, dtype=G.dtype), 0
    alpha = 1.0 / len(valid)
    unit = torch.zeros(k, k, dtype=G.dtype)  # row i: coefficients of u_i
    for i in valid:
        unit[i, i] = 1 / n[i]
    mean = sum(alpha * unit[i] for i in valid)
    mn = math.sqrt(max(0.0, float(quad(G, mean))))
    mean = unit[valid[0]].clone() if mn < tol else mean / mn
    it = 0
    for it in range(1, max_iter + 1):
        tangent = torch.zeros(k, dtype=G.dtype)
        for i in valid:
            dot = max(-1.0, min(1.0, float(quad(G, mean, unit[i]))))
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent += alpha * (theta / math.sin(theta)) * (unit[i] - dot * mean)
        tn = math.sqrt(max(0.0, float(quad(G, tangent))))
        if tn < tol:
            break
        mean = math.cos(tn) * mean + math.sin(tn) * (tangent / tn)
        un = math.sqrt(max(0.0, float(quad(G, mean))))
        if un > tol:
            mean = mean / un
    return mean * float(n.sum() / k), it


def karcher(experts, *, max_iter: int = 10, tol: float = 1e-5):
    check_inputs(None, experts, None, needs_base=False, method="karcher")
    if len(experts) == 1:
        return experts[0].clone(), {}
    c, it = karcher_coefficients(gram(experts), max_iter, tol)
    return combine(experts, c), {"iterations": it, "coefficients": [round(float(x), 6) for x in c]}


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("karcher", params)
    return karcher(experts, max_iter=p["max_iter"], tol=p["tol"])


register(Method(
    name="karcher", merge=_merge,
    params=(Param("max_iter", 10, "int", 1, 1000, help="most Riemannian gradient steps"),
            Param("tol", 1e-5, "float", above=0.0, high=1.0, help="stop when the tangent norm is below this")),
    paper="https://arxiv.org/abs/2603.04972",
    summary="geodesic (Karcher) mean of the experts' directions, scaled by their mean norm",
    needs_base=False, min_experts=2, in_defaults=False,
    weight_space="the Karcher mean averages the directions of the full weights, not task vectors",
))
