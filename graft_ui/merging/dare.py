"""DARE: drop and rescale. https://arxiv.org/abs/2311.03099

Each task vector entry is dropped with probability p and survivors are scaled by 1/(1-p)
(unbiased), with a seeded generator; then task arithmetic (dare_linear) or TIES' sign
election + disjoint mean without the magnitude trim (dare_ties, as mergekit and peft do).
"""

from __future__ import annotations

import math

import torch

from .registry import Method, Param, register, validate_params
from .steps import Counter, blockwise, check_inputs, drop_rescale_, weighted_sum
from .task_arithmetic import LAM
from .ties import ties_merge


def _dropper(generator, p):
    if generator is None:
        raise ValueError("DARE needs a seeded torch.Generator; got generator=None")
    state = {"buf": None}

    def drop(taus):
        need = math.prod(taus.shape[1:])
        if state["buf"] is None or state["buf"].numel() < need:
            state["buf"] = torch.empty(need, dtype=torch.float32, device=generator.device)
        return drop_rescale_(taus, p, generator, state["buf"])

    return drop


def dare_linear(base, experts, weights=None, *, p: float = 0.5, lam: float = 1.0,
                generator: torch.Generator | None = None, block_rows: int | None = None):
    w = check_inputs(base, experts, weights, needs_base=True, method="dare_linear")
    drop = _dropper(generator, p)
    kept = Counter(len(experts), base.numel())

    def block(b, taus, sl):
        drop(taus)
        for i in range(len(experts)):
            kept.add(i, taus[i])
        return weighted_sum(taus, w).mul_(lam).add_(b)

    out = blockwise(base, experts, block, block_rows=block_rows)
    return out, {"kept": kept.fractions(), "p": p, "lam": lam}


def dare_ties(base, experts, weights=None, *, p: float = 0.5, lam: float = 1.0,
              generator: torch.Generator | None = None, block_rows: int | None = None):
    out, stats = ties_merge(base, experts, weights, lam=lam, block_rows=block_rows,
                            prepare=_dropper(generator, p), method="dare_ties")
    stats["p"] = p
    return out, stats


P = Param("p", 0.5, "float", 0.0, 0.99, help="drop probability (survivors scaled by 1/(1-p))")

register(
    Method(
        name="dare_linear",
        merge=lambda base, experts, weights, params, generator=None: dare_linear(
            base, experts, weights, generator=generator, **validate_params("dare_linear", params)
        ),
        params=(P, LAM),
        paper="https://arxiv.org/abs/2311.03099",
        summary="random drop p + rescale 1/(1-p), then task arithmetic",
    )
)
register(
    Method(
        name="dare_ties",
        merge=lambda base, experts, weights, params, generator=None: dare_ties(
            base, experts, weights, generator=generator, **validate_params("dare_ties", params)
        ),
        params=(P, LAM),
        paper="https://arxiv.org/abs/2311.03099",
        summary="random drop p + rescale 1/(1-p), then TIES sign election and disjoint mean",
        kernels={"lora_tiled": "graft_ui.kernels.ties_lora:lora_tiled_dare"},
    )
)
