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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from graft_ui.merging.graft import entropy as reference_entropy
from graft_ui.merging.graft import gate_weights

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


def ties_dense(
    base: torch.Tensor, experts, weights, thresholds, lam: float, bufs,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`ties.ties_merge` on whole tensors through reusable float32 buffers (same arithmetic).

    bufs: callable(role) -> float32 scratch of base.numel() elements, and a bool scratch via
    role "mask". Returns (merged float32 view of a scratch buffer, stats as ties_merge's).
    """
    n = base.numel()
    b32 = bufs("base").copy_(base.reshape(-1))
    taus = []
    absb, mask = bufs("abs"), bufs("mask")
    kept = []
    for i, (e, thr) in enumerate(zip(experts, thresholds)):
        t = bufs(f"tau{i}").copy_(e.reshape(-1))
        t.sub_(b32)
        if thr > 0.0:
            torch.abs(t, out=absb)
            torch.lt(absb, thr, out=mask)
            t.masked_fill_(mask, 0.0)
        kept.append(round(int(t.count_nonzero()) / max(1, n), 6))
        taus.append(t)
    total = bufs("total").zero_()
    for t, w in zip(taus, weights):
        total.add_(t, alpha=w)
    sign = bufs("sign")
    torch.ge(total, 0, out=mask)  # elected sign: + where the weighted sum is >= 0
    sign.copy_(mask).mul_(2.0).sub_(1.0)
    num, den = total.zero_(), bufs("den").zero_()
    agree, prod = absb, bufs("prod")
    for t, w in zip(taus, weights):
        torch.mul(t, sign, out=agree)
        torch.gt(agree, 0, out=mask)  # t agrees with the elected sign (and is non-zero)
        agree.copy_(mask)
        num.add_(torch.mul(t, agree, out=prod), alpha=w)  # as ties_merge: (t * agree) then add with alpha
        den.add_(agree, alpha=w)
    torch.eq(den, 0, out=mask)
    den.masked_fill_(mask, 1.0)
    merged = num.div_(den)
    nonzero = round(int(merged.count_nonzero()) / max(1, n), 6)
    merged.mul_(lam).add_(b32)
    return merged.view(base.shape), {"kept": kept, "nonzero": nonzero, "lam": lam}
