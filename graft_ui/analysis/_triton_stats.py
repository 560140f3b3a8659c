"""One fused CUDA kernel per hook call (Triton): the hooks' per-activation reductions in one pass.

Eager torch needs ~10 kernel launches per hooked module (abs, sums, count, shift, dot),
which makes a GPU forward pass launch-bound; this kernel reads the activation once and
adds its block's partial sums into a 5-slot output with atomics:
    out[0] += sum |x|          out[1]  = x[0] (the shift x0, written by program 0)
    out[2] += sum (x - x0)     out[3] += sum (x - x0)^2      out[4] += count(|x| >= thr)
Float atomics make the last bits depend on the order blocks finish (~1e-7 relative).
Imported only when an activation is on CUDA and Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _stats_kernel(x_ptr, out_ptr, n, thr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x0 = tl.load(x_ptr).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ax = tl.abs(x)
    d = tl.where(mask, x - x0, 0.0)
    big = tl.where(mask & (ax >= thr), 1.0, 0.0)
    tl.atomic_add(out_ptr + 0, tl.sum(ax, axis=0))
    tl.atomic_add(out_ptr + 2, tl.sum(d, axis=0))
    tl.atomic_add(out_ptr + 3, tl.sum(d * d, axis=0))
    tl.atomic_add(out_ptr + 4, tl.sum(big, axis=0))
    if pid == 0:
        tl.store(out_ptr + 1, x0)


def fused_stats(flat: torch.Tensor, out: torch.Tensor, thr: float) -> None:
    """Accumulate the statistics of the contiguous 1-D `flat` into the zeroed float32 `out` (5,)."""
    n = flat.numel()
    _stats_kernel[(triton.cdiv(n, BLOCK),)](flat, out, n, float(min(thr, 3.0e38)), BLOCK=BLOCK)
