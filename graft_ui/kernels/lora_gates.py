"""Graft's gate statistics of two LoRA deltas without the dense deltas: tile by tile, then dropped.

The gates of `merging.lora.graft_lora` need, of Tb = sb Bb Ab and Tg = sg Bg Ag, the row L1
norms of Tb - Tg, each delta's min/max and its histogram (histc's bins over its own range).
`native` is the C kernel (`_lora_gates.c`, built by graft_ui/native.py): each delta's exact
range from the few entries that Cauchy-Schwarz bounds cannot rule out, then one pass over
every entry for the row norms and both histograms, a 2 x 64 tile of each product in registers,
never in memory. `reference` is the plain two passes in torch over small row blocks
(cache-sized), used without a compiler (or with GRAFT_NO_NATIVE=1) and by the tests. The
kernel is built for the CPU it runs on, its vectors as wide as the CPU's: on one thread 2-16x
faster than the reference with AVX-512 and with AVX2, and ~2x even as a baseline SSE2 build
without fused multiply-adds (bench/bench_native.py measures each target).

Neither is bit-equal to the other, nor to itself on another CPU: each sums an entry's r
products in its own order, with or without fused multiply-adds. What both promise, on every
CPU, is stated in `_lora_gates.c`: every entry within (r + 2) 2^-24 |s| sum_k |B[i,k] A[k,j]|
of the exact value, the range the exact min/max of the entries computed, the counts exact
for those entries over that range, the row L1 norms within the entries' bounds plus 2^-15
relative. `promise_problems` checks a result against float64 (the tests and
bench/bench_merge.py's exact check use it).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from graft_ui.kernels.entropy import _count_bins, _entropy_from_counts, histc_bins
from graft_ui.native import NativeLibrary

# float32 elements per row block of the torch reference (~256 KiB: an L2-sized tile)
REFERENCE_TILE = 1 << 16
# the C kernel's per-element counts hold this many bins (Graft's `bins` parameter allows as many)
NATIVE_MAX_BINS = 4096

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_LIB = NativeLibrary(
    Path(__file__).with_name("_lora_gates.c"), "lora_gates",
    {"lora_gate_range": ([_P, _P, _I, _F, _I, _I, _P], _I),
     "lora_gate_pass": ([_P, _P, _I, _F, _P, _P, _I, _F, _I, _I, _P, _I, _P, _P], None),
     "lora_gate_lanes": ([], _I), "lora_gate_fma": ([], _I)},
    "LoRA gate-statistics",
)


@dataclass
class GateStats:
    """d (M,) float64 row L1 of Tb - Tg; (lo, hi) of each delta and its bins counts (float64), or None
    (no histogram asked, or a constant delta's counts); `range_entries`: how many entries the C
    kernel computed to find the two ranges (of 2 M N)."""

    d: torch.Tensor
    range_b: tuple[float, float] | None = None
    range_g: tuple[float, float] | None = None
    counts_b: torch.Tensor | None = None
    counts_g: torch.Tensor | None = None
    range_entries: int | None = None

    def entropies(self) -> tuple[float, float]:
        """The histogram entropies (merging.graft.entropy's final step); a constant delta has 0."""
        return tuple(0.0 if c is None else _entropy_from_counts(c) for c in (self.counts_b, self.counts_g))


def kernel_target() -> dict | None:
    """The C kernel's build: {"march", "lanes" (floats a vector), "fma"}, or None without one."""
    fns = _LIB.load()
    if fns is None:
        return None
    return {"march": _LIB.target, "lanes": int(fns["lora_gate_lanes"]()), "fma": bool(fns["lora_gate_fma"]())}


def describe_kernel() -> str:
    """One line on the kernel's build for benchmarks and logs."""
    t = kernel_target()
    if t is None:
        return "no C kernel (torch reference)"
    return (f"kernel built for -march={t['march']} ({t['lanes']} floats a vector, "
            f"{'fused multiply-add' if t['fma'] else 'no fma'})")


def _check(d: torch.Tensor, what: str) -> None:
    # a NaN or inf entry in either delta makes its row's L1 sum non-finite
    if d.numel() and not bool(torch.isfinite(d).all()):
        raise ValueError(f"{what} contains NaN or inf values")


def _prepared(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return B.detach().float().contiguous(), A.detach().float().contiguous()


def native(Bb, Ab, sb: float, Bg, Ag, sg: float, bins: int, histogram: bool = True,
           what: str = "a LoRA delta") -> GateStats | None:
    """The C kernel's statistics (None where it is unavailable, the factors are not CPU tensors or
    `bins` is outside 1..NATIVE_MAX_BINS)."""
    fns = _LIB.load()
    if (fns is None or Bb.device.type != "cpu" or Bg.device.type != "cpu" or not Bb.shape[0] * Ab.shape[1]
            or (histogram and not 1 <= int(bins) <= NATIVE_MAX_BINS)):
        return None
    (Bb, Ab), (Bg, Ag) = _prepared(Bb, Ab), _prepared(Bg, Ag)
    M, N = Bb.shape[0], Ab.shape[1]
    bins = int(bins) if histogram else 0
    rng = torch.zeros(4, dtype=torch.float32)
    entries = 0
    for e, (B, A, s) in enumerate(((Bb, Ab, sb), (Bg, Ag, sg)) if bins else ()):
        n = fns["lora_gate_range"](B.data_ptr(), A.data_ptr(), A.shape[0], float(s), M, N, rng[2 * e:].data_ptr())
        if n < 0:
            raise MemoryError(f"no memory for the bounds of {what} ({M} x {N})")
        entries += n
    d = torch.empty(M, dtype=torch.float64)
    counts = torch.zeros(2 * max(bins, 1), dtype=torch.float64)
    fns["lora_gate_pass"](Bb.data_ptr(), Ab.data_ptr(), Ab.shape[0], float(sb), Bg.data_ptr(), Ag.data_ptr(),
                          Ag.shape[0], float(sg), M, N, d.data_ptr(), bins, rng.data_ptr(), counts.data_ptr())
    _check(d, what)
    if not bins:
        return GateStats(d)
    lo_b, hi_b, lo_g, hi_g = (float(x) for x in rng)
    return GateStats(d, (lo_b, hi_b), (lo_g, hi_g), counts[:bins] if hi_b > lo_b else None,
                     counts[bins:] if hi_g > lo_g else None, range_entries=entries)


def _tiles(B: torch.Tensor, A: torch.Tensor, s: float, step: int):
    for i in range(0, B.shape[0], step):
        yield (B[i:i + step] @ A).mul_(s)


def reference(Bb, Ab, sb: float, Bg, Ag, sg: float, bins: int, histogram: bool = True,
              what: str = "a LoRA delta", tile_elems: int = REFERENCE_TILE) -> GateStats:
    """The same statistics in torch, over row blocks of about `tile_elems` entries."""
    (Bb, Ab), (Bg, Ag) = _prepared(Bb, Ab), _prepared(Bg, Ag)
    M, N = Bb.shape[0], Ab.shape[1]
    step = max(1, tile_elems // max(N, 1))
    parts, lo, hi = [], [math.inf, math.inf], [-math.inf, -math.inf]
    for tb, tg in zip(_tiles(Bb, Ab, sb, step), _tiles(Bg, Ag, sg, step)):
        for e, t in enumerate((tb, tg)):
            a, b = torch.aminmax(t)
            lo[e], hi[e] = min(lo[e], float(a)), max(hi[e], float(b))
        parts.append(tb.sub_(tg).abs_().sum(1, dtype=torch.float64))
    d = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    _check(d, what)
    st = GateStats(d, (lo[0], hi[0]), (lo[1], hi[1]))
    if histogram and M * N:
        counts = [torch.zeros(int(bins), dtype=torch.float64) for _ in range(2)]
        for e, (B, A, s) in enumerate(((Bb, Ab, sb), (Bg, Ag, sg))):
            if hi[e] > lo[e]:
                for t in _tiles(B, A, s, step):
                    counts[e] += _count_bins(histc_bins(t.reshape(-1), bins, lo[e], hi[e]), int(bins))
        st.counts_b = counts[0] if hi[0] > lo[0] else None
        st.counts_g = counts[1] if hi[1] > lo[1] else None
    return st


def gate_stats(Bb, Ab, sb: float, Bg, Ag, sg: float, bins: int, histogram: bool = True,
               what: str = "a LoRA delta") -> GateStats:
    """The C kernel's statistics where it runs, else the torch reference's."""
    st = native(Bb, Ab, sb, Bg, Ag, sg, bins, histogram, what)
    return st if st is not None else reference(Bb, Ab, sb, Bg, Ag, sg, bins, histogram, what)


# ---------------------------------------------------------------------------- the promise, checked

U = 2.0 ** -24  # float32's unit roundoff
ROWL1_REL = 2.0 ** -15  # the row L1's float32 sums (_lora_gates.c)


def exact_delta(B, A, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, e), both (M, N) float64: the delta s B A (float64's own rounding is 2^-29 of e) and
    each entry's bound e = (r + 2) u |s| sum_k |B[i,k] A[k,j]|."""
    B, A = B.detach().double(), A.detach().double()
    return B @ A * s, (B.shape[1] + 2) * U * abs(s) * (B.abs() @ A.abs())


def _bin_counts_between(T, e, rng, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bin, how many entries surely bin there (their whole [v - e, v + e] does, by histc's
    rule over `rng`) and how many possibly do. float32 rounding and the rule are monotone, so a
    computed value's bin lies between its interval ends' bins."""
    lo, hi = rng

    def bins_of(v):
        pos = histc_bins(v.float().reshape(-1), bins, lo, hi)
        return pos.clamp_(0, bins).to(torch.int64).clamp_(max=bins - 1)

    a, b = bins_of(T - e), bins_of(T + e)
    surely = torch.bincount(a[a == b], minlength=bins).double()
    # possibly[k] = #(a <= k) - #(b < k)
    ca, cb = torch.bincount(a, minlength=bins).cumsum(0), torch.bincount(b, minlength=bins).cumsum(0)
    possibly = (ca - torch.cat([cb.new_zeros(1), cb[:-1]])).double()
    return surely, possibly


def promise_problems(st: GateStats, Bb, Ab, sb: float, Bg, Ag, sg: float, bins: int) -> list[str]:
    """How `st` breaks the promise of `_lora_gates.c` against float64 (empty: kept). Dense float64
    deltas: for tests and benchmark samples, not for merging."""
    (Tb, eb), (Tg, eg) = exact_delta(Bb, Ab, sb), exact_delta(Bg, Ag, sg)
    problems = []
    exact = (Tb - Tg).abs().sum(1)
    bound = (eb + eg).sum(1) + ROWL1_REL * exact + 1e-30
    over = float(((st.d - exact).abs() / bound).max()) if exact.numel() else 0.0
    if not over <= 1:
        problems.append(f"row L1 off by {over:.2f}x its bound")
    for name, rng, counts, T, e in (("Tb", st.range_b, st.counts_b, Tb, eb), ("Tg", st.range_g, st.counts_g, Tg, eg)):
        if rng is None or not T.numel():
            continue
        lo, hi = rng
        if not float((T - e).min()) <= lo <= float((T + e).min()):
            problems.append(f"{name} min {lo!r} outside the bounds of float64's {float(T.min())!r}")
        if not float((T - e).max()) <= hi <= float((T + e).max()):
            problems.append(f"{name} max {hi!r} outside the bounds of float64's {float(T.max())!r}")
        if counts is not None:
            surely, possibly = _bin_counts_between(T, e, rng, int(bins))
            if float(counts.sum()) != T.numel() or not bool(((surely <= counts) & (counts <= possibly)).all()):
                problems.append(f"{name} counts {counts.tolist()} outside [{surely.tolist()}, {possibly.tolist()}]")
    return problems
