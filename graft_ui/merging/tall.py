"""TALL masks and consensus merging (Wang et al. 2024). https://arxiv.org/abs/2405.07813

tau_MT = sum_i w_i tau_i (the task-arithmetic vector);
TALL mask of expert t:  m_t = 1[|tau_t| >= lam_t * |tau_MT - tau_t|]  (where tau_MT is close to tau_t);
consensus: keep entries where >= k experts' masks agree, W = base + lam * 1[sum_t m_t >= k] * tau_MT.
"""

from __future__ import annotations

import torch

from .registry import Method, Param, register, validate_params
from .steps import Counter, blockwise, check_inputs, weighted_sum
from .task_arithmetic import LAM


def tall_masks(taus: torch.Tensor, merged: torch.Tensor, lam_mask: float | list[float]) -> torch.Tensor:
    """Boolean (k, ...) masks m_t = |tau_t| >= lam_t * |merged - tau_t|; taus (k, ...), merged (...)."""
    lams = lam_mask if isinstance(lam_mask, (list, tuple)) else [lam_mask] * taus.shape[0]
    if len(lams) != taus.shape[0]:
        raise ValueError(f"lam_mask={lam_mask!r} has {len(lams)} entries for {taus.shape[0]} experts")
    out = torch.empty(taus.shape, dtype=torch.bool, device=taus.device)
    for t, lam_t in enumerate(lams):
        torch.ge(taus[t].abs(), (merged - taus[t]).abs_().mul_(lam_t), out=out[t])
    return out


def consensus(base, experts, weights=None, *, lam_mask: float = 0.4, k: int = 2, lam: float = 1.0,
              block_rows: int | None = None) -> tuple[torch.Tensor, dict]:
    w = check_inputs(base, experts, weights, needs_base=True, method="consensus")
    if k > len(experts):
        raise ValueError(f"consensus: k={k} exceeds the number of experts ({len(experts)})")
    per_expert, kept = Counter(len(experts), base.numel()), Counter(1, base.numel())

    def block(b, taus, sl):
        tau_mt = weighted_sum(taus, w)  # (r, K)
        masks = tall_masks(taus, tau_mt, lam_mask)
        for i in range(len(experts)):
            per_expert.add(i, masks[i])
        keep = masks.sum(0).ge_(k)
        kept.add(0, keep)
        return tau_mt.mul_(keep).mul_(lam).add_(b)

    out = blockwise(base, experts, block, block_rows=block_rows)
    return out, {"mask_kept": per_expert.fractions(), "kept": kept.fractions()[0],
                 "lam_mask": lam_mask, "k": k, "lam": lam}


def _merge(base, experts, weights, params, generator=None):
    return consensus(base, experts, weights, **validate_params("consensus", params))


LAM_MASK = Param("lam_mask", 0.4, "float", 0.0, 100.0,
                 help="TALL mask threshold: keep where |tau_t| >= lam_mask * |tau_merged - tau_t|")

register(
    Method(
        name="consensus",
        merge=_merge,
        params=(LAM_MASK, Param("k", 2, "int", 1, 64, help="minimum number of agreeing expert masks"), LAM),
        paper="https://arxiv.org/abs/2405.07813",
        summary="TALL-mask consensus: task arithmetic restricted to entries >= k experts' masks keep",
    )
)
