"""Model Stock. https://arxiv.org/abs/2403.19522

With task vectors d_i = E_i - base (k >= 2 experts) and cos = the mean pairwise cosine of the
d_i (over the flattened tensor, or per row with `filter_wise`):
t = k cos / (1 + (k - 1) cos), W = t mean(E_i) + (1 - t) base = base + t mean(d_i);
t = 0 where 1 + (k-1) cos is ~0. Identical experts give t = 1: W = the experts. Weights are
not used (as mergekit).
"""

from __future__ import annotations

import torch

from .registry import Method, Param, register, validate_params
from .sphere import combine, gram, norms
from .steps import check_inputs


def model_stock(base, experts, *, filter_wise: bool = False, out=None):
    check_inputs(base, experts, None, needs_base=True, method="model_stock")
    k = len(experts)
    if k < 2:
        raise ValueError(f"model_stock needs 2 or more experts besides the base; got {k}")
    per = "row" if filter_wise else "tensor"
    G = gram(experts, base, per)
    n = norms(G)
    pairs = [(G[..., i, j] / (n[..., i] * n[..., j]).clamp(min=1e-6)).clamp(-1, 1)
             for i in range(k) for j in range(i + 1, k)]
    cos = torch.stack(pairs).mean(0)
    den = 1 + (k - 1) * cos
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(den), den))
    coef = (t / k).unsqueeze(-1).expand(*t.shape, k)
    out = combine(experts, coef, base, per, out=out)
    return out, {"t": round(float(t.mean()), 6), "cos": round(float(cos.mean()), 6)}


def _merge(base, experts, weights, params, generator=None, out=None):
    return model_stock(base, experts, **validate_params("model_stock", params), out=out)


register(Method(
    name="model_stock", merge=_merge,
    params=(Param("filter_wise", False, "bool", help="one interpolation ratio per row instead of per tensor"),),
    paper="https://arxiv.org/abs/2403.19522",
    summary="base + t * mean task vector, t from the experts' mean pairwise cosine",
    min_experts=2, in_defaults=False, streams=True,
))
