"""Task-vector sparsifiers of the generalized task-arithmetic family (mergekit's `sparsify.py`).

Each works on one expert's task vector tau = expert - base, one row block at a time:

- magnitude: keep the top `density` fraction of |tau| (TIES; k = max(1, int(density n)));
- outliers: drop the top `gamma` fraction, then keep the next `density` fraction (Breadcrumbs);
- random: keep each entry with probability `density` (DARE);
- della: keep entry j of a row with probability density - eps + 2 eps rank_j / (K - 1), rank
  by |tau| within the row (DELLA's MagPrune);
- then, with `rescale`, multiply by ||tau||_1 / ||kept||_1 over the whole tensor (mergekit's
  L1 rescale; both norms must be >= 1e-7, else no rescale).

Thresholds are exact (kthvalue, or the streamed histogram for big tensors) and entries tied
with them are all kept, where mergekit's argsort keeps an arbitrary k of them. Random masks
come from the run's seeded generator, so they match mergekit's statistics (kept fraction,
rescale), never its draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .steps import KTHVALUE_LIMIT, _kth_largest, as_rows, kth_largest_abs, row_slices

KINDS = ("magnitude", "outliers", "random", "della")


@dataclass(frozen=True)
class Band:
    """Keep lo <= |tau| <= hi (lo = inf keeps nothing)."""

    lo: float
    hi: float


def _kth_largest_tau(expert: torch.Tensor, base: torch.Tensor, k: int) -> float:
    n = expert.numel()
    if k <= 0:
        return math.inf
    if k >= n:
        return 0.0
    if n > KTHVALUE_LIMIT:
        E2, B2 = as_rows(expert), as_rows(base)
        slices = lambda: row_slices(E2.shape[0], None, E2.shape[1])  # noqa: E731
        return kth_largest_abs(lambda: (E2[sl].float() - B2[sl].float() for sl in slices()), k)
    return _kth_largest((expert.float() - base.float()).reshape(-1).abs_(), k)


def magnitude_band(expert: torch.Tensor, base: torch.Tensor, density: float, gamma: float = 0.0) -> Band | None:
    """The |tau| band that `magnitude` (gamma 0) or `outliers` keeps; None keeps everything."""
    if density >= 1:
        return None
    n = expert.numel()
    if density <= 0 or n == 0:
        return Band(math.inf, math.inf)
    if gamma == 0.0:
        return Band(_kth_largest_tau(expert, base, max(1, int(density * n))), math.inf)
    keep, top = int(density * n), int(gamma * n)
    if keep == 0:
        return Band(math.inf, math.inf)
    bottom = max(0, n - keep - top)  # mergekit gives back outliers when keep + top > n
    skip = n - bottom - keep  # ranks from the top that are dropped
    hi = math.inf if skip == 0 else _kth_largest_tau(expert, base, skip + 1)
    return Band(_kth_largest_tau(expert, base, skip + keep), hi)


def apply_band_(tau: torch.Tensor, band: Band | None) -> torch.Tensor:
    if band is not None:
        a = tau.abs()
        tau.masked_fill_((a < band.lo) | (a > band.hi), 0.0)
    return tau


def random_keep(shape, density: float, generator: torch.Generator, device) -> torch.Tensor:
    """Bernoulli(density) keep mask (DARE), drawn from `generator`."""
    draw = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return draw.lt_(density).to(device)


def della_keep(tau: torch.Tensor, density: float, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """MagPrune keep mask for rows (r, K): probability density - eps + 2 eps (rank - 1) / (K - 1)."""
    K = tau.shape[-1]
    mags = tau.abs()
    if mags.device.type == "cpu":
        # Non-negative finite float32s order as their int32 bit patterns, and the CPU sort
        # compares int32 with a plain `<` where float pays for NaN checks: the same comparisons,
        # so the same permutation (ties included), ~1.8x faster. Inputs are checked finite.
        mags = mags.view(torch.int32)
    order = mags.argsort(dim=-1)
    # each entry's probability by its rank, the inverse permutation of the sort: one scatter of
    # the K probabilities (computed once per block, the same float ops per rank as computing
    # them from a scattered rank) where a second argsort would sort again
    by_rank = torch.arange(K, dtype=torch.float32, device=tau.device)
    by_rank.div_(max(1, K - 1)).mul_(2 * epsilon).add_(density - epsilon)
    probs = torch.empty(tau.shape, dtype=torch.float32, device=tau.device)
    probs.scatter_(-1, order, by_rank.expand_as(probs))
    draw = torch.rand(tau.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return draw.to(tau.device).lt_(probs)


_BITS = 1 << torch.arange(8, dtype=torch.uint8)


class KeptMasks:
    """The keep masks one pass over a tensor's row blocks drew (each expert's, block by block),
    kept as bits (8 entries a byte) for the next pass to apply in the same order. One buffer
    per tensor, allocated up front: small allocations that outlive each block would sit
    between the blocks' big temporaries and fragment the heap (glibc then keeps GBs)."""

    def __init__(self, k: int, numel: int, rows: int, device):
        # a block of n entries takes ceil(n / 8) bytes and every block has a row: numel / 8 + rows
        self.buf = torch.empty((k, numel // 8 + rows + 1), dtype=torch.uint8, device=device)
        self.ends = [0] * k
        self.blocks: list[list[tuple[int, torch.Size] | None]] = []
        self._next = 0

    def put(self, keeps: Sequence[torch.Tensor | None]) -> None:
        row = []
        for i, keep in enumerate(keeps):
            if keep is None:
                row.append(None)
                continue
            flat = keep.reshape(-1)
            if flat.numel() % 8:
                flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
            nb, at = flat.numel() // 8, self.ends[i]
            torch.sum(flat.view(-1, 8).to(torch.uint8).mul_(_BITS.to(flat.device)), -1, dtype=torch.uint8,
                      out=self.buf[i, at:at + nb])
            row.append((at, keep.shape))
            self.ends[i] = at + nb
        self.blocks.append(row)

    def take(self) -> list[torch.Tensor | None]:
        """The next block's masks (bool, as put), in the order they were put."""
        row, self._next = self.blocks[self._next], self._next + 1
        out = []
        for i, slot in enumerate(row):
            if slot is None:
                out.append(None)
                continue
            at, shape = slot
            n = math.prod(shape)
            packed = self.buf[i, at:at + (n + 7) // 8]
            out.append(packed.unsqueeze(-1).bitwise_and(_BITS.to(packed.device)).ne_(0).reshape(-1)[:n].view(shape))
        return out


def check_della(density: float, epsilon: float) -> None:
    if density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise ValueError(f"della: epsilon={epsilon} with density={density} must keep density +/- epsilon in (0, 1)")


@dataclass
class Sparsifier:
    """One expert's sparsification on one tensor: bands are fixed up front, masks drawn per block."""

    kind: str
    density: float
    gamma: float = 0.0
    epsilon: float = 0.0
    band: Band | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"sparsification {self.kind!r} is not one of {list(KINDS)}")
        if self.kind == "della":
            check_della(self.density, self.epsilon)

    @property
    def random(self) -> bool:
        return self.kind in ("random", "della") and self.density < 1

    def prepare(self, expert: torch.Tensor, base: torch.Tensor) -> "Sparsifier":
        if self.kind in ("magnitude", "outliers"):
            self.band = magnitude_band(expert, base, self.density, self.gamma if self.kind == "outliers" else 0.0)
        return self

    def keep(self, tau: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """The keep mask of a random kind for the row block `tau` (r, K), drawn from `generator`;
        None where nothing is dropped."""
        if self.density >= 1:
            return None
        if generator is None:
            raise ValueError(f"{self.kind} sparsification needs a seeded torch.Generator; got generator=None")
        if self.density <= 0:
            return torch.zeros(tau.shape, dtype=torch.bool, device=tau.device)
        return (random_keep(tau.shape, self.density, generator, tau.device) if self.kind == "random"
                else della_keep(tau, self.density, self.epsilon, generator))

    def apply_(self, tau: torch.Tensor, generator: torch.Generator | None, keep: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Zero the dropped entries of the row block `tau` (r, K) in place (`keep`: a random kind's
        mask drawn earlier for this block, e.g. by the rescale pass, instead of a new draw)."""
        if self.kind in ("magnitude", "outliers"):
            return apply_band_(tau, self.band)
        if keep is None:
            keep = self.keep(tau, generator)
        if keep is None:
            return tau
        return tau.zero_() if self.density <= 0 else tau.mul_(keep)


def l1_rescale_factors(before: Sequence[float], after: Sequence[float], eps: float = 1e-7) -> list[float]:
    """||tau||_1 / ||kept||_1 per expert, 1 where either norm is below eps (as mergekit)."""
    return [1.0 if b < eps or a < eps else b / a for b, a in zip(before, after)]
