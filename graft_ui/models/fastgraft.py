"""Streaming kernels for whole checkpoints: the same results as graft_ui.merging, fewer passes.

Merging a 2B model visits ~1.3 G weights per expert, so per-element cost decides the wall
time (DESIGN.md §6). These kernels give the same numbers as the reference functions in
`graft_ui.merging` (tests/models/test_fastgraft.py checks them against each other) and
use the reference code for every gate formula (`gate_weights`):

- `entropy16`: histogram entropy of a bf16/fp16 tensor from the counts of its 65,536
  possible bit patterns (one `np.bincount`), each distinct value then binned by histc's
  own rule (`histc_bins`). ~4 ns/element instead of ~15 for float32 `histc`;
  `entropy32` does float32 tensors with the same rule through reusable buffers.
- `graft_pair_rows`: Graft of two same-shaped tensors with one reusable float32
  difference buffer: d = row L1 of (Wb - Wg), then (Wb - Wg) * wb + Wg in place, i.e.
  exactly `apply_row_weights`' arithmetic. min/max come from `aminmax`, which also
  catches NaN/inf.
- `graft_lora_fast`: Graft of two LoRA deltas with each dense delta computed once (not once
  per gate pass) and the fused factors built by `concat_lora`.
- `kth_largest_abs`: the TIES trim threshold (`steps.magnitude_threshold`) by a radix select
  on the float32 bit patterns (one bincount of the top 16 bits, then `kthvalue` on one
  bucket) instead of `kthvalue` over the whole tensor (~6x cheaper here).
- `ties_combine`: TIES' sign election and disjoint mean in ~18 elementwise passes for two
  experts (hardshrink for the trim, relu/sign for the agreement), shared by `ties_dense`
  (whole tensors) and `lora_ties`.
- `lora_ties`: TIES / DARE-TIES of LoRA deltas with base 0, the deltas made tile by tile
  (never whole) and each threshold found exactly from a sampled bracket and one counting
  pass. With the SVD that follows (merging.lora.lowrank_from_sketch), ~13x less CPU than
  dense deltas through `ties_merge` and `torch.svd_lowrank` on an 8960 x 1536 module.
  `SingleThreaded` runs such module jobs side by side.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from graft_ui.merging.graft import entropy as reference_entropy
from graft_ui.merging.graft import gate_weights
from graft_ui.merging.steps import auto_block_rows, row_slices

log = logging.getLogger(__name__)

_BIT16 = (torch.bfloat16, torch.float16)
_CHUNK = 1 << 18


def minmax(t: torch.Tensor, what: str) -> tuple[float, float]:
    """(min, max) of a floating tensor; NaN/inf (which aminmax propagates) raise naming `what`."""
    lo, hi = torch.aminmax(t)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or inf values")
    return lo, hi


def _entropy_from_counts(counts: torch.Tensor) -> float:
    # the reference's final step, verbatim, so equal counts give bit-equal entropies
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def histc_bins(values: torch.Tensor, bins: int, lo: float, hi: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """The bin `torch.histc(x, bins, min=lo, max=hi)` puts each float32 value in.

    histc maps by linear interpolation in float32, `int((v - lo) * bins / (hi - lo))`,
    the maximum going to the last bin (checked against histc in the tests; a search
    against `linspace` edges differs for values on an edge). `out` may be the values'
    own buffer (it is overwritten).
    """
    lo_t = torch.tensor(lo, dtype=torch.float32)
    span = torch.tensor(hi, dtype=torch.float32) - lo_t
    buf = values.sub_(lo_t) if out is None else torch.sub(values, lo_t, out=out)
    buf.mul_(int(bins)).div_(span)
    return buf


def _count_bins(pos: torch.Tensor, bins: int, idx: torch.Tensor | None = None) -> torch.Tensor:
    """float64 counts per bin of float positions (truncated, the top edge folded into the last bin)."""
    dtype = torch.uint8 if bins < 255 else torch.int32
    idx = torch.empty(pos.shape, dtype=dtype) if idx is None or idx.numel() < pos.numel() else idx[: pos.numel()].view(pos.shape)
    idx.copy_(pos)  # float -> int truncates toward zero, as histc's cast does (pos >= 0)
    counts = torch.bincount(idx.reshape(-1), minlength=bins + 1).double()
    counts[bins - 1] += counts[bins]
    return counts[:bins]


def entropy16(x: torch.Tensor, bins: int, lo: float, hi: float) -> float:
    """Entropy of a bf16/fp16 CPU tensor over `bins` uniform bins on [lo, hi] (its own min/max)."""
    if hi <= lo:
        return 0.0
    bits = x.contiguous().view(torch.int16).reshape(-1).numpy().view(np.uint16)
    # bincount converts its input to intp: in 256K chunks that temporary stays small and warm
    counts = np.zeros(1 << 16, dtype=np.int64)
    for i in range(0, bits.size, _CHUNK):
        counts += np.bincount(bits[i:i + _CHUNK], minlength=1 << 16)
    present = np.flatnonzero(counts)
    values = torch.from_numpy(present.astype(np.uint16).view(np.int16)).view(x.dtype).float()
    which = histc_bins(values, bins, lo, hi).to(torch.int64).clamp_(max=int(bins) - 1)
    hist = torch.zeros(int(bins), dtype=torch.float64)
    hist.index_add_(0, which, torch.from_numpy(counts[present]).double())
    return _entropy_from_counts(hist)


def entropy32(x: torch.Tensor, bins: int, lo: float, hi: float, scratch: torch.Tensor | None = None,
              idx: torch.Tensor | None = None) -> float:
    """Entropy of a float32 CPU tensor, histc's bins, through reusable buffers (~4x cheaper than histc)."""
    if hi <= lo:
        return 0.0
    flat = x.reshape(-1)
    buf = torch.empty_like(flat) if scratch is None else scratch[: flat.numel()]
    pos = histc_bins(flat, bins, lo, hi, out=buf)
    return _entropy_from_counts(_count_bins(pos, int(bins), idx))


