"""NuSLERP: SLERP between two experts, optionally of their task vectors (mergekit's `nuslerp`).
https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md

t = w_2 / (w_1 + w_2) (0.5 when the weights sum to ~0); v_i = E_i, or E_i - base with
`task_vectors`; W = [base +] (sin((1-t) theta) v_1 + sin(t theta) v_2) / sin(theta), theta the
angle of v_1, v_2 over the flattened tensor (`flatten`, mergekit's default), else per row,
or per column with `row_wise`; collinear vectors interpolate linearly.
"""

from __future__ import annotations

import math

import torch

from .registry import Method, Param, register, validate_params
from .sphere import combine, gram, norms
from .steps import check_inputs

EPS = 1e-8


def nuslerp(base, experts, weights=None, *, flatten: bool = True, row_wise: bool = False):
    w = check_inputs(base, experts, weights, needs_base=base is not None, method="nuslerp")
    if len(experts) != 2:
        raise ValueError(f"nuslerp interpolates exactly 2 experts; got {len(experts)}")
    total = sum(w)
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    per = "tensor" if flatten else ("col" if row_wise and experts[0].dim() >= 2 else "row")
    G = gram(experts, base, per)
    n = norms(G).clamp(min=1e-7)  # (..., 2)
    cos = (G[..., 0, 1] / (n[..., 0] * n[..., 1])).clamp(-1, 1)
    colinear = (1 - cos.square()) <= EPS ** 2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    s = torch.sin(theta)
    ca = torch.where(colinear, torch.full_like(cos, 1 - t), torch.sin((1 - t) * theta) / s)
    cb = torch.where(colinear, torch.full_like(cos, t), torch.sin(t * theta) / s)
    out = combine(experts, torch.stack([ca, cb], dim=-1), base, per)
    return out, {"t": t, "cos": round(float(cos.mean()), 6) if math.isfinite(float(cos.mean())) else None}


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("nuslerp", params)
    return nuslerp(base if p["task_vectors"] else None, experts, weights, flatten=p["flatten"], row_wise=p["row_wise"])


register(Method(
    name="nuslerp", merge=_merge,
    params=(Param("flatten", True, "bool", help="one angle for the whole tensor (mergekit nuslerp_flatten)"),
            Param("row_wise", False, "bool", help="without flatten: angles per column instead of per row"),
            Param("task_vectors", False, "bool", needs_base_unless=False,
                  help="interpolate E_i - base and add the base back (mergekit: a base_model is given)")),
    paper="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
    summary="SLERP between two experts at t = w2/(w1+w2), optionally of their task vectors",
    needs_base=False, min_experts=2, max_experts=2, in_defaults=False,
))
