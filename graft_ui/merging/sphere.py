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
from .stored import StoredRows, new_output

PER = ("tensor", "row", "col")


def _view(t: torch.Tensor, per: str) -> torch.Tensor:
    if per not in PER:
        raise ValueError(f"per={per!r} is not one of {list(PER)}")
    if per == "row":
        return as_one_row(t) if t.dim() < 2 else t.reshape(-1, t.shape[-1])
    if per == "col" and t.dim() > 2:
        raise ValueError(f"column-wise interpolation needs a tensor of at most 2 dimensions, got shape {tuple(t.shape)}")
    return as_one_row(t)


# Up to this many inputs the tensor-wide Gram block is k (k + 1) / 2 dot products, above it one
# matrix product: on a 1 M-entry float32 block (MKL, one thread) three dots take ~0.26 ms and
# X @ X.T ~0.44 ms for k = 2; 6 dots ~0.6 ms and the product ~1.1 ms for k = 3; at k = 8 the
# product is faster. Dots need each input's row 64-byte aligned (MKL's sdot is ~4x slower on
# rows misaligned to each other), hence _blocks' padded stride.
GRAM_DOTS_UP_TO = 4


def _blocks(xs: Sequence[torch.Tensor], base: torch.Tensor | None, per: str, unchecked: bool = False):
    """Yield (rows, (k, r, K) float32 inputs minus base); the block lives in one reused buffer,
    each input's rows contiguous and 64-byte aligned, so a consumer finishes it before the
    next. `unchecked`: stored inputs are read without their NaN/inf check (stored.py), which
    the consumer then owes them."""
    views = [_view(x, per) for x in xs]
    b2 = _view(base, per) if base is not None else None
    rows, ncols = views[0].shape
    step = auto_block_rows(ncols * len(xs))
    span = min(step, rows) * ncols
    stride = -(-span // 16) * 16  # float32 entries between inputs: a multiple of 64 bytes
    dev = xs[0].device
    buf = torch.empty(len(xs) * stride, dtype=torch.float32, device=dev)
    b_buf = None  # the base's rows as float32, when they are not float32 already
    for sl in row_slices(rows, step):
        r = sl.stop - sl.start
        X = buf.as_strided((len(xs), r, ncols), (stride, ncols, 1))
        b = None
        if b2 is not None:
            b = _rows(b2, sl, unchecked)
            if b.dtype != torch.float32:
                b_buf = torch.empty(span, dtype=torch.float32, device=dev) if b_buf is None else b_buf
                b = b_buf[: r * ncols].view(r, ncols).copy_(b)
        for i, v in enumerate(views):
            if b is None:
                X[i].copy_(_rows(v, sl, unchecked))
            else:
                minus_into(X[i], _rows(v, sl, unchecked), b)
        yield sl, X


def _rows(v, sl: slice, unchecked: bool) -> torch.Tensor:
    return v.unchecked(sl) if unchecked and isinstance(v, StoredRows) else v[sl]


def _check_stored(xs: Sequence[torch.Tensor], base: torch.Tensor | None, per: str) -> None:
    """Raise naming the first stored input (the base first) that holds NaN/inf, reading the
    rows again block by block."""
    for x in ([base] if base is not None else []) + list(xs):
        v = _view(x, per)
        if isinstance(v, StoredRows):
            for sl in row_slices(v.shape[0], auto_block_rows(v.shape[1] * len(xs))):
                v.check(sl)


def gram(xs: Sequence[torch.Tensor], base: torch.Tensor | None = None, per: str = "tensor") -> torch.Tensor:
    """Inner products of d_i = x_i - base (or x_i): (k, k) for "tensor", (R, k, k) per row,
    (C, k, k) per column. Float32 products within a block (dots or one BLAS call, as mergekit
    computes in float32), summed over blocks in float64.

    Stored inputs are read without the reader's NaN/inf check: a NaN or inf entry makes its
    d_i . d_i not finite, so only when the Gram diagonal is not finite are they read again
    and checked, naming the input (a diagonal that merely overflowed passes that check and
    stays inf, as it would have)."""
    k = len(xs)
    shape = _view(xs[0], per).shape
    dev = xs[0].device
    if per == "tensor":
        I, J = torch.triu_indices(k, k, device=dev)
        pairs = list(zip(I.tolist(), J.tolist()))
        sums = torch.zeros(len(pairs), dtype=torch.float64, device=dev)  # G[I, J], over blocks
    else:
        G = torch.zeros(shape[0] if per == "row" else shape[1], k, k, dtype=torch.float64, device=dev)
    for sl, X in _blocks(xs, base, per, unchecked=True):
        if per == "tensor":
            sums += _tensor_products(X, pairs, I, J).double()
        elif per == "row":
            G[sl] = torch.einsum("irk,jrk->rij", X, X).double()
        else:
            G += torch.einsum("irk,jrk->kij", X, X).double()
    if per == "tensor":
        G = torch.zeros(k, k, dtype=torch.float64, device=dev)
        G[I, J] = sums
        G[J, I] = sums
    if not bool(torch.isfinite(torch.diagonal(G, dim1=-2, dim2=-1)).all()):
        _check_stored(xs, base, per)
    return G


def _tensor_products(X: torch.Tensor, pairs, I: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """The block's <x_i, x_j> for `pairs` (the (I, J) upper triangle), float32; X (k, r, K)
    with each input's rows contiguous."""
    k = X.shape[0]
    flat = X.as_strided((k, X.shape[1] * X.shape[2]), (X.stride(0), 1))
    if k <= GRAM_DOTS_UP_TO:
        return torch.stack([torch.dot(flat[i], flat[j]) for i, j in pairs])
    return (flat @ flat.T)[I, J]


def combine(
    xs: Sequence[torch.Tensor], coef: torch.Tensor, base: torch.Tensor | None = None, per: str = "tensor",
    out_dtype: torch.dtype | None = None, out=None,
) -> torch.Tensor:
    """base + sum_i c_i (x_i - base) (or sum_i c_i x_i without a base); coef (k,) or (R|C, k).
    Written as (1 - sum_i c_i) base + sum_i c_i x_i: the first term scaled into the sum, then
    one fused multiply-add per input, into `out` (a tensor or a stored.Sink) when given, else
    a new tensor."""
    out = new_output(xs[0].shape, out_dtype or xs[0].dtype, xs[0].device, out)
    out2 = _view(out, per)
    views = [_view(x, per) for x in xs]
    c = coef.to(torch.float64)
    b2 = _view(base, per) if base is not None else None
    rest = 1 - c.sum(-1)  # the base's coefficient
    rows, ncols = out2.shape
    step = auto_block_rows(ncols)
    terms = [(v, c[..., i]) for i, v in enumerate(views)] + ([(b2, rest)] if b2 is not None else [])
    # two reused float32 blocks: the sum, and each input converted (no allocation per block)
    acc_buf, x_buf = (torch.empty(min(step, rows) * ncols, dtype=torch.float32, device=xs[0].device) for _ in "ax")
    for sl in row_slices(rows, step):
        n = (sl.stop - sl.start) * ncols
        acc, x = acc_buf[:n].view(-1, ncols), x_buf[:n].view(-1, ncols)
        for i, (v, ci) in enumerate(terms):
            if i == 0:
                _scale_into(acc, v[sl], _coef(ci, per, sl))
            else:
                _fma_(acc, _as_float(v[sl], x), _coef(ci, per, sl))
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


def _scale_into(acc: torch.Tensor, x: torch.Tensor, c) -> None:
    """acc = c x (a float32 x read as it is, any other converted into acc first)."""
    if x.dtype == torch.float32:
        torch.mul(x, c, out=acc)
    else:
        acc.copy_(x).mul_(c)


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
