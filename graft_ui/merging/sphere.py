"""Shared steps of the spherical and geometric methods (SLERP, NuSLERP, Multi-SLERP, Karcher,
Model Stock): their result is a combination sum_i c_i x_i whose coefficients depend only
on the inner products of the inputs. So each runs in two streamed passes over row blocks:
`gram` (the k x k inner products, in float64) and `combine` (the weighted sum, float32),
with the coefficient arithmetic on k x k matrices in between. No pass holds more than a few
row blocks, whatever the tensor's size.

`per` picks what one set of coefficients covers: "tensor" (the whole tensor flattened),
"row" (each vector along the last axis; a 1-D tensor is one row) or "col" (each column of
a 2-D tensor: NuSLERP's row_wise, which normalises along dim 0).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .steps import as_one_row, auto_block_rows, minus_into, row_slices
from .stored import new_output

PER = ("tensor", "row", "col")


def _view(t: torch.Tensor, per: str) -> torch.Tensor:
    if per not in PER:
        raise ValueError(f"per={per!r} is not one of {list(PER)}")
    if per == "row":
        return as_one_row(t) if t.dim() < 2 else t.reshape(-1, t.shape[-1])
    if per == "col" and t.dim() > 2:
        raise ValueError(f"column-wise interpolation needs a tensor of at most 2 dimensions, got shape {tuple(t.shape)}")
    return as_one_row(t)


def _blocks(xs: Sequence[torch.Tensor], base: torch.Tensor | None, per: str):
    """Yield (rows, stacked (k, r, K) float32 inputs minus base); the block lives in one reused
    buffer (contiguous, as torch.stack's), so a consumer finishes it before the next."""
    views = [_view(x, per) for x in xs]
    b2 = _view(base, per) if base is not None else None
    rows, ncols = views[0].shape
    step = auto_block_rows(ncols * len(xs))
    buf = torch.empty(len(xs) * min(step, rows) * ncols, dtype=torch.float32, device=xs[0].device)
    for sl in row_slices(rows, step):
        X = buf[: len(xs) * (sl.stop - sl.start) * ncols].view(len(xs), -1, ncols)
        b = None if b2 is None else b2[sl].float()
        for i, v in enumerate(views):
            if b is None:
                X[i].copy_(v[sl])
            else:
                minus_into(X[i], v[sl], b)
        yield sl, X


def gram(xs: Sequence[torch.Tensor], base: torch.Tensor | None = None, per: str = "tensor") -> torch.Tensor:
    """Inner products of d_i = x_i - base (or x_i): (k, k) for "tensor", (R, k, k) per row,
    (C, k, k) per column. Float32 products within a block (one BLAS call, as mergekit computes
    in float32), summed over blocks in float64."""
    k = len(xs)
    shape = _view(xs[0], per).shape
    if per == "tensor":
        G = torch.zeros(k, k, dtype=torch.float64, device=xs[0].device)
    else:
        G = torch.zeros(shape[0] if per == "row" else shape[1], k, k, dtype=torch.float64, device=xs[0].device)
    for sl, X in _blocks(xs, base, per):
        if per == "tensor":
            flat = X.reshape(k, -1)
            G += (flat @ flat.T).double()
        elif per == "row":
            G[sl] = torch.einsum("irk,jrk->rij", X, X).double()
        else:
            G += torch.einsum("irk,jrk->kij", X, X).double()
    return G


def combine(
    xs: Sequence[torch.Tensor], coef: torch.Tensor, base: torch.Tensor | None = None, per: str = "tensor",
    out_dtype: torch.dtype | None = None, out=None,
) -> torch.Tensor:
    """base + sum_i c_i (x_i - base) (or sum_i c_i x_i without a base); coef (k,) or (R|C, k).
    Written as (1 - sum_i c_i) base + sum_i c_i x_i, one fused multiply-add per input, into
    `out` (a tensor or a stored.Sink) when given, else a new tensor."""
    out = new_output(xs[0].shape, out_dtype or xs[0].dtype, xs[0].device, out)
    out2 = _view(out, per)
    views = [_view(x, per) for x in xs]
    c = coef.to(torch.float64)
    b2 = _view(base, per) if base is not None else None
    rest = 1 - c.sum(-1)  # the base's coefficient
    rows, ncols = out2.shape
    step = auto_block_rows(ncols)
    # two reused float32 blocks: the sum, and each input converted (no allocation per block)
    acc_buf, x_buf = (torch.empty(min(step, rows) * ncols, dtype=torch.float32, device=xs[0].device) for _ in "ax")
    for sl in row_slices(rows, step):
        n = (sl.stop - sl.start) * ncols
        acc, x = acc_buf[:n].view(-1, ncols).zero_(), x_buf[:n].view(-1, ncols)
        for i, v in enumerate(views):
            _fma_(acc, _as_float(v[sl], x), _coef(c[..., i], per, sl))
        if b2 is not None:
            _fma_(acc, _as_float(b2[sl], x), _coef(rest, per, sl))
        out2[sl] = acc
    return out


def _as_float(block: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """A float32 block as it is (read only), any other converted into `buf`."""
    return block if block.dtype == torch.float32 else buf.copy_(block)


def _coef(c: torch.Tensor, per: str, sl: slice):
    """A scalar (tensor), a column (r, 1) per row, or a row (1, C) per column."""
    if per == "tensor":
        return float(c)
    return c[sl].float().unsqueeze(-1) if per == "row" else c.float().unsqueeze(0)


def _fma_(acc: torch.Tensor, x: torch.Tensor, c) -> None:
    if isinstance(c, float):
        acc.add_(x, alpha=c)
    else:
        acc.addcmul_(x, c)


def norms(G: torch.Tensor) -> torch.Tensor:
    """sqrt of the Gram diagonal: the inputs' norms, (k,) or (R, k)."""
    return torch.diagonal(G, dim1=-2, dim2=-1).clamp(min=0).sqrt()


def quad(G: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """<sum a_i x_i, sum b_j x_j> from the Gram matrix; a, b (k,) or (R, k)."""
    b = a if b is None else b
    return torch.einsum("...i,...ij,...j->...", a, G, b)
