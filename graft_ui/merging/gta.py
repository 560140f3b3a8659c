"""Generalized task arithmetic: the engine shared by Breadcrumbs, DELLA and the mergekit forms
of DARE. https://arxiv.org/abs/2212.04089 (task arithmetic) and mergekit's
`generalized_task_arithmetic.py`.

Per tensor: tau_i = E_i - base, sparsified (sparsify.py; optionally L1-rescaled), weighted;
with sign consensus (TIES' election, steps.elect_sign / disjoint_mean) or a plain sum;
`normalize` divides by the weights of the contributing experts; W = base + lam * merged.
Two passes over row blocks when L1 rescaling needs the whole tensor's norms first: the first
draws the random masks (DELLA ranks each row there, its costly step) and keeps them packed
as bits (n/8 bytes per expert), the second applies them, so both passes see one draw.
"""

from __future__ import annotations

import torch

from .registry import Param, per_expert
from .sparsify import KeptMasks, Sparsifier, l1_rescale_factors
from .steps import Counter, as_one_row, blockwise, check_inputs, disjoint_mean, elect_sign, task_vector_blocks, weighted_sum

NORMALIZE = Param("normalize", False, "bool", help="divide by the summed weights of the contributing experts")
RESCALE = Param("rescale", True, "bool", help="scale each sparsified task vector back to its L1 norm")
DENSITY = Param("density", 1.0, "float", 0.0, 1.0, help="fraction of each task vector kept")


def gta_merge(
    base: torch.Tensor,
    experts,
    weights=None,
    *,
    sparsify: str | None,
    consensus: bool,
    density=1.0,
    gamma=0.0,
    epsilon=0.0,
    normalize: bool = False,
    rescale: bool | str = False,
    lam: float = 1.0,
    generator: torch.Generator | None = None,
    method: str = "gta",
    block_rows: int | None = None,
    out=None,
) -> tuple[torch.Tensor, dict]:
    """One tensor: (merged, stats). density / gamma / epsilon: a value or one per expert.
    rescale: True / "l1" (back to the L1 norm), "inverse" (x 1/density, DARE's), False / "none".
    `out`: where the result goes (a tensor or a stored.Sink), else a new tensor."""
    rescale = {True: "l1", False: "none"}.get(rescale, rescale)
    w = check_inputs(base, experts, weights, needs_base=True, method=method)
    k = len(experts)
    sparsifiers = []
    if sparsify is not None:
        d, g, e = (per_expert(v, k, f"{method}: {n}") for v, n in ((density, "density"), (gamma, "gamma"),
                                                                       (epsilon, "epsilon")))
        sparsifiers = [Sparsifier(sparsify, d[i], g[i], e[i]).prepare(experts[i], base) for i in range(k)]
    rows = dict(block_rows=block_rows, view=as_one_row)  # DELLA ranks along a vector's whole length

    def prune_(taus, keeps=None):
        for i, s in enumerate(sparsifiers):
            s.apply_(taus[i], generator, None if keeps is None else keeps[i])
        return taus

    scale, drawn = [1.0] * k, None
    if sparsifiers and rescale == "inverse":
        scale = [1.0 / s.density if 0 < s.density < 1 else 1.0 for s in sparsifiers]
    elif sparsifiers and rescale == "l1":
        before, after = [0.0] * k, [0.0] * k
        drawn = (KeptMasks(k, base.numel(), as_one_row(base).shape[0], base.device)
                 if any(s.random for s in sparsifiers) else None)
        for _, _, taus in task_vector_blocks(base, experts, **rows):
            for i in range(k):
                before[i] += float(taus[i].abs().sum(dtype=torch.float64))
            keeps = [s.keep(taus[i], generator) if s.random else None for i, s in enumerate(sparsifiers)]
            for i, s in enumerate(sparsifiers):
                s.apply_(taus[i], generator, keeps[i])
                after[i] += float(taus[i].abs().sum(dtype=torch.float64))
            if drawn is not None:
                drawn.put(keeps)
        scale = l1_rescale_factors(before, after)
    kept, nonzero = Counter(k, base.numel()), Counter(1, base.numel())
    total = sum(w)

    def block(b, taus, sl):
        prune_(taus, drawn.take() if drawn is not None else None)
        for i in range(k):
            kept.add(i, taus[i])
            if scale[i] != 1.0:
                taus[i].mul_(scale[i])
        if consensus:
            merged = disjoint_mean(taus, w, elect_sign(taus, w), normalize)
        else:
            merged = weighted_sum(taus, w)
            if normalize and abs(total) >= 1e-8:
                merged.div_(total)
        nonzero.add(0, merged)
        return merged.mul_(lam).add_(b) if lam != 1 else merged.add_(b)

    out = blockwise(base, experts, block, out=out, **rows)
    stats = {"kept": kept.fractions(), "nonzero": nonzero.fractions()[0], "lam": lam}
    if sparsifiers and rescale != "none":
        stats["rescale"] = [round(s, 6) for s in scale]
    return out, stats


def gta_method(name: str, *, sparsify: str | None, consensus: bool, normalize: bool, rescale: bool,
               extra: tuple[Param, ...] = (), density: float = 1.0, paper: str, summary: str):
    """A registry entry for one member of the family, with mergekit's defaults for it. Random
    and DELLA sparsification are blockwise, so those members stream (`Method.streams`); the
    magnitude bands rank a whole tensor up front."""
    from .registry import Method, validate_params
    from .task_arithmetic import LAM

    params = (Param("density", density, "float", 0.0, 1.0, help=DENSITY.help), *extra,
              Param("normalize", normalize, "bool", help=NORMALIZE.help),
              Param("rescale", rescale, "bool", help=RESCALE.help), LAM)

    def merge(base, experts, weights, p, generator=None, out=None):
        p = validate_params(name, p)
        return gta_merge(base, experts, weights, sparsify=sparsify, consensus=consensus, density=p["density"],
                         gamma=p.get("gamma", 0.0), epsilon=p.get("epsilon", 0.0), normalize=p["normalize"],
                         rescale=p["rescale"], lam=p["lam"], generator=generator, method=name, out=out)

    return Method(name=name, merge=merge, params=params, paper=paper, summary=summary, in_defaults=False,
                  expert_params=("density",) + tuple(q.name for q in extra),
                  streams=sparsify in (None, "random", "della"))
