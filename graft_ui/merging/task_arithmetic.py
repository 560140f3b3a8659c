"""Task arithmetic. https://arxiv.org/abs/2212.04089

tau_i = E_i - base;  W = base + lam * sum_i w_i tau_i.
"""

from __future__ import annotations

import torch

from .registry import Method, Param, register, validate_params
from .steps import blockwise, check_inputs, weighted_sum


def task_arithmetic(base, experts, weights=None, *, lam: float = 1.0, block_rows: int | None = None) -> torch.Tensor:
    w = check_inputs(base, experts, weights, needs_base=True, method="task_arithmetic")
    # b may alias the stored base: build the block in the weighted-sum buffer instead
    return blockwise(
        base, experts, lambda b, taus, sl: weighted_sum(taus, w).mul_(lam).add_(b), block_rows=block_rows
    )


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("task_arithmetic", params)
    return task_arithmetic(base, experts, weights, lam=p["lam"]), {"lam": p["lam"]}


LAM = Param("lam", 1.0, "float", -10.0, 10.0, help="scale of the merged task vector")

register(
    Method(
        name="task_arithmetic",
        merge=_merge,
        params=(LAM,),
        paper="https://arxiv.org/abs/2212.04089",
        summary="base + lam * sum_i w_i (expert_i - base)",
        linear=True,
    )
)
