"""RAM and RAM+ (tensor-local): Reinforced Agent Merging. https://arxiv.org/abs/2601.13572 (mergekit's `ram`)

An entry of tau_i = E_i - base contributes when |tau_i| > epsilon; entries only one expert
changed are kept whole, shared ones averaged over their contributors:
ram: W = base + sum_i tau_i [|tau_i| > eps] / max(count, 1);
ramplus_tl: the unique part of expert i is scaled by 1 + r clamp(shared_i / unique_i, 0, alpha),
shared_i / unique_i counting expert i's shared / unique entries over the tensor. Weights unused.
"""

from __future__ import annotations

import torch

from .registry import Method, Param, register, validate_params
from .steps import blockwise, check_inputs, task_vector_blocks


def _masks(taus: torch.Tensor, epsilon: float):
    nz = taus.abs() > epsilon  # (k, r, K)
    count = nz.sum(0)
    return nz, count, count > 1, count == 1


def ram(base, experts, *, epsilon: float = 1e-5, r: float | None = None, alpha: float = 0.2):
    """RAM (r None) or RAM+ tensor-local (r, alpha)."""
    check_inputs(base, experts, None, needs_base=True, method="ram")
    k = len(experts)
    lam = [1.0] * k
    if r is not None:
        shared, unique = [0] * k, [0] * k
        for _, _, taus in task_vector_blocks(base, experts):
            nz, _, over, uniq = _masks(taus, epsilon)
            for i in range(k):
                shared[i] += int((nz[i] & over).sum())
                unique[i] += int((nz[i] & uniq).sum())
        lam = [1 + r * min(max(s / max(u, epsilon), 0.0), alpha) for s, u in zip(shared, unique)]

    def block(b, taus, sl):
        nz, count, over, uniq = _masks(taus, epsilon)
        out = torch.zeros_like(b)
        for i in range(k):
            t = taus[i] * nz[i]
            out.add_(t * uniq, alpha=lam[i]).add_(t * over / count.clamp(min=1))
        return out.add_(b)

    stats = {"epsilon": epsilon} if r is None else {"epsilon": epsilon, "unique_scale": [round(x, 6) for x in lam]}
    return blockwise(base, experts, block), stats


EPSILON = Param("epsilon", 1e-5, "float", 0.0, 1.0, help="|tau| above which an expert changed an entry")

register(Method(
    name="ram",
    merge=lambda base, experts, weights, params, generator=None: ram(base, experts, **validate_params("ram", params)),
    params=(EPSILON,), paper="https://arxiv.org/abs/2601.13572",
    summary="keep entries one expert changed, average the ones several changed", in_defaults=False,
))
register(Method(
    name="ramplus_tl",
    merge=lambda base, experts, weights, params, generator=None: ram(
        base, experts, **validate_params("ramplus_tl", params)),
    params=(Param("r", 0.1, "float", 0.0, 10.0, help="boost of an expert's unique entries per shared/unique ratio"),
            Param("alpha", 0.2, "float", 0.0, 10.0, help="cap of the shared/unique ratio"), EPSILON),
    paper="https://arxiv.org/abs/2601.13572",
    summary="RAM with each expert's unique entries boosted by its shared/unique ratio (tensor-local)",
    in_defaults=False,
))
