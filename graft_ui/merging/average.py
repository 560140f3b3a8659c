"""Average: the (weighted) mean of the experts' weights. https://arxiv.org/abs/2203.05482 (model soups)

W = sum_i w_i E_i / sum_i w_i; the base is not used.
"""

from __future__ import annotations

import torch

from .registry import Method, register, validate_params
from .steps import as_rows, auto_block_rows, check_inputs, row_slices


def average(experts, weights=None, *, block_rows: int | None = None, normalize: bool = True) -> torch.Tensor:
    """sum_i w_i E_i / sum_i w_i (`normalize=False`: the plain weighted sum)."""
    w = check_inputs(None, experts, weights, needs_base=False, method="average")
    total = sum(w) if normalize else 1.0
    if total == 0:
        raise ValueError(f"average: weights={w} sum to 0")
    out = torch.empty_like(experts[0])
    out2 = as_rows(out)
    rows, ncols = out2.shape
    step = block_rows or auto_block_rows(ncols)
    acc = torch.empty((min(step, rows), ncols), dtype=torch.float32, device=out.device)
    for sl in row_slices(rows, step):
        blk = acc[: sl.stop - sl.start].zero_()  # (r, K)
        for e, wi in zip(experts, w):
            blk.add_(as_rows(e)[sl], alpha=wi / total)
        out2[sl].copy_(blk)
    return out


def _merge(base, experts, weights, params, generator=None):
    validate_params("average", params)
    w = check_inputs(None, experts, weights, needs_base=False, method="average")
    return average(experts, w), {"weights": w}


register(
    Method(
        name="average",
        merge=_merge,
        params=(),
        paper="https://arxiv.org/abs/2203.05482",
        summary="weighted mean of the experts' weights",
        needs_base=False,
        linear=True,
    )
)
