"""TIES and DARE-TIES of LoRA deltas (base 0), tile by tile: the deltas never exist whole.

Each threshold is found exactly from a sampled bracket and one counting pass
(`lora_ties_thresholds`); each tile then goes through `kernels.ties.ties_combine`, so the
result is `ties_merge`'s / `dare_ties`' on the dense deltas. With the SVD that follows
(merging.lora.lowrank_from_sketch), ~13x less CPU than dense deltas through `ties_merge` and
`torch.svd_lowrank` on an 8960 x 1536 module. The engine finds `lora_tiled_ties` /
`lora_tiled_dare` through the methods' registry entries (`Method.kernels`) and runs them
one module per worker thread.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from graft_ui.kernels.ties import ties_combine, trim_below_
from graft_ui.merging.steps import auto_block_rows, row_slices

log = logging.getLogger(__name__)

# elements per tile (1 MiB of float32): the few tiles in flight stay in L2/L3, and the
# per-op overhead (a few microseconds) stays small next to the work (~0.2 ns/element/op);
# 4x smaller tiles cost ~40% more on 8960 x 1536 deltas
TILE_ELEMS = 1 << 18


class _Tiles:
    """Float32 / bool tile buffers by role, viewed at the current tile's shape."""

    def __init__(self, elems: int, buffer=None):
        self.elems = elems
        self.buffer = buffer  # callable(role, numel, dtype) -> 1-D tensor, or None: allocate here
        self.bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.shape: tuple[int, int] = (0, 0)

    def at(self, shape: tuple[int, int]) -> "_Tiles":
        self.shape = shape
        return self

    def __call__(self, role: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        b = self.bufs.get((role, dtype))
        if b is None:
            b = torch.empty(self.elems, dtype=dtype) if self.buffer is None else self.buffer("tile_" + role, self.elems, dtype)
            self.bufs[(role, dtype)] = b
        return b[: self.shape[0] * self.shape[1]].view(self.shape)


def _delta_tile(Bs: torch.Tensor, A: torch.Tensor, rows: slice, out: torch.Tensor) -> torch.Tensor:
    if Bs.shape[1] == 0:  # an expert without this module: zero delta
        return out.zero_()
    return torch.matmul(Bs[rows], A, out=out)


# half-width of the threshold bracket in standard deviations of the sample rank: a miss
# (~1e-5 per module) costs one more pass, never a wrong threshold
BRACKET_SIGMAS = 4.5


def bracket_sample_size(n: int) -> int:
    """Sampled entries for the bracket of an n-entry delta.

    Sampling costs ~100 ns an entry; gathering the bracket's entries costs ~20 ns x its
    width (a fraction ~4 / sqrt(S) of n) for every entry, as numpy's compress mispredicts
    its branches. The sum is least near S = (0.4 n)^(2/3).
    """
    return int(min(n, max(2048, min(1 << 16, (0.4 * n) ** (2 / 3)))))


def _bracket(Bs: torch.Tensor, A: torch.Tensor, k: int, n: int) -> tuple[float, float]:
    """[lo, hi] that holds the k-th largest |Bs @ A| with high probability, from sampled entries."""
    M, N = Bs.shape[0], A.shape[1]
    S = bracket_sample_size(n)
    # a private generator: the bracket only decides how much work the exact search does
    g = torch.Generator().manual_seed(n)
    ri = torch.randint(0, M, (S,), generator=g)
    ci = torch.randint(0, N, (S,), generator=g)
    vals = (Bs[ri] * A.T.contiguous()[ci]).sum(1).abs_().numpy()  # (S,) float32
    f = k / n
    sd = math.sqrt(S * f * (1 - f))
    top_hi = int(f * S - BRACKET_SIGMAS * sd) - 1  # sample rank from the top
    top_lo = int(f * S + BRACKET_SIGMAS * sd) + 1
    picks = [S - 1 - r for r in (top_hi, top_lo) if 0 <= r < S]
    part = np.partition(vals, picks) if picks else vals
    hi = float(part[S - 1 - top_hi]) if 0 <= top_hi < S else math.inf
    lo = float(part[S - 1 - top_lo]) if 0 <= top_lo < S else 0.0
    return lo, hi


def lora_ties_thresholds(factors, density: float, tb: _Tiles, tiles: list[slice]) -> tuple[list[float], list[int | None]]:
    """`steps.expert_threshold` of each LoRA delta Bs @ A (base = 0), computed tile by tile.

    A sampled bracket [lo, hi] per expert, then one pass counting |d| > hi and gathering
    the few values in [lo, hi] (numpy's compares are ~5x faster than torch's here); the
    k-th largest is among them. Returns (thresholds, kept counts; None where a threshold of
    0 keeps all and the count needs the values).
    """
    M, N = factors[0][0].shape[0], factors[0][1].shape[1]
    n = M * N
    k = int(density * n)
    thr: list[float | None] = []
    for Bs, _ in factors:
        if density >= 1.0 or k >= n or Bs.shape[1] == 0:
            thr.append(0.0)  # keep all (a zero delta: every |d| is 0, the k-th largest too)
        elif k <= 0:
            thr.append(math.inf)
        else:
            thr.append(None)
    kept: list[int | None] = [0 if t == math.inf else None for t in thr]
    todo = [i for i, t in enumerate(thr) if t is None]
    brackets = {i: _bracket(*factors[i], k, n) for i in todo}
    while todo:
        above = {i: 0 for i in todo}
        cands: dict[int, list] = {i: [] for i in todo}
        for rows in tiles:
            tb.at((rows.stop - rows.start, N))
            m_hi, m_lo = tb("m_hi", torch.bool).view(-1).numpy(), tb("m_lo", torch.bool).view(-1).numpy()
            for i in todo:
                lo, hi = brackets[i]
                # same buffer and shapes as the merge pass, so the same matmul bits
                a = _delta_tile(*factors[i], rows, tb(f"tau{i}")).abs_().view(-1).numpy()
                np.greater(a, hi, out=m_hi)
                above[i] += int(np.count_nonzero(m_hi))
                np.greater_equal(a, lo, out=m_lo)
                np.logical_xor(m_lo, m_hi, out=m_lo)  # lo <= a <= hi
                cands[i].append(np.compress(m_lo, a))
        retry = []
        for i in todo:
            c = np.concatenate(cands[i])
            j = k - above[i]  # the answer is the j-th largest candidate
            lo, hi = brackets[i]
            if j < 1:  # k or more values above hi
                brackets[i] = (float(np.nextafter(np.float32(hi), np.float32(np.inf))), math.inf)
                retry.append(i)
            elif j > c.size:  # fewer than k values >= lo
                brackets[i] = (0.0, float(np.nextafter(np.float32(lo), np.float32(0))))
                retry.append(i)
            else:
                t = float(np.partition(c, c.size - j)[c.size - j])
                thr[i] = t
                # entries tied with t are all kept, as with kthvalue and |d| >= t
                kept[i] = above[i] + int(np.count_nonzero(c >= t)) if t > 0 else None
        if retry:
            log.debug("TIES threshold bracket missed for expert(s) %s; one more pass", retry)
        todo = retry
    return [float(t) for t in thr], kept


def dare_keep_masks(M: int, N: int, k: int, p: float, generator: torch.Generator) -> list[torch.Tensor] | None:
    """DARE's keep masks (float32 1/0 per expert, (M, N)) drawn as `ties_merge` with DARE's
    `drop_rescale_` draws them: block by block (steps.row_slices), expert by expert. None for p = 0."""
    if p == 0.0:
        return None
    keep = [torch.empty((M, N), dtype=torch.float32) for _ in range(k)]
    for sl in row_slices(M, None, N):
        for i in range(k):
            draw = keep[i][sl]
            torch.rand(draw.shape, generator=generator, out=draw, dtype=torch.float32)
            torch.ge(draw, p, out=draw)
    return keep


def lora_ties(
    factors, weights, *, lam: float, out: torch.Tensor, density: float | None = None,
    drop: tuple[float, list[torch.Tensor] | None] | None = None, sketch: torch.Tensor | None = None,
    tile_elems: int | None = None, buffer=None,
) -> tuple[torch.Tensor | None, float, dict[str, Any]]:
    """TIES (or DARE-TIES) of LoRA deltas with base 0 into `out` (M, N) float32, single-threaded.

    factors: [(Bs (M, r) float32 with the scale folded in, A (r, N) float32)], one per
    expert (r = 0: the expert lacks the module, a zero delta). Either `density` (TIES'
    trim, thresholds from `lora_ties_thresholds`) or `drop` = (p, dare_keep_masks(...))
    (DARE's drop and 1/(1-p) rescale, no trim). The deltas are made tile by tile (rows) and
    never exist whole; each tile goes through `ties_combine`, so the result is
    `ties_merge`'s / `dare_ties`' on the dense deltas.

    (Trimming at the bracket's top in the same pass and redoing the few bracketed entries
    afterwards saves the threshold pass's matmuls, but recording and redoing those entries
    costs more on 8960 x 1536 deltas.)

    sketch: P (N, q); Y = out @ P is then taken in the same pass. buffer: callable(role,
    numel, dtype) for the tile buffers (default: allocated per call). Returns (Y or None,
    ||out||_F^2, stats as ties_merge's).
    """
    M, N = out.shape
    n = M * N
    k_exp = len(factors)
    tiles = list(row_slices(M, auto_block_rows(N, tile_elems or TILE_ELEMS)))
    tb = _Tiles(min(n, (tiles[0].stop - tiles[0].start) * N), buffer)
    masks = None
    if drop is None:
        thresholds, kept = lora_ties_thresholds(factors, density, tb, tiles)
    else:
        thresholds, kept = [0.0] * k_exp, [None] * k_exp
        masks = drop[1]
    Y = None if sketch is None else torch.empty((M, sketch.shape[1]), dtype=torch.float32)
    counts = {i: 0 for i in range(k_exp) if kept[i] is None}
    nonzero, sumsq = 0, 0.0
    for rows in tiles:
        tb.at((rows.stop - rows.start, N))
        taus = []
        for i, (fac, thr) in enumerate(zip(factors, thresholds)):
            t = trim_below_(_delta_tile(*fac, rows, tb(f"tau{i}")), thr)
            if masks is not None:
                t.mul_(masks[i][rows]).mul_(1.0 / (1.0 - drop[0]))
            if i in counts:
                counts[i] += int(t.count_nonzero())
            taus.append(t)
        merged, nz = ties_combine(taus, weights, lam, tb, out=out[rows])
        nonzero += nz
        flat = merged.view(-1)
        sumsq += float(torch.dot(flat, flat))
        if Y is not None:
            torch.matmul(merged, sketch, out=Y[rows])
    for i, c in counts.items():
        kept[i] = c
    stats = {"kept": [round(c / max(1, n), 6) for c in kept], "nonzero": round(nonzero / max(1, n), 6), "lam": lam}
    return Y, sumsq, stats


# ---------------------------------------------------------------------------- engine hooks

def lora_tiled_ties(shape: tuple[int, int], n_experts: int, params: dict[str, Any], generator):
    """The `lora_tiled` hook for TIES: run(factors, weights, out, sketch, buffer)."""
    def run(factors, weights, out, sketch, buffer):
        Y, sumsq, st = lora_ties(factors, weights, lam=params["lam"], out=out, density=params["density"],
                                 sketch=sketch, buffer=buffer)
        return Y, sumsq, dict(st, density=params["density"])
    return run


def lora_tiled_dare(shape: tuple[int, int], n_experts: int, params: dict[str, Any], generator):
    """The `lora_tiled` hook for DARE-TIES; the keep masks are drawn now, in plan order."""
    drop = (params["p"], dare_keep_masks(shape[0], shape[1], n_experts, params["p"], generator))

    def run(factors, weights, out, sketch, buffer):
        Y, sumsq, st = lora_ties(factors, weights, lam=params["lam"], out=out, drop=drop, sketch=sketch, buffer=buffer)
        return Y, sumsq, dict(st, p=params["p"])
    return run
