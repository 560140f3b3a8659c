"""Shared merge steps, written once and composed by the method modules.

Every step works on one row block of one tensor: task vectors, top-k magnitude trim,
random drop with rescale (DARE), sign election and the disjoint mean (TIES). Blocks are
float32 whatever the stored dtype, so bf16 checkpoints lose nothing in the arithmetic
and the output is cast once when written.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .stored import new_output

log = logging.getLogger(__name__)

# ~4 MiB of float32 per block: small enough that k experts' blocks plus a few work
# buffers stay a small fraction of one tensor, big enough that per-block overhead vanishes.
BLOCK_ELEMS = 1 << 20


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """View `t` as (M, K) with M output channels: (M,) -> (M, 1), scalar -> (1, 1)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(-1, 1)
    return t.reshape(t.shape[0], -1)


def auto_block_rows(ncols: int, elems: int = BLOCK_ELEMS) -> int:
    """Rows per block; a function of the shape only, so seeded results are reproducible."""
    return max(1, elems // max(1, ncols))


def row_slices(rows: int, block_rows: int | None, ncols: int = 1) -> Iterator[slice]:
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows={block_rows!r} must be >= 1")
    step = block_rows or auto_block_rows(ncols)
    for r0 in range(0, rows, step):
        yield slice(r0, min(rows, r0 + step))


def check_inputs(
    base: torch.Tensor | None,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float] | None,
    *,
    needs_base: bool,
    method: str,
) -> list[float]:
    """Validate shapes and return one float weight per expert (default 1.0)."""
    if not experts:
        raise ValueError(f"{method}: experts is empty; give at least one tensor")
    shape = experts[0].shape
    for i, e in enumerate(experts):
        if e.shape != shape:
            raise ValueError(f"{method}: expert {i} has shape {tuple(e.shape)}, expert 0 has {tuple(shape)}")
    if needs_base:
        if base is None:
            raise ValueError(f"{method}: base is None but this method needs the base tensor")
        if base.shape != shape:
            raise ValueError(f"{method}: base has shape {tuple(base.shape)}, experts have {tuple(shape)}")
    if weights is None:
        return [1.0] * len(experts)
    weights = [float(w) for w in weights]
    if len(weights) != len(experts):
        raise ValueError(f"{method}: weights={weights} has {len(weights)} entries for {len(experts)} experts")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"{method}: weights={weights} must be finite")
    return weights


def the_one_expert(experts: Sequence[torch.Tensor], method: str, does: str) -> torch.Tensor:
    """The single expert of a method that pairs the base with exactly one (slerp, nearswap, ...)."""
    if len(experts) != 1:
        raise ValueError(f"{method} {does} ONE expert; got {len(experts)} experts")
    return experts[0]


def as_one_row(t: torch.Tensor) -> torch.Tensor:
    """View `t` as (M, K) rows like `as_rows`, except that a vector is one row (1, n): the
    view for steps that work along the last axis (DELLA's ranks, per-row norms)."""
    return t.reshape(1, -1) if t.dim() < 2 else as_rows(t)


