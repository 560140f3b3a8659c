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

from .steps import as_one_row, auto_block_rows, row_slices

PER = ("tensor", "row", "col")


def _view(t: torch.Tensor, per: str) -> torch.Tensor:
    if per not in PER:
        raise ValueError(f"per={per!r} is not one of {list(PER)}")
    if per == "row":
        return as_one_row(t) if t.dim() < 2 else t.reshape(-1, t.shape[-1])
    if per == "col" and t.dim() > 2:
        raise ValueError(f"column-wise interpolation needs a tensor of at most 2 dimensions, got shape {tuple(t.shape)}")
    return as_one_row(t)


def _blocks(xs: Sequence[torch.Tensor], base: torch.Tensor | None, per: str, dtype):
    """Yield (rows, stacked (k, r, K) inputs minus base) in `dtype`."""
    views = [_view(x, per) for x in xs]
    b2 = _view(base, per) if base is not None else None
    rows, ncols = views[0].shape
    for sl in row_slices(rows, auto_block_rows(ncols * len(xs))):
        X = torch.stack([v[sl].to(dtype) for v in views])
        if b2 is not None:
            X.sub_(b2[sl].to(dtype))
        yield sl, X


def gram(xs: Sequence[torch.Tensor], base: torch.Tensor | None = None, per: str = "tensor") -> torch.Tensor:
    """Inner products of d_i = x_i - base (or x_i): (k, k) for "tensor", (R, k, k) per row,
    (C, k, k) per column; float64."""
    k = len(xs)
    shape = _view(xs[0], per).shape
    if per == "tensor":
        G = torch.zeros(k, k, dtype=torch.float64, device=xs[0].device)
    else:
        G = torch.zeros(shape[0] if per == "row" else shape[1], k, k, dtype=torch.float64, device=xs[0].device)
    for sl, X in _blocks(xs, base, per, torch.float64):
        if per == "tensor":
            G += torch.einsum("irk,jrk->ij", X, X)
        elif per == "row":
            G[sl] = torch.einsum("irk,jrk->rij", X, X)
        else:
            G += torch.einsum("irk,jrk->kij", X, X)
    return G


def combine(
    xs: Sequence[torch.Tensor], coef: torch.Tensor, base: torch.Tensor | None = None, per: str = "tensor",
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """base + sum_i c_i (x_i - base) (or sum_i c_i x_i without a base); coef (k,) or (R|C, k)."""
    out = torch.empty(xs[0].shape, dtype=out_dtype or xs[0].dtype, device=xs[0].device)
    out2 = _view(out, per)
    c = coef.to(torch.float32)
    b2 = _view(base, per) if base is not None else None
    for sl, X in _blocks(xs, base, per, torch.float32):
        if per == "tensor":
            cb = c.reshape(-1, 1, 1)
        elif per == "row":
            cb = c[sl].T.unsqueeze(-1)  # (k, r, 1)
        else:
            cb = c.T.unsqueeze(1)  # (k, 1, C)
        acc = (X * cb).sum(0)
        if b2 is not None:
            acc.add_(b2[sl].float())
        out2[sl].copy_(acc)
    return out


def norms(G: torch.Tensor) -> torch.Tensor:
    """sqrt of the Gram diagonal: the inputs' norms, (k,) or (R, k)."""
    return torch.diagonal(G, dim1=-2, dim2=-1).clamp(min=0).sqrt()


def quad(G: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """<sum a_i x_i, sum b_j x_j> from the Gram matrix; a, b (k,) or (R, k)."""
    b = a if b is None else b
    return torch.einsum("...i,...ij,...j->...", a, G, b)
