"""TIES-merging. https://arxiv.org/abs/2306.01708

tau_i = E_i - base, trimmed to its top `density` fraction by |tau| (per tensor, one kthvalue);
elect the sign of sum_i w_i tau_i per entry; disjoint mean over the experts that agree:
W = base + lam * sum_i w_i tau_i [agree_i] / sum_i w_i [agree_i].
"""

from __future__ import annotations

from typing import Callable

import torch

from .registry import Method, Param, per_expert, register, validate_params
from .steps import KTHVALUE_LIMIT, Counter, blockwise, check_inputs, disjoint_mean, elect_sign, expert_threshold, trim_
from .task_arithmetic import LAM

NORMALIZE = Param("normalize", True, "bool",
                  help="divide by the summed weights of the agreeing experts (false: sum them)")


def ties_merge(
    base: torch.Tensor,
    experts,
    weights=None,
    *,
    density: float | list[float] = 0.2,
    lam: float = 1.0,
    block_rows: int | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    method: str = "ties",
    normalize: bool = True,
) -> tuple[torch.Tensor, dict]:
    """TIES on one tensor: (merged, stats); `prepare(taus)` (in place, e.g. DARE's drop) replaces the trim.

    Thresholds are per tensor (kthvalue, or a streamed histogram pass for big tensors); entries
    tied with the threshold are all kept, so bf16 task vectors can keep slightly more than
    `density`. `normalize=False` sums the agreeing task vectors instead of averaging them
    (mergekit's TIES with normalize: false). stats: kept (per expert, fraction of non-zero entries after trim), nonzero
    (fraction of non-zero merged entries), lam.
    """
    w = check_inputs(base, experts, weights, needs_base=True, method=method)
    if prepare is None:
        dens = per_expert(density, len(experts), f"{method}: density")
        small = min(dens) < 1 and base.numel() <= KTHVALUE_LIMIT
        buf = torch.empty(base.numel(), dtype=torch.float32, device=base.device) if small else None
        thresholds = [expert_threshold(e, base, d, buf) for e, d in zip(experts, dens)]
        del buf
        prepare = lambda taus: trim_(taus, thresholds)  # noqa: E731
    kept, agree = Counter(len(experts), base.numel()), Counter(1, base.numel())

    def block(b, taus, sl):
        prepare(taus)
        for i in range(len(experts)):
            kept.add(i, taus[i])
        positive = elect_sign(taus, w)
        merged = disjoint_mean(taus, w, positive, normalize)
        agree.add(0, merged)
        return merged.mul_(lam).add_(b)

    out = blockwise(base, experts, block, block_rows=block_rows)
    return out, {"kept": kept.fractions(), "nonzero": agree.fractions()[0], "lam": lam}


def _merge(base, experts, weights, params, generator=None):
    p = validate_params("ties", params)
    out, stats = ties_merge(base, experts, weights, density=p["density"], lam=p["lam"], normalize=p["normalize"])
    stats["density"] = p["density"]
    return out, stats


register(
    Method(
        name="ties",
        merge=_merge,
        params=(
            Param("density", 0.2, "float", 0.0, 1.0, help="fraction of each task vector kept (top |tau|)"),
            LAM,
            NORMALIZE,
        ),
        paper="https://arxiv.org/abs/2306.01708",
        summary="trim to top-k |tau|, elect sign, disjoint mean: base + lam * merged",
        kernels={"fuse_tensor": "graft_ui.kernels.ties:fuse_tensor",
                 "lora_tiled": "graft_ui.kernels.ties_lora:lora_tiled_ties"},
        kernel_params={"normalize": True},
        expert_params=("density",),
    )
)
