"""Arcee Fusion: take the expert's change only where it matters most (mergekit's `arcee_fusion`).
https://arcee.ai (mergekit docs: merge_methods.md)

importance = |E - base| * KL(softmax(E) || softmax(base)) (softmax along the last axis, one KL
per row, + 1e-8 inside the log); threshold = median + 1.5 IQR of the importances;
W = base + (E - base) [importance >= threshold]. One expert. Quantiles are exact (index
floor(q (n - 1)) of the sorted importances); mergekit estimates them from a random sample
of 1M entries on bigger tensors, so there they match in distribution only. Softmax over the
weights themselves: LoRA experts are refused.
"""

from __future__ import annotations

import torch

from .registry import Method, register, validate_params
from .steps import _kth_largest, as_one_row, check_inputs, the_one_expert


def importance(base: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    b, e = as_one_row(base).float(), as_one_row(expert).float()
    p = torch.softmax(e, dim=-1).add_(1e-8)
    q = torch.softmax(b, dim=-1).add_(1e-8)
    kl = (p * (p / q).log_()).sum(-1, keepdim=True)  # (rows, 1)
    return (e - b).abs_().mul_(kl)


def arcee_fusion(base: torch.Tensor, expert: torch.Tensor):
    check_inputs(base, [expert], None, needs_base=True, method="arcee_fusion")
    imp = importance(base, expert)
    flat = imp.reshape(-1)
    n = flat.numel()
    # the (floor(q (n-1)) + 1)-th smallest = the (n - floor(q (n-1)))-th largest
    q1, med, q3 = (_kth_largest(flat, n - int(q * (n - 1))) for q in (0.25, 0.5, 0.75))
    threshold = med + 1.5 * (q3 - q1)
    keep = imp >= threshold
    b2 = as_one_row(base).float()
    out = (as_one_row(expert).float() - b2).mul_(keep).add_(b2).reshape(base.shape).to(base.dtype)
    return out, {"threshold": threshold, "kept": round(float(keep.float().mean()), 6)}


def _merge(base, experts, weights, params, generator=None):
    validate_params("arcee_fusion", params)
    return arcee_fusion(base, the_one_expert(experts, "arcee_fusion", "fuses the base with"))


register(Method(
    name="arcee_fusion", merge=_merge, params=(),
    paper="https://arcee.ai",
    summary="keep the expert's change where |delta| * KL(softmax) is an outlier (> median + 1.5 IQR)",
    max_experts=1, in_defaults=False,
    weight_space="Arcee Fusion compares softmaxes of the full weights of base and expert",
))
