"""Weights-only pair signals, with LoRA's computed from the factors (never the dense delta).

For one module of two LoRA experts, tau = s * B @ A with B (M, r), A (r, N):

    <tau_a, tau_b> = s_a s_b tr((B_a^T B_b)(A_b A_a^T))        r_a x r_b and r_b x r_a products only
    |tau|^2        = s^2 tr((B^T B)(A A^T))
    sign entry     tau[i, j] = s B[i, :] . A[:, j] on a seeded sample of entries (SIGN_SAMPLES per module)
    B overlap      cos^2 of the principal angles between col(B_a) and col(B_b): the singular values
                   of Q_a^T Q_b (Q = orthonormal basis of B's columns), mean of their squares over
                   min(r_a, r_b); 1 = the two adapters write into the same output subspace
                   (Pico, arXiv 2604.16826, puts LoRA merge interference in the B side)

Over all modules both experts adapt:

    cosine          sum <tau_a, tau_b> / (|tau_a| |tau_b|)
    sign_agreement  fraction of sampled entries where both are nonzero and agree in sign
    norm_ratio      min(|tau_a|, |tau_b|) / max(...): 1 = equally strong deltas
    b_overlap       mean over modules of the B overlap (LoRA only; None for full experts)

Full experts have no factors: their task vectors (expert - base) are compared one tensor at a
time by graft_ui.study.weights, and the norm ratio is added here.
"""

from __future__ import annotations

import math

import torch

from graft_ui.models.lora_io import LoraAdapter
from graft_ui.models.manifest import Manifest, ModelEntry
from graft_ui.recipe import ALL_MODULES

SIGN_SAMPLES = 4096  # entries per module for the sign agreement: its standard error is < 0.01


def factor_inner(Ba: torch.Tensor, Aa: torch.Tensor, Bb: torch.Tensor, Ab: torch.Tensor) -> torch.Tensor:
    """<Ba @ Aa, Bb @ Ab> (Frobenius) from the factors: tr((Ba^T Bb)(Ab Aa^T)); B (M, r), A (r, N)."""
    return torch.trace((Ba.T @ Bb) @ (Ab @ Aa.T))


def b_overlap(Ba: torch.Tensor, Bb: torch.Tensor) -> float:
    """Mean cos^2 of the principal angles between the column spaces of Ba (M, ra) and Bb (M, rb)."""
    qa, qb = torch.linalg.qr(Ba)[0], torch.linalg.qr(Bb)[0]  # (M, ra), (M, rb)
    s = torch.linalg.svdvals(qa.T @ qb)  # cosines of the principal angles
    return float((s.clamp(max=1.0) ** 2).sum() / min(Ba.shape[1], Bb.shape[1]))


def sampled_signs(Ba, Aa, Bb, Ab, gen: torch.Generator, n: int = SIGN_SAMPLES) -> tuple[int, int]:
    """(agree, both nonzero) over n seeded entries (i, j) of the two products, each entry B[i] . A[:, j]."""
    M, N = Ba.shape[0], Aa.shape[1]
    i = torch.randint(0, M, (n,), generator=gen)
    j = torch.randint(0, N, (n,), generator=gen)
    ea = (Ba[i] * Aa[:, j].T).sum(1)  # (n,)
    eb = (Bb[i] * Ab[:, j].T).sum(1)
    sa, sb = torch.sign(ea), torch.sign(eb)
    nz = (sa != 0) & (sb != 0)
    return int(((sa == sb) & nz).sum()), int(nz.sum())


def lora_signals(a: ModelEntry, b: ModelEntry, *, seed: int = 0) -> dict:
    """The module docstring's signals of two LoRA experts, from their factors (float64)."""
    ad_a, ad_b = LoraAdapter(a.path), LoraAdapter(b.path)
    gen = torch.Generator().manual_seed(seed)
    dot = na = nb = 0.0
    agree = both = modules = 0
    overlaps = []
    try:
        for key, ma in ad_a.modules.items():
            mb = ad_b.modules.get(key)
            if mb is None or getattr(key, "module", None) not in ALL_MODULES:
                continue
            Ba, Aa = (t.double() for t in ad_a.read(ma))
            Bb, Ab = (t.double() for t in ad_b.read(mb))
            Ba, Bb = Ba * ma.scale, Bb * mb.scale  # the scale rides on B: tau = (s B) A
            dot += float(factor_inner(Ba, Aa, Bb, Ab))
            na += float(factor_inner(Ba, Aa, Ba, Aa))
            nb += float(factor_inner(Bb, Ab, Bb, Ab))
            g, n = sampled_signs(Ba, Aa, Bb, Ab, gen)
            agree, both = agree + g, both + n
            overlaps.append(b_overlap(Ba, Bb))
            modules += 1
    finally:
        ad_a.close()
        ad_b.close()
    if not modules:
        raise ValueError(f"experts {a.name!r} and {b.name!r} share no fused module to compare")
    norm_a, norm_b = math.sqrt(max(na, 0.0)), math.sqrt(max(nb, 0.0))
    return {"cosine": dot / (norm_a * norm_b) if norm_a * norm_b > 0 else None,
            "sign_agreement": agree / both if both else None,
            "norm_a": norm_a, "norm_b": norm_b, "norm_ratio": _ratio(norm_a, norm_b),
            "b_overlap": sum(overlaps) / len(overlaps), "modules": modules}


def _ratio(x: float, y: float) -> float | None:
    return min(x, y) / max(x, y) if max(x, y) > 0 else None


def weight_signals(manifest: Manifest, a: ModelEntry, b: ModelEntry, *, seed: int = 0) -> dict:
    """{cosine, sign_agreement, norm_a, norm_b, norm_ratio, b_overlap, modules} of two experts of one kind."""
    if a.kind != b.kind:
        raise ValueError(f"task vectors of {a.name!r} ({a.kind}) and {b.name!r} ({b.kind}) are not comparable")
    if a.kind == "lora":
        return lora_signals(a, b, seed=seed)
    from graft_ui.study.weights import task_vector_similarity

    res = task_vector_similarity(manifest, a, b)
    return {**res, "norm_ratio": _ratio(res["norm_a"], res["norm_b"]), "b_overlap": None}
