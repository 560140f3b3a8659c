"""Graft for LoRA experts, exact at rank rb + rg. https://arxiv.org/abs/2506.23940 (GraftLoRA; DESIGN.md 2.4)

Both gates give one weight per output row and wb + wg = 1, so with dW = scale * B @ A:
    diag(wb) dWb + diag(wg) dWg = [diag(wb) sb Bb | diag(wg) sg Bg] @ [Ab ; Ag]
Gates are computed on the deltas streamed in row blocks (the M x N product is never
materialised whole). Optional compression to rank r: QR of each factor + SVD of the small
core (no dense product); `dense_to_lowrank` / `lowrank_from_sketch` cover baselines that need
a dense delta (randomized SVD whose sketch starts from the experts' row spaces).

Scales are folded into B, so the fused adapter must be used with scale 1: in peft terms
r = rb + rg, lora_alpha = r, use_rslora = False (or lora_alpha = sqrt(r) with rsLoRA).
Callers pass each expert's own scale (lora_alpha / r, or lora_alpha / sqrt(r) for rsLoRA),
so different ranks and alphas mix freely.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, NamedTuple, Sequence

import torch

from .graft import GATE_BLOCK_ELEMS, check_scale, graft_pair, graft_row_weights_from_blocks
from .steps import auto_block_rows, row_slices

log = logging.getLogger(__name__)


def _check_factors(B: torch.Tensor, A: torch.Tensor, name: str) -> None:
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"{name}: B {tuple(B.shape)} and A {tuple(A.shape)} are not LoRA factors (M, r) @ (r, N)")


def lora_delta_blocks(
    B: torch.Tensor, A: torch.Tensor, scale: float = 1.0, block_rows: int | None = None
) -> Iterator[torch.Tensor]:
    """Yield row blocks of scale * B @ A (float32), top to bottom. B (M, r), A (r, N)."""
    _check_factors(B, A, "lora_delta_blocks")
    Af = A.float()
    step = block_rows or auto_block_rows(A.shape[1], GATE_BLOCK_ELEMS)
    for sl in row_slices(B.shape[0], step):
        yield (B[sl].float() @ Af).mul_(scale)  # (r_blk, N)


def concat_lora(
    Bs: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    scales: Sequence[float],
    row_weights: Sequence[torch.Tensor | float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """[diag(w_1) s_1 B_1 | ... ] and [A_1; ...]: sum_i diag(w_i) s_i B_i A_i as one scale-1 adapter."""
    cols = []
    for B, s, w in zip(Bs, scales, row_weights):
        w = torch.as_tensor(w, dtype=torch.float32, device=B.device)
        cols.append(B.float() * (w.reshape(-1, 1) * s if w.dim() else w * s))
    return torch.cat(cols, dim=1), torch.cat([A.float() for A in As], dim=0)


def graft_lora(
    Bb: torch.Tensor,
    Ab: torch.Tensor,
    scale_b: float,
    Bg: torch.Tensor,
    Ag: torch.Tensor,
    scale_g: float,
    *,
    block_rows: int | None = None,
    **graft_kw: Any,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Exact Graft of two LoRA deltas: (B_cat (M, rb+rg), A_cat (rb+rg, N), stats), float32.

    B_cat @ A_cat == wb * dWb + (1 - wb) * dWg with the gates of `graft_row_weights`
    computed on dWb = scale_b Bb Ab and dWg = scale_g Bg Ag. Use the result with scale 1.
    """
    _check_factors(Bb, Ab, "graft_lora base")
    _check_factors(Bg, Ag, "graft_lora graft")
    if Bb.shape[0] != Bg.shape[0] or Ab.shape[1] != Ag.shape[1]:
        raise ValueError(
            f"graft_lora: deltas have shapes ({Bb.shape[0]}, {Ab.shape[1]}) and ({Bg.shape[0]}, {Ag.shape[1]})"
        )
    rows = Bb.shape[0]
    pairs = lambda: zip(  # noqa: E731
        lora_delta_blocks(Bb, Ab, scale_b, block_rows), lora_delta_blocks(Bg, Ag, scale_g, block_rows)
    )
    wb, stats = graft_row_weights_from_blocks(pairs, rows, device=Bb.device, **graft_kw)
    B_cat, A_cat = concat_lora([Bb, Bg], [Ab, Ag], [scale_b, scale_g], [wb, 1.0 - wb])
    stats["rank"] = int(A_cat.shape[0])
    return B_cat, A_cat, stats


