"""Tensors read and written in row blocks, so a method merges a tensor bigger than the memory
it may hold (a 151936 x 1536 embedding is 0.47 GB per input in bf16).

The shared steps (steps.task_vector_blocks / blockwise, sphere.gram / combine) touch an
input only through a 2-D row view (`as_rows`, `as_one_row`, `sphere._view`, all a
`reshape`) and its row slices, and write their result one row block at a time. `Stored`
is an input with a tensor's shape, dtype and device whose `reshape` gives such a view, each
row slice read on demand by `read(start, stop)` (the flat elements [start, stop) in the
stored dtype, on `device`); `Sink` is an output whose row view takes `rows[sl] = block`
and hands the flat elements on to `write(start, block)`. A method whose `Method.streams`
is set accepts both (see registry.Method); the merge engine builds them over safetensors
files (models/merge_full.py). A row slice read from a `Stored` may be a view of a reused
buffer: a caller converts or copies it before reading the next slice of the same input, and
never writes into it (the reader may hold a small input and serve the next pass from it).

A reader checks every element for NaN/inf the first time it is read. A reader may also offer
`rows.unchecked(sl)`, the same rows without that check: the caller then computes from every
element a value that is not finite when an element is not (sphere.gram's sums of squares) and,
only where one is not, calls `rows.check(sl)`, which reads those rows again and raises naming
the tensor. Either way no row is checked twice.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def _two_d(shape: Sequence[int], numel: int, new: Sequence[int]) -> tuple[int, int]:
    """The (rows, cols) of reshaping `shape` to `new` (one -1 allowed); only 2-D views exist."""
    new = tuple(int(s) for s in (new[0] if len(new) == 1 and isinstance(new[0], (tuple, list)) else new))
    if len(new) != 2 or list(new).count(-1) > 1:
        raise ValueError(f"a stored tensor of shape {tuple(shape)} only has 2-D row views; asked for {new}")
    rows, cols = new
    if rows == -1:
        rows = numel // cols if cols else 0
    elif cols == -1:
        cols = numel // rows if rows else 0
    if rows * cols != numel:
        raise ValueError(f"cannot view a stored tensor of shape {tuple(shape)} as {new}")
    return rows, cols


class _Shaped:
    def __init__(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device | str):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = torch.device(device)

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)


class Stored(_Shaped):
    """An input tensor kept in a file, read in row blocks through `reshape(rows, cols)[sl]`.
    `read_unchecked(start, stop)` and `check(start, stop)` (flat elements) serve
    `StoredRows.unchecked` / `check`; without them those fall back to the checked `read`."""

    def __init__(self, shape, dtype, device, read: Callable[[int, int], torch.Tensor],
                 read_unchecked: Callable[[int, int], torch.Tensor] | None = None,
                 check: Callable[[int, int], None] | None = None):
        super().__init__(shape, dtype, device)
        self.read = read
        self.read_unchecked = read_unchecked or read
        self.check = check or (lambda start, stop: None)

    def reshape(self, *shape) -> "StoredRows":
        return StoredRows(self, *_two_d(self.shape, self.numel(), shape))


class StoredRows:
    def __init__(self, src: Stored, rows: int, cols: int):
        self.src, self.shape = src, torch.Size((rows, cols))

    def _range(self, sl: slice) -> tuple[int, int]:
        start, stop, step = sl.indices(self.shape[0])
        if step != 1:
            raise ValueError(f"stored rows are read in contiguous slices; got step {step}")
        cols = self.shape[1]
        return start * cols, max(start, stop) * cols

    def __getitem__(self, sl: slice) -> torch.Tensor:
        return self.src.read(*self._range(sl)).view(-1, self.shape[1])

    def unchecked(self, sl: slice) -> torch.Tensor:
        """The rows without the NaN/inf check: the caller checks them (see the module)."""
        return self.src.read_unchecked(*self._range(sl)).view(-1, self.shape[1])

    def check(self, sl: slice) -> None:
        """Raise naming the tensor when these rows hold NaN or inf."""
        self.src.check(*self._range(sl))


class Sink(_Shaped):
    """An output tensor written in row blocks through `reshape(rows, cols)[sl] = block`; each
    block is cast to `dtype` and handed to `write(start, block)` (flat element offset)."""

    def __init__(self, shape, dtype, device, write: Callable[[int, torch.Tensor], None]):
        super().__init__(shape, dtype, device)
        self.write = write

    def reshape(self, *shape) -> "SinkRows":
        return SinkRows(self, *_two_d(self.shape, self.numel(), shape))

    def to(self, dtype: torch.dtype) -> "Sink":
        if dtype != self.dtype:
            raise ValueError(f"a streamed output is written as {self.dtype}; cannot turn it into {dtype}")
        return self


class SinkRows:
    def __init__(self, dst: Sink, rows: int, cols: int):
        self.dst, self.shape = dst, torch.Size((rows, cols))

    def __setitem__(self, sl: slice, block: torch.Tensor) -> None:
        start, stop, _ = sl.indices(self.shape[0])
        cols = self.shape[1]
        if tuple(block.shape) != (stop - start, cols):
            raise ValueError(f"block of shape {tuple(block.shape)} written to rows {start}:{stop} of {cols} columns")
        self.dst.write(start * cols, block.to(self.dst.dtype).reshape(-1))


def new_output(shape, dtype: torch.dtype, device, out: Sink | torch.Tensor | None = None):
    """`out` when the caller streams the result (checked against the shape), else a new tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"output of shape {tuple(out.shape)} given for a result of shape {tuple(shape)}")
    return out