def entropy_any(x: torch.Tensor, bins: int, lo: float, hi: float, scratch: torch.Tensor | None = None) -> float:
    if x.device.type == "cpu":
        if x.dtype in _BIT16:
            return entropy16(x, bins, lo, hi)
        if x.dtype == torch.float32:
            return entropy32(x, bins, lo, hi, scratch)
    return reference_entropy(x, bins)


def _stats(wb: torch.Tensor, w_glob: float, H_b, H_g, rows: int, kw: dict[str, Any]) -> dict[str, Any]:
    """The stats dict of `graft_row_weights` (same keys, same values)."""
    return {
        "gates": kw.get("gates", "dual"),
        "global_form": kw.get("global_form", "algorithm"),
        "a": float(kw.get("a", 0.4)),
        "c": float(kw.get("c", 500.0)),
        "bins": int(kw.get("bins", 10)),
        "alpha": float(kw.get("alpha", 1.0)),
        "beta": float(kw.get("beta", 0.0)),
        "H_b": H_b,
        "H_g": H_g,
        "w_glob": float(w_glob),
        "wb_mean": float(wb.mean()),
        "wb_min": float(wb.min()),
        "wb_max": float(wb.max()),
        "rows": int(rows),
    }


def graft_row_weights_dense(
    Wb: torch.Tensor, Wg: torch.Tensor, diff: torch.Tensor, kw: dict[str, Any], what: tuple[str, str],
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Row weights wb (M,) float32 and stats; leaves `diff` (float32, Wb's shape as (M, K)) = Wb - Wg.

    `diff` and the scratch it needs are the caller's reusable buffers.
    """
    gates = kw.get("gates", "dual")
    bins = int(kw.get("bins", 10))
    B2 = Wb.reshape(Wb.shape[0], -1) if Wb.dim() > 1 else Wb.reshape(-1, 1)
    G2 = Wg.reshape(B2.shape)
    rows = B2.shape[0]
    lo_b, hi_b = minmax(B2, what[0])
    lo_g, hi_g = minmax(G2, what[1])
    diff.copy_(B2)
    if G2.dtype == torch.float32:
        diff.sub_(G2)
    else:  # a mixed-dtype sub_ is ~7x slower than converting once into the scratch
        g32 = G2.float() if scratch is None else scratch[: G2.numel()].view(G2.shape).copy_(G2)
        diff.sub_(g32)
    d = None
    if gates != "global":
        # float32 accumulation (float64 reductions are ~7x slower here); row sums differ from
        # the float64 reference by ~1e-7 relative, far below anything the gates resolve
        d = torch.linalg.vector_norm(diff, ord=1, dim=1).double()
    H_b = H_g = None
    if gates != "local":
        H_b = entropy_any(B2, bins, lo_b, hi_b, scratch)
        H_g = entropy_any(G2, bins, lo_g, hi_g, scratch)
    wb64, w_glob = gate_weights(
        d, H_b, H_g, rows=rows, a=kw.get("a", 0.4), c=kw.get("c", 500.0), gates=gates,
        global_form=kw.get("global_form", "algorithm"), alpha=kw.get("alpha", 1.0), beta=kw.get("beta", 0.0),
    )
    wb = wb64.float()
    return wb, _stats(wb, w_glob, H_b, H_g, rows, kw)


def fuse_into(diff: torch.Tensor, wb: torch.Tensor, Wg: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """diff = (Wb - Wg) -> (Wb - Wg) * wb + Wg, in place: `apply_row_weights`' arithmetic.

    `scratch` (float32, >= Wg.numel()) takes a float32 copy of a 16-bit Wg first: the same
    values, without the slow mixed-dtype add.
    """
    G2 = Wg.reshape(diff.shape)
    if G2.dtype != torch.float32:
        G2 = G2.float() if scratch is None else scratch[: G2.numel()].view(G2.shape).copy_(G2)
    return diff.mul_(wb.to(diff.device).reshape(-1, 1)).add_(G2)


# ---------------------------------------------------------------------------- LoRA

def graft_lora_fast(
    Bb: torch.Tensor, Ab: torch.Tensor, sb: float, Bg: torch.Tensor, Ag: torch.Tensor, sg: float,
    kw: dict[str, Any], bufs: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """`graft_lora` with each dense delta computed once into the reusable (M, N) float32 `bufs`."""
    from graft_ui.merging.lora import concat_lora

    M, N = Bb.shape[0], Ab.shape[1]
    db, dg = bufs[0][: M * N].view(M, N), bufs[1][: M * N].view(M, N)
    torch.matmul(Bb, Ab, out=db) if Bb.shape[1] else db.zero_()
    torch.matmul(Bg, Ag, out=dg) if Bg.shape[1] else dg.zero_()
    if sb != 1.0:
        db.mul_(sb)
    if sg != 1.0:
        dg.mul_(sg)
    gates = kw.get("gates", "dual")
    bins = int(kw.get("bins", 10))
    d = H_b = H_g = None
    if gates != "local":
        scratch = bufs[2] if len(bufs) > 2 else None
        H_b = _entropy_dense(db, bins, scratch)
        H_g = _entropy_dense(dg, bins, scratch)
    if gates != "global":
        # d = sum_j |db - dg|, with db overwritten (it is not needed afterwards)
        d = torch.linalg.vector_norm(db.sub_(dg), ord=1, dim=1).double()  # see graft_row_weights_dense
    wb64, w_glob = gate_weights(
        d, H_b, H_g, rows=M, a=kw.get("a", 0.4), c=kw.get("c", 500.0), gates=gates,
        global_form=kw.get("global_form", "algorithm"), alpha=kw.get("alpha", 1.0), beta=kw.get("beta", 0.0),
    )
    wb = wb64.float()
    B_cat, A_cat = concat_lora([Bb, Bg], [Ab, Ag], [sb, sg], [wb, 1.0 - wb])
    stats = _stats(wb, w_glob, H_b, H_g, M, kw)
    stats["rank"] = int(A_cat.shape[0])
    return B_cat, A_cat, stats


def _entropy_dense(x: torch.Tensor, bins: int, scratch: torch.Tensor | None) -> float:
    lo, hi = minmax(x, "a LoRA delta")
    return entropy_any(x, bins, lo, hi, scratch)


# ---------------------------------------------------------------------------- TIES threshold

def kth_largest_abs(absx: torch.Tensor, k: int) -> float:
    """The k-th largest value of a non-negative float32 CPU tensor (`kthvalue(x, n - k + 1)`).

    Non-negative float32 bit patterns sort like the values, so the top 16 bits give a
    65,536-bucket histogram; the answer lies in one bucket, searched with `kthvalue`.
    """
    flat = absx.reshape(-1)
    n = flat.numel()
    if not 0 < k <= n:
        raise ValueError(f"k={k} out of range for {n} values")
    if flat.dtype != torch.float32 or flat.device.type != "cpu":
        return float(torch.kthvalue(flat.float().cpu(), n - k + 1).values)
    arr = flat.numpy()
    high = arr.view(np.uint16)[1::2]  # little-endian: the upper half of each float32
    counts = np.zeros(1 << 16, dtype=np.int64)
    for i in range(0, high.size, _CHUNK):
        counts += np.bincount(high[i:i + _CHUNK], minlength=1 << 16)
    above = np.cumsum(counts[::-1])[::-1]  # above[b] = #values with top bits >= b
    b = int(np.flatnonzero(above >= k)[-1])  # highest bucket whose tail holds >= k values
    higher = int(above[b + 1]) if b + 1 < len(above) else 0
    members = torch.from_numpy(arr[high == b])
    # the (k - higher)-th largest inside the bucket
    return float(torch.kthvalue(members, members.numel() - (k - higher) + 1).values)


def ties_thresholds(base: torch.Tensor, experts, density: float, buf: torch.Tensor) -> list[float]:
    """`steps.expert_threshold` for each expert, via `kth_largest_abs`; buf: float32 scratch (n,)."""
    out = []
    n = base.numel()
    k = int(density * n)
    for e in experts:
        if density >= 1.0 or k >= n:
            out.append(0.0)
        elif k <= 0:
            out.append(math.inf)
        else:
            t = buf[:n]
            t.copy_(e.reshape(-1))
            t.sub_(base.reshape(-1)).abs_()
            out.append(kth_largest_abs(t, k))
    return out


def trim_below_(t: torch.Tensor, thr: float) -> torch.Tensor:
    """Zero the entries of float32 `t` with |t| < thr, in place (`steps.trim_` in one pass).

    hardshrink keeps |t| > lambd, so lambd is the largest float32 below thr (thr need not
    be a float32 value); 0 keeps all, inf keeps none.
    """
    if thr == math.inf:
        return t.zero_()
    if thr > 0.0:
        t32 = np.float32(thr)
        lambd = float(t32) if float(t32) < thr else float(np.nextafter(t32, np.float32(0)))
        torch.ops.aten.hardshrink.out(t, lambd, out=t)
    return t


def _count_nonzero(x: torch.Tensor, nonneg: bool) -> int:
    # float count_nonzero costs ~4x a pass; for values with no -0.0 the int32 bit patterns say the same
    if nonneg and x.device.type == "cpu" and x.is_contiguous():
        return int(np.count_nonzero(x.view(torch.int32).numpy()))
    return int(x.count_nonzero())


def ties_combine(taus, weights, lam: float, buf, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """TIES' sign election and disjoint mean of trimmed float32 task vectors, times lam.

    taus: float32 tensors of one shape, already trimmed; they are overwritten. buf(role):
    float32 scratch of that shape ("total", "sign", "den"). out: where the result goes
    (default: the "total" scratch). Returns (merged, number of its non-zero entries
    before lam, i.e. `ties_merge`'s "nonzero" count).

    Same values as `ties.ties_merge` (elect_sign, disjoint_mean, * lam) in fewer passes:
    with s = +-1 the elected sign, expert i agrees where t_i s > 0, so
    sum_i w_i t_i [agree_i] = s * sum_i w_i relu(t_i s) and sum_i w_i [agree_i] =
    sum_i w_i sign(relu(t_i s)). Rounding is symmetric in sign, so the sums and the quotient
    are the reference's bit for bit, up to the sign of zeros.
    """
    # elect_sign's weighted_sum: 0 + w0 t0 is w0 t0 (t0 itself for w0 = 1) up to the sign
    # of zero, then the same adds
    total = buf("total")
    first = 1
    if weights[0] == 1.0 and len(taus) > 1:
        torch.add(taus[0], taus[1], alpha=weights[1], out=total)
        first = 2
    else:
        torch.mul(taus[0], weights[0], out=total)
    for t, w in zip(taus[first:], weights[first:]):
        total.add_(t, alpha=w)
    # sign(total) + 0.5 is > 0 exactly where total >= 0 (-0.0 included), as elect_sign's ge(0)
    s = torch.sign(total, out=buf("sign")).add_(0.5).sign_()
    # num starts at +0.0 so that it never holds -0.0 (see _count_nonzero); den's zeros may be signed
    num, den = total.zero_(), buf("den")
    for i, (t, w) in enumerate(zip(taus, weights)):
        t.mul_(s).relu_()
        num.add_(t, alpha=w)
        if i == 0:
            torch.sign(t, out=den)
            if w != 1.0:
                den.mul_(w)
        else:
            den.add_(t.sign_(), alpha=w)
    positive = all(w > 0 for w in weights)
    if positive:
        # a sum of positive weights is >= the smallest, so this only lifts den == 0 (where
        # num == 0, so 0 / min(w) = 0 / 1)
        den.clamp_min_(min(weights))
    else:
        den.masked_fill_(den == 0, 1.0)
    merged = torch.div(num, den, out=num if out is None else out)
    # zero-initialised sums of non-negative terms have no -0.0; with a negative weight they might
    nonzero = _count_nonzero(merged, positive)
    merged.mul_(s)
    if lam != 1.0:
        merged.mul_(lam)
    return merged, nonzero


def ties_dense(
    base: torch.Tensor, experts, weights, thresholds, lam: float, bufs,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`ties.ties_merge` on whole tensors through reusable float32 buffers (same values).

    bufs: callable(role) -> float32 scratch of base.numel() elements. Returns (merged
    float32 view of a scratch buffer, stats as ties_merge's).
    """
    n = base.numel()
    b32 = bufs("base").copy_(base.reshape(-1))
    taus, kept = [], []
    for i, (e, thr) in enumerate(zip(experts, thresholds)):
        t = bufs(f"tau{i}").copy_(e.reshape(-1))
        trim_below_(t.sub_(b32), thr)
        kept.append(round(int(t.count_nonzero()) / max(1, n), 6))
        taus.append(t)
    merged, nonzero = ties_combine(taus, weights, lam, bufs)
    merged.add_(b32)
    return merged.view(base.shape), {"kept": kept, "nonzero": round(nonzero / max(1, n), 6), "lam": lam}


# ---------------------------------------------------------------------------- TIES of LoRA deltas

# elements per tile (1 MiB of float32): the few tiles in flight stay in L2/L3, and the
# per-op overhead (a few microseconds) stays small next to the work (~0.2 ns/element/op);
# 4x smaller tiles cost ~40% more on 8960 x 1536 deltas
TILE_ELEMS = 1 << 18


class SingleThreaded:
    """n threads whose torch ops run single-threaded, for independent jobs (LoRA modules).

    Module-level parallelism: no synchronisation inside a module, and no OpenMP team whose
    barrier waits on a descheduled thread (on a busy 2-core machine that makes small ops
    10-100x slower). torch.set_num_threads(1) is per thread for OpenMP and MKL but also sets
    the default for threads created later, so the caller's value is put back once the
    workers are set up; each worker first initialises its own thread count, or the later
    lazy initialisation would undo the 1.
    """

    def __init__(self, n: int):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.n = int(n)
        main = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="graft-module")
        ready = threading.Barrier(self.n)

        def init():
            torch.get_num_threads()
            torch.set_num_threads(1)
            ready.wait()  # one init per thread: each holds its thread until all have run

        try:
            for f in [self._pool.submit(init) for _ in range(self.n)]:
                f.result()
        finally:
            torch.set_num_threads(main)

    def submit(self, fn, *args, **kw):
        return self._pool.submit(fn, *args, **kw)

    def close(self) -> None:
        self._pool.shutdown()


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