def graft_lora_chain(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, float]], *, scale: float = 1.0, **graft_kw: Any
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Left-to-right Graft of k LoRA experts [(B, A, scale), ...]: rank grows to sum of ranks.

    `scale` (Graft's extension, not in the paper; graft.py) multiplies the fused delta: the
    fused B is multiplied by it once, after the chain (the deltas are relative to the base).
    stats: last step's stats, plus "steps" when there are more than two experts, plus
    "scale" when it is not 1.
    """
    if not factors:
        raise ValueError("graft_lora_chain: no experts given")
    B, A, s = factors[0]
    B, A = B.float() * s, A.float()
    steps = []
    for Bg, Ag, sg in factors[1:]:
        B, A, st = graft_lora(B, A, 1.0, Bg, Ag, sg, **graft_kw)
        steps.append(st)
    stats = dict(steps[-1]) if steps else {}
    if len(steps) > 1:
        stats["steps"] = steps
    return (*scale_factors(B, A, scale, stats), stats)


def scale_factors(
    B: torch.Tensor, A: torch.Tensor, scale: float, stats: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale * B, A): Graft's `scale` on a fused LoRA delta. At scale 1, B itself (bit-exact);
    otherwise "scale" is recorded in `stats`."""
    scale = check_scale(scale)
    if scale == 1.0:
        return B, A
    stats["scale"] = scale
    return B * scale, A


def graft_lora_factor(
    Bb: torch.Tensor,
    Ab: torch.Tensor,
    scale_b: float,
    Bg: torch.Tensor,
    Ag: torch.Tensor,
    scale_g: float,
    **graft_kw: Any,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """For comparison only: the literal reading, Graft B with B and A with A (equal ranks).

    The product of two fused factors has cross terms Bb Ag, Bg Ab, so this is NOT a gated
    mix of the two deltas; scales are folded into B first (result has scale 1).
    """
    if Ab.shape != Ag.shape or Bb.shape != Bg.shape:
        raise ValueError(f"graft_lora_factor needs equal ranks: A {tuple(Ab.shape)} vs {tuple(Ag.shape)}")
    B, st_b = graft_pair(Bb.float() * scale_b, Bg.float() * scale_g, **graft_kw)
    A, st_a = graft_pair(Ab.float(), Ag.float(), **graft_kw)
    return B, A, {"B": st_b, "A": st_a}


def _split_sqrt(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # balanced factors (both carry sqrt(S)) keep B and A on similar scales, as LoRA training does
    r = S.sqrt()
    return U * r, r.reshape(-1, 1) * Vh


def compress_lowrank(
    B: torch.Tensor, A: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` approximation of B @ A without the dense product: (B_r, A_r, rel_err).

    B = Qb Rb, A^T = Qa Ra  =>  B A = Qb (Rb Ra^T) Qa^T; the SVD of the small core
    (r x r) gives the exact SVD of B A. rel_err = ||BA - B_r A_r||_F / ||BA||_F from the
    discarded singular values (0 when rank >= the true rank). The output rank is
    min(rank, r), so asking for more than the adapter has returns it unchanged in value.
    """
    _check_factors(B, A, "compress_lowrank")
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive integer")
    Qb, Rb = torch.linalg.qr(B.float())  # (M, q), (q, r)
    Qa, Ra = torch.linalg.qr(A.float().T)  # (N, p), (p, r)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)  # core (q, p)
    k = min(int(rank), S.numel())
    total = float(S.double().square().sum())
    tail = float(S[k:].double().square().sum())
    rel_err = math.sqrt(tail / total) if total > 0 else 0.0
    Bu, Av = _split_sqrt(U[:, :k], S[:k], Vh[:k])
    return Qb @ Bu, Av @ Qa.T, rel_err


def sketch_start(Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], q: int) -> torch.Tensor:
    """(N, min(q, r)) directions the rows of a merged LoRA delta should lie near.

    Bs (M, r_i) with each expert's weight and scale folded in, As (r_i, N); r = sum r_i.
    TIES, DARE and the like keep most of the energy of sum_i Bs_i A_i in its dominant
    directions, so: the whole row span A^T when r <= q, else the top-q right singular
    vectors of sum_i Bs_i A_i = [Bs_1 ...] [A_1; ...] (QR of both factors and an r x r SVD,
    no dense product).
    """
    A = torch.cat([a.float() for a in As])  # (r, N)
    if A.shape[0] <= q:
        return A.T
    B = torch.cat([b.float() for b in Bs], dim=1)
    Rb = torch.linalg.qr(B).R  # (., r)
    Qa, Ra = torch.linalg.qr(A.T)  # (N, .), (., r)
    Vh = torch.linalg.svd(Rb @ Ra.T, full_matrices=False).Vh  # core rows -> right singular vectors
    return Qa @ Vh[:q].T


def sketch_padding(n: int, q: int, r: int, generator: torch.Generator | None) -> torch.Tensor | None:
    """The Gaussian columns (n, q - r) that `sketch_basis` adds to r start columns, or None.

    Drawn from `generator` on its own device; separate so that callers can draw in a fixed
    order before the work is spread over threads.
    """
    pad = min(q, n) - min(r, n)
    if pad <= 0:
        return None
    if generator is None:
        raise ValueError("a sketch with random columns needs a seeded torch.Generator; got generator=None")
    return torch.randn((n, pad), generator=generator, device=generator.device)


def sketch_basis(
    n: int, q: int, generator: torch.Generator | None, start: torch.Tensor | None = None,
    device: torch.device | str | None = None, *, pad: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, q') float32 test matrix P for the range sketch Y = X @ P of an (m, n) matrix X.

    `start` (n, r): directions X's rows are expected to lie near (for merged LoRA deltas,
    `sketch_start`). They are orthonormalised and come first, which makes P span most of the
    dominant row space before any power iteration; Gaussian columns (`sketch_padding`, or
    `pad` drawn by the caller) fill up to q. q' = max(q, r), at most n.
    """
    r = 0 if start is None else min(n, start.shape[1])
    if pad is None:
        pad = sketch_padding(n, q, r, generator)
    cols = []
    if r:
        cols.append(torch.linalg.qr(start.float().to(device)).Q[:, :n])  # (n, r)
    if pad is not None:
        cols.append(pad.to(device))
    return torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]


class RangeSketch(NamedTuple):
    """Y = X @ P (m, q) of a dense (m, n) matrix X and ||X||_F^2, taken while X was being written."""

    Y: torch.Tensor
    sumsq: float


# below this relative error the estimate ||X||^2 - sum S_k^2 loses too many digits to cancellation
ESTIMATE_MIN_REL = 1e-2


def lowrank_from_sketch(
    X: torch.Tensor, rank: int, sketch: RangeSketch, *, niter: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-`rank` factors of X (m, n) from its range sketch: (B (m, k), A (k, n), rel_err).

    Q = orth(Y); `niter` power iterations (two passes over X each); then C = Q^T X (one pass)
    and the SVD of the small C (q, n) in float64. The result U_k S_k V_k^T is the orthogonal
    projection of X onto span(U_k), so ||X - B A||_F^2 = ||X||^2 - sum_k S_k^2 needs no pass
    of its own; below ESTIMATE_MIN_REL (where that difference cancels) it is measured.
    """
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive integer")
    Q = torch.linalg.qr(sketch.Y).Q  # (m, q)
    for _ in range(niter):
        P = torch.linalg.qr(X.T @ Q).Q  # (n, q)
        Q = torch.linalg.qr(X @ P).Q
    C = Q.T @ X  # (q, n)
    # LAPACK is ~10-100x slower on a wide (q, n) input than on its transpose: C^T = V S Uc^T
    V, S, UcT = torch.linalg.svd(C.T.double(), full_matrices=False)
    k = min(int(rank), S.numel())
    U = Q @ UcT[:k].T.to(Q.dtype)
    B, A = _split_sqrt(U, S[:k].to(Q.dtype), V[:, :k].T.to(Q.dtype))
    total = float(sketch.sumsq)
    kept = float(S[:k].square().sum())
    rel_err = math.sqrt(max(0.0, total - kept) / total) if total > 0 else 0.0
    if total > 0 and rel_err < ESTIMATE_MIN_REL:
        rel_err = _rel_residual(X, B, A)
    return B, A, rel_err


def dense_to_lowrank(
    delta: torch.Tensor,
    rank: int,
    generator: torch.Generator | None = None,
    exact: bool = False,
    *,
    niter: int = 2,
    oversample: int = 8,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-`rank` factors of a dense delta (M, N): (B (M, k), A (k, N), rel_err).

    For baselines (TIES, DARE) whose merged delta only exists densely. Default: randomized
    SVD (`lowrank_from_sketch`) on a sketch with rank + oversample columns: `start` (N, r)
    columns first (`sketch_basis`; from the experts' rows, `sketch_start`, niter=0 is
    enough), Gaussian columns from `generator` (required, the only randomness used) for the
    rest, then `niter` power iterations. exact=True uses the full `torch.linalg.svd`.
    rel_err = ||delta - B A||_F / ||delta||_F.
    """
    if delta.dim() != 2:
        raise ValueError(f"dense_to_lowrank: delta must be 2-D, got shape {tuple(delta.shape)}")
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive integer")
    X = delta.float()
    M, N = X.shape
    k = min(int(rank), M, N)
    if exact:
        if M < N:  # LAPACK is far slower on wide inputs: X^T = U S Vh  =>  X = Vh^T S U^T
            V, S, Uh = torch.linalg.svd(X.T, full_matrices=False)
            U, Vh = Uh.T, V.T
        else:
            U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        B, A = _split_sqrt(U[:, :k], S[:k], Vh[:k])
        S64 = S.double().square()
        total = float(S64.sum())
        return B, A, math.sqrt(float(S64[k:].sum()) / total) if total > 0 else 0.0
    if generator is None:
        raise ValueError("dense_to_lowrank(exact=False) needs a seeded torch.Generator; got generator=None")
    P = sketch_basis(N, min(k + oversample, M, N), generator, start, device=X.device)
    return lowrank_from_sketch(X, k, RangeSketch(X @ P, sum_squares(X)), niter=niter)


def sum_squares(X: torch.Tensor) -> float:
    """||X||_F^2: float32 dot products over ~1M-element chunks, summed in float64 (a float64
    copy of X costs ~5x more)."""
    flat = X.reshape(-1)
    return sum(float(torch.dot(c, c)) for c in flat.split(1 << 20))


def _rel_residual(X: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> float:
    """||X - B A||_F / ||X||_F in row blocks."""
    num = den = 0.0
    for sl in row_slices(X.shape[0], auto_block_rows(X.shape[1], GATE_BLOCK_ELEMS)):
        blk = X[sl]
        num += float((blk - B[sl] @ A).double().square().sum())
        den += float(blk.double().square().sum())
    return math.sqrt(num / den) if den > 0 else 0.0
