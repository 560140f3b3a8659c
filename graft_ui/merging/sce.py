"""SCE: select, calculate, erase. https://arxiv.org/abs/2408.07990 (FuseChat; mergekit's `sce`)

Task vectors tau_i = E_i - base; select: with select_topk < 1 keep the entries with the top
fraction of variance across experts (of the non-zero variances); calculate: expert weight
a_i = mean(tau_i^2) / sum_j mean(tau_j^2) (equal when that sum is ~0); erase: TIES' sign
election (unweighted); W = base + sum_i a_i tau_i [agree_i] / max(sum_i a_i [agree_i], 1e-6).
The recipe's weights are not used (as mergekit).
"""

from __future__ import annotations

import torch

from .registry import Method, Param, register, validate_params
from .steps import KTHVALUE_LIMIT, _kth_largest, as_rows, blockwise, check_inputs, elect_sign, kth_largest_abs, task_vector_blocks


def _variance(taus: torch.Tensor) -> torch.Tensor:
    return taus.var(dim=0, unbiased=False)


def _var_threshold(base, experts, density: float) -> float | None:
    """Variance at the top `density` fraction of the non-zero variances; None keeps all."""
    if density >= 1:
        return None
    if density <= 0:
        return float("inf")
    blocks = lambda: (_variance(t) for _, _, t in task_vector_blocks(base, experts))  # noqa: E731
    nonzero = sum(int(v.count_nonzero()) for v in blocks())
    k = int(nonzero * density)
    if k == 0:
        return float("inf")
    if base.numel() <= KTHVALUE_LIMIT:
        return _kth_largest(torch.cat([v.reshape(-1) for v in blocks()]), k)
    return kth_largest_abs(blocks, k)


def sce(base, experts, *, select_topk: float = 1.0):
    check_inputs(base, experts, None, needs_base=True, method="sce")
    k = len(experts)
    thr = _var_threshold(base, experts, select_topk)

    def select_(taus):
        if thr is not None:
            taus.mul_(_variance(taus).ge_(thr))  # thr > 0: zero variances never pass
        return taus

    sq = [0.0] * k
    for _, _, taus in task_vector_blocks(base, experts):
        select_(taus)
        for i in range(k):
            sq[i] += float(taus[i].square().sum(dtype=torch.float64))
    means = [s / max(1, base.numel()) for s in sq]
    total = sum(means)
    a = [1.0 / k] * k if abs(total) < 1e-6 else [m / total for m in means]

    def block(b, taus, sl):
        select_(taus)
        positive = elect_sign(taus, [1.0] * k)
        num, den = torch.zeros_like(b), torch.zeros_like(b)
        for i in range(k):
            agree = torch.where(positive, taus[i] > 0, taus[i] < 0)
            num.add_(taus[i] * agree, alpha=a[i])
            den.add_(agree.float(), alpha=a[i])
        return num.div_(den.clamp_(min=1e-6)).add_(b)

    return blockwise(base, experts, block), {"weights": [round(x, 6) for x in a], "select_topk": select_topk}


def _merge(base, experts, weights, params, generator=None):
    return sce(base, experts, **validate_params("sce", params))


register(Method(
    name="sce", merge=_merge,
    params=(Param("select_topk", 1.0, "float", 0.0, 1.0, help="fraction of entries kept by variance across experts"),),
    paper="https://arxiv.org/abs/2408.07990",
    summary="select high-variance entries, weight experts by their task vectors' energy, erase minority signs",
    in_defaults=False,
))
