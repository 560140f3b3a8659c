"""Multi-SLERP: barycentric interpolation of k experts on the hypersphere (mergekit's `multislerp`).
https://goddard.blog/posts/multislerp-wow-what-a-cool-idea

v_i = E_i (or E_i - base with `task_vectors`), u_i = v_i / (|v_i| + eps), w normalised to sum 1:
m = sum w_i u_i / |.|; tangent T = sum w_i (u_i - <u_i, m> m);
W = [base +] (cos|T| m + sin|T| T/|T|) * sum_i w_i |v_i|. All on the flattened tensor; every
vector is a combination of the v_i, so it runs on their Gram matrix (sphere.py).
"""

from __future__ import annotations

import torch

from .registry import Method, Param, register, validate_params
from .sphere import combine, gram, norms, quad
from .steps import check_inputs

EPS = 1e-8


def multislerp_coefficients(G: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """Coefficients c with result = sum c_i v_i; None when the weighted mean direction vanishes."""
    n = norms(G)
    a = 1 / (n + EPS)  # u_i = a_i v_i
    m = w * a
    mn = quad(G, m).clamp(min=0).sqrt()
    if mn < EPS:
        return None
    m = m / mn
    dots = a * (G @ m)  # <u_i, m>
    T = w * a - (w * dots).sum() * m
    tn = quad(G, T).clamp(min=0).sqrt() + EPS
    return (torch.cos(tn) * m + torch.sin(tn) / tn * T) * (n * w).sum()


def multislerp(base, experts, weights=None, *, normalize_weights: bool = True):
    w = check_inputs(base, experts, weights, needs_base=base is not None, method="multislerp")
    if len(experts) == 1:
        return experts[0].clone(), {}
    wt = torch.tensor(w, dtype=torch.float64)
    if normalize_weights:
        wt = wt / wt.sum()
    c = multislerp_coefficients(gram(experts, base), wt)
    if c is None:
        if len(experts) != 2:
            raise ValueError("multislerp: the weighted mean direction of the experts is zero (antipodal experts "
                             f"with balancing weights {w}); use other weights")
        c = wt  # mergekit's fallback for two antipodal vectors: the linear blend
    return combine(experts, c, base), {"coefficients": [round(float(x), 6) for x in c]}


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("multislerp", params)
    return multislerp(base if p["task_vectors"] else None, experts, weights, normalize_weights=p["normalize_weights"])


register(Method(
    name="multislerp", merge=_merge,
    params=(Param("normalize_weights", True, "bool", help="scale the weights to sum to 1"),
            Param("task_vectors", False, "bool", needs_base_unless=False,
                  help="interpolate E_i - base and add the base back (mergekit: a base_model is given)")),
    paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    summary="barycentric SLERP of k experts (tangent-space mean, mapped back to the sphere)",
    needs_base=False, min_experts=2, in_defaults=False,
))
