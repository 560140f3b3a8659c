"""DARE: drop and rescale. https://arxiv.org/abs/2311.03099

Each task vector entry is dropped with probability p and survivors are scaled by 1/(1-p)
(unbiased), with a seeded generator; then task arithmetic (dare_linear) or TIES' sign
election + disjoint mean without the magnitude trim (dare_ties, as mergekit and peft do).
`rescale: l1` scales each dropped task vector back to its L1 norm instead (mergekit's
rescale), `none` keeps the survivors as they are; `normalize: false` (dare_ties) sums the
agreeing task vectors, as mergekit's dare_ties does by default. Those settings go through
gta.py, the defaults through the fast paths.
"""

from __future__ import annotations

import math

import torch

from .registry import Method, Param, register, validate_params
from .steps import Counter, blockwise, check_inputs, drop_rescale_, weighted_sum
from .gta import gta_merge
from .task_arithmetic import LAM
from .ties import NORMALIZE, ties_merge


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


def _dare_gta(base, experts, weights, *, p, lam, generator, rescale, normalize, consensus, method):
    density = [1.0 - x for x in p] if isinstance(p, (list, tuple)) else 1.0 - p
    out, stats = gta_merge(base, experts, weights, sparsify="random", consensus=consensus, density=density,
                           normalize=normalize, rescale=rescale, lam=lam, generator=generator, method=method)
    return out, dict(stats, p=p)


def dare_linear(base, experts, weights=None, *, p: float = 0.5, lam: float = 1.0,
                generator: torch.Generator | None = None, block_rows: int | None = None, rescale: str = "inverse"):
    if rescale != "inverse" or isinstance(p, (list, tuple)):  # mergekit's forms, or one p per expert
        return _dare_gta(base, experts, weights, p=p, lam=lam, generator=generator, rescale=rescale,
                         normalize=False, consensus=False, method="dare_linear")
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
              generator: torch.Generator | None = None, block_rows: int | None = None, rescale: str = "inverse",
              normalize: bool = True):
    if rescale != "inverse" or isinstance(p, (list, tuple)):
        return _dare_gta(base, experts, weights, p=p, lam=lam, generator=generator, rescale=rescale,
                         normalize=normalize, consensus=True, method="dare_ties")
    out, stats = ties_merge(base, experts, weights, lam=lam, block_rows=block_rows,
                            prepare=_dropper(generator, p), method="dare_ties", normalize=normalize)
    stats["p"] = p
    return out, stats


P = Param("p", 0.5, "float", 0.0, 0.99, help="drop probability (survivors scaled by 1/(1-p))")
RESCALE = Param("rescale", "inverse", "choice", choices=("inverse", "l1", "none"),
                help="survivors x 1/(1-p) (inverse), back to the task vector's L1 norm (l1, mergekit), or none")

register(
    Method(
        name="dare_linear",
        merge=lambda base, experts, weights, params, generator=None: dare_linear(
            base, experts, weights, generator=generator, **validate_params("dare_linear", params)
        ),
        params=(P, LAM, RESCALE),
        paper="https://arxiv.org/abs/2311.03099",
        summary="random drop p + rescale 1/(1-p), then task arithmetic",
        expert_params=("p",),
    )
)
register(
    Method(
        name="dare_ties",
        merge=lambda base, experts, weights, params, generator=None: dare_ties(
            base, experts, weights, generator=generator, **validate_params("dare_ties", params)
        ),
        params=(P, LAM, RESCALE, NORMALIZE),
        paper="https://arxiv.org/abs/2311.03099",
        summary="random drop p + rescale 1/(1-p), then TIES sign election and disjoint mean",
        kernels={"lora_tiled": "graft_ui.kernels.ties_lora:lora_tiled_dare"},
        kernel_params={"rescale": "inverse", "normalize": True},
        expert_params=("p",),
    )
)