def load_task_vectors_(
    buf: torch.Tensor, base: torch.Tensor, experts: Sequence[torch.Tensor], rows: slice, view=as_rows,
    base_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fill buf (k, r, K) with tau_i = expert_i - base on `rows`, in float32, no new allocation
    (`base_rows`: those rows of the base when the caller has read them already)."""
    b = view(base)[rows] if base_rows is None else base_rows
    taus = buf[:, : b.shape[0]]  # (k, r, K)
    for i, e in enumerate(experts):
        minus_into(taus[i], view(e)[rows], b)
    return taus


def minus_into(out: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = x - b in out's dtype (float32): rows already float32 (a held input) are subtracted
    as they are, others converted into `out` first; the same values either way."""
    if x.dtype == out.dtype:
        return torch.sub(x, b, out=out)
    return out.copy_(x).sub_(b)


def task_vector_blocks(
    base: torch.Tensor, experts: Sequence[torch.Tensor], *, block_rows: int | None = None, view=as_rows
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (rows, base_rows (r, K) f32, taus (k, r, K) f32) top to bottom; the taus live in
    one reused buffer, so a consumer must finish with a block before asking for the next."""
    base2 = view(base)
    rows, ncols = base2.shape
    step = block_rows or auto_block_rows(ncols)
    buf = torch.empty((len(experts), min(step, rows), ncols), dtype=torch.float32, device=base.device)
    for sl in row_slices(rows, step):
        b = base2[sl].float()  # read once: a stored base is a file read
        yield sl, b, load_task_vectors_(buf, base, experts, sl, view, b)


def magnitude_threshold(tau: torch.Tensor, density: float) -> float:
    """Smallest |tau| among the top `density` fraction (k = int(density * n), as in TIES/peft).

    Keeping `|tau| >= threshold` keeps the top k (more only on exact ties). One
    `kthvalue` pass instead of a sort: a full sort per tensor is ~6x slower.
    Returns +inf for k == 0 (keep nothing) and 0.0 for k == n (keep all).
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density={density!r} must be in [0, 1]")
    return _kth_largest(tau.reshape(-1).float().abs(), int(density * tau.numel()))


def _kth_largest(mags: torch.Tensor, k: int) -> float:
    """k-th largest of the non-negative 1-D `mags`, with the keep-none / keep-all ends."""
    n = mags.numel()
    if k <= 0:
        return math.inf
    if k >= n:
        return 0.0
    return float(torch.kthvalue(mags, n - k + 1).values)


def kth_largest_abs(
    blocks: Callable[[], Iterable[torch.Tensor]], k: int, *, bins: int = 1 << 12, gather_limit: int = 1 << 21
) -> float:
    """Exact k-th largest |x| over streamed blocks in O(bins + gather_limit) extra memory.

    Histogram the candidates, keep the one bin that holds the k-th largest, and repeat on
    that bin until it is small enough to gather and `kthvalue`. Bin membership is
    floor((|x| - lo) * scale), monotone in |x|, so each bin is exactly the value range
    [its min, its max] and narrowing by those two values loses nothing.
    """
    if k < 1:
        return math.inf
    lo, hi, n = 0.0, 0.0, 0
    for b in blocks():
        if b.numel():
            hi = max(hi, float(b.abs().max()))
            n += b.numel()
    if k >= n:
        return 0.0
    rank = k  # rank from the top among values in [lo, hi]
    while True:
        if hi <= lo:
            return hi
        scale = bins / (hi - lo)
        counts = None
        for b in blocks():
            a = b.float().abs()
            a = a[(a >= lo) & (a <= hi)]
            c = torch.bincount(((a - lo) * scale).long().clamp_(0, bins - 1), minlength=bins)
            counts = c if counts is None else counts.add_(c)
        from_top = counts.flip(0).cumsum(0)
        j_top = int(torch.searchsorted(from_top, torch.tensor([rank], device=from_top.device)))
        rank -= int(from_top[j_top - 1]) if j_top > 0 else 0
        j, in_bin = bins - 1 - j_top, int(counts.flip(0)[j_top])
        members, new_lo, new_hi = [], math.inf, -math.inf
        for b in blocks():
            a = b.float().abs()
            a = a[(a >= lo) & (a <= hi)]
            a = a[((a - lo) * scale).long().clamp_(0, bins - 1) == j]
            if a.numel():
                new_lo, new_hi = min(new_lo, float(a.min())), max(new_hi, float(a.max()))
                if in_bin <= gather_limit:
                    members.append(a)
        if in_bin <= gather_limit:
            vals = torch.cat(members)
            return float(torch.kthvalue(vals, vals.numel() - rank + 1).values)
        lo, hi = new_lo, new_hi


# below this many elements one kthvalue on a float32 copy is fastest; above it the
# kthvalue working set (~16 bytes/element) is too big and the streaming pass takes over
KTHVALUE_LIMIT = 1 << 22


def expert_threshold(
    expert: torch.Tensor, base: torch.Tensor, density: float, buf: torch.Tensor | None = None
) -> float:
    """`magnitude_threshold` of tau = expert - base; `buf` (n float32) is reused between experts."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density={density!r} must be in [0, 1]")
    if density >= 1.0:
        return 0.0
    n = expert.numel()
    if n > KTHVALUE_LIMIT:
        E2, B2 = as_rows(expert), as_rows(base)
        slices = lambda: row_slices(E2.shape[0], None, E2.shape[1])  # noqa: E731
        return kth_largest_abs(lambda: (E2[sl].float() - B2[sl].float() for sl in slices()), int(density * n))
    if buf is None:
        buf = torch.empty(n, dtype=torch.float32, device=expert.device)
    buf.copy_(expert.reshape(-1))
    buf.sub_(base.reshape(-1)).abs_()
    return _kth_largest(buf, int(density * n))


def trim_(taus: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Zero entries with |tau_i| < threshold_i, in place. taus (k, r, K)."""
    for i, t in enumerate(thresholds):
        if t > 0.0:
            taus[i].masked_fill_(taus[i].abs() < t, 0.0)
    return taus


def drop_rescale_(
    taus: torch.Tensor, p: float, generator: torch.Generator | None, rand_buf: torch.Tensor | None = None
) -> torch.Tensor:
    """DARE: drop each entry with probability p and rescale survivors by 1/(1-p), in place.

    Draws come from `generator` (on its own device, then moved), one (r, K) draw per
    expert in expert order, so results depend only on the seed and the block layout.
    """
    if generator is None:
        raise ValueError("random drop needs a seeded torch.Generator; got generator=None")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop probability p={p!r} must be in [0, 1)")
    if p == 0.0:
        return taus
    shape = taus.shape[1:]
    if rand_buf is None or rand_buf.numel() < math.prod(shape):
        rand_buf = torch.empty(math.prod(shape), dtype=torch.float32, device=generator.device)
    draw = rand_buf[: math.prod(shape)].view(shape)
    for i in range(taus.shape[0]):
        torch.rand(shape, generator=generator, out=draw, dtype=torch.float32)
        keep = draw.ge(p) if draw.device == taus.device else draw.ge(p).to(taus.device)
        taus[i].mul_(keep).mul_(1.0 / (1.0 - p))
    return taus


def weighted_sum(taus: torch.Tensor, weights: Sequence[float], out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i tau_i without a (k, r, K) temporary."""
    out = torch.zeros_like(taus[0]) if out is None else out.zero_()
    for i, w in enumerate(weights):
        out.add_(taus[i], alpha=w)
    return out


def elect_sign(taus: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """TIES sign election: True where the weighted sum is >= 0 (ties go to +, as in peft/mergekit)."""
    return weighted_sum(taus, weights).ge_(0).bool()


def disjoint_mean(
    taus: torch.Tensor, weights: Sequence[float], positive: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """TIES disjoint mean: sum_i w_i tau_i over agreeing experts / sum_i w_i over them.

    An expert agrees where its (non-zero) tau has the elected sign; entries with no
    agreeing expert are 0. With unit weights this is the plain mean of the agreeing taus.
    `normalize=False` keeps the sum (mergekit's dare_ties and breadcrumbs_ties).
    """
    num = torch.zeros_like(taus[0])
    den = torch.zeros_like(taus[0]) if normalize else None
    # tau_i * s > 0 (s = +-1, the elected sign) exactly where tau_i agrees; as 1.0 / 0.0 it is
    # the mask both sums take. Same values as where(positive, tau > 0, tau < 0), without
    # torch.where's three-way select (~5x a multiply on the CPU)
    s = positive.to(taus.dtype).mul_(2).sub_(1)
    agree, term = torch.empty_like(taus[0]), torch.empty_like(taus[0])
    for i, w in enumerate(weights):
        torch.mul(taus[i], s, out=agree).gt_(0)
        num.add_(torch.mul(taus[i], agree, out=term), alpha=w)
        if den is not None:
            den.add_(agree, alpha=w)
    if den is None:
        return num
    # den + [den == 0]: den where it is non-zero, 1 where it is (+-0), as where(den == 0, 1, den)
    return num.div_(den.add_(den == 0))


def blockwise(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    block_fn: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
    *,
    out_dtype: torch.dtype | None = None,
    block_rows: int | None = None,
    view=as_rows,
    out=None,
) -> torch.Tensor:
    """Run `block_fn(base_rows (r, K) f32, taus (k, r, K) f32, rows) -> merged (r, K)` per row block.

    The k task-vector blocks live in one reused buffer; the result is written straight
    into the output tensor (stored dtype), or into `out` (a tensor or a stored.Sink), so
    peak memory is the output plus a few blocks (a few blocks when the output streams).
    """
    out = new_output(experts[0].shape, out_dtype or experts[0].dtype, experts[0].device, out)
    out2 = view(out)
    for sl, b, taus in task_vector_blocks(base, experts, block_rows=block_rows, view=view):
        out2[sl] = block_fn(b, taus, sl)
    return out


class Counter:
    """Accumulates per-expert counts over blocks for kept-fraction stats."""

    def __init__(self, k: int, total: int):
        self.counts = [0] * k
        self.total = max(1, total)

    def add(self, i: int, mask: torch.Tensor) -> None:
        # a float count_nonzero costs ~6x comparing with 0 and counting the bools
        self.counts[i] += int((mask.ne(0) if mask.is_floating_point() else mask).count_nonzero())

    def fractions(self) -> list[float]:
        return [round(c / self.total, 6) for c in self.counts]
