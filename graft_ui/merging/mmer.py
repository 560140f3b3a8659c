"""MMER: merge, then decouple each expert with a binary mask. https://arxiv.org/abs/2505.17110

The stored MMER text is only the abstract, so this module implements the rule DESIGN.md 3
fixes (TALL-style masks against the merged vector), not MMER's own equations:
  tau_i = E_i - base;  tau_M = lam * sum_i w_i tau_i (merge_step="task_arithmetic") or the TIES
  merged vector (merge_step="ties");  merged W = base + tau_M  (returned by merge())
  m_i = 1[|tau_i| >= lam_mask * |tau_M - tau_i|]   (entries where the merged vector serves expert i)
  expert i's decoupled parameters: W_i = base + m_i * tau_M   (`mmer_expert_view`)
"""

from __future__ import annotations

import math

import torch

from .registry import Method, Param, register, validate_params
from .steps import as_rows, auto_block_rows, check_inputs, load_task_vectors_, row_slices
from .tall import LAM_MASK, tall_masks
from .task_arithmetic import LAM, task_arithmetic
from .ties import ties_merge

MERGE_STEPS = ("task_arithmetic", "ties")


def mmer_merge(base, experts, weights=None, *, lam: float = 1.0, lam_mask: float = 0.4,
               merge_step: str = "task_arithmetic", density: float = 0.2,
               block_rows: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    """(merged, masks [bool, one per expert, tensor-shaped], stats).

    stats: mask_kept (fraction of entries each mask keeps) and recon_rel_err
    (||W_i - E_i|| / ||E_i - base||, how far each decoupled view is from its expert).
    """
    w = check_inputs(base, experts, weights, needs_base=True, method="mmer")
    if merge_step == "task_arithmetic":
        merged = task_arithmetic(base, experts, w, lam=lam, block_rows=block_rows)
    elif merge_step == "ties":
        merged, _ = ties_merge(base, experts, w, density=density, lam=lam, block_rows=block_rows, method="mmer")
    else:
        raise ValueError(f"merge_step={merge_step!r} is not one of {list(MERGE_STEPS)}")
    k = len(experts)
    masks = [torch.empty(base.shape, dtype=torch.bool, device=base.device) for _ in experts]
    m2, merged2, base2 = [as_rows(m) for m in masks], as_rows(merged), as_rows(base)
    rows, ncols = merged2.shape
    step = block_rows or auto_block_rows(ncols)
    buf = torch.empty((k, min(step, rows), ncols), dtype=torch.float32, device=base.device)
    kept, err, norm = [0] * k, [0.0] * k, [0.0] * k
    for sl in row_slices(rows, step):
        taus = load_task_vectors_(buf, base, experts, sl)  # (k, r, K)
        tau_m = merged2[sl].float() - base2[sl].float()  # (r, K)
        blk_masks = tall_masks(taus, tau_m, lam_mask)
        for i in range(k):
            m2[i][sl].copy_(blk_masks[i])
            kept[i] += int(blk_masks[i].count_nonzero())
            err[i] += float((tau_m * blk_masks[i] - taus[i]).double().square().sum())
            norm[i] += float(taus[i].double().square().sum())
    n = max(1, base.numel())
    stats = {
        "mask_kept": [round(c / n, 6) for c in kept],
        "recon_rel_err": [round(math.sqrt(e / s), 6) if s > 0 else 0.0 for e, s in zip(err, norm)],
        "lam": lam, "lam_mask": lam_mask, "merge_step": merge_step,
    }
    return merged, masks, stats


def mmer_expert_view(merged: torch.Tensor, masks, i: int, base: torch.Tensor | None = None) -> torch.Tensor:
    """Expert i's decoupled parameters base + m_i * (merged - base).

    Without `base`, `merged` is read as the merged task vector tau_M and m_i * tau_M is returned.
    """
    if not 0 <= i < len(masks):
        raise ValueError(f"expert index i={i} out of range for {len(masks)} masks")
    if base is None:
        return merged * masks[i]
    return (base.float() + (merged.float() - base.float()) * masks[i]).to(merged.dtype)


def _merge(base, experts, weights, params, generator=None):
    merged, _, stats = mmer_merge(base, experts, weights, **validate_params("mmer", params))
    return merged, stats


register(
    Method(
        name="mmer",
        merge=_merge,
        params=(
            LAM,
            LAM_MASK,
            Param("merge_step", "task_arithmetic", "choice", choices=MERGE_STEPS, help="how tau_M is merged"),
            Param("density", 0.2, "float", 0.0, 1.0, help="TIES density when merge_step=ties"),
        ),
        paper="https://arxiv.org/abs/2505.17110",
        summary="merge, then per-expert TALL-style binary masks decoupling each expert from the merged vector",
        extra={"masks": "mmer_merge returns the per-expert masks; mmer_expert_view rebuilds expert i"},
    )
)
