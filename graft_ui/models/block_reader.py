"""Row blocks of one stored tensor for a streamed merge (merging/stored.py's `Stored.read`),
read ahead on a reader thread.

Each block is pread from the safetensors file and checked for NaN/inf the first time its
elements are read. A float tensor whose float32 copy takes at most `held_bytes` is held:
every block, when first read, is converted into one float32 buffer that serves every later
read, so a two-pass method reads and converts it once (its blocks are float32, the stored
values exactly). While the method works on a block, the reader thread reads (and checks,
and for a held tensor converts) the next one of the same size, so file reads overlap the
maths; the method waits only when it is ahead of the reads. A failed read ahead is ignored:
the same range is then read again in line, which raises what it finds. The caller must not
write into a block, and is done with it when it asks for the next (merging/stored.py).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

import torch

from graft_ui.models.checkpoint import SafetensorsFile, TensorInfo, check_finite


class BlockReader:
    """`read(start, stop)`: flat elements [start, stop) of `name` as a tensor on the merge device."""

    def __init__(self, f: SafetensorsFile, info: TensorInfo, role: str, ctx, what: str, held_bytes: int,
                 submit: Callable[..., Future] | None):
        self.f, self.info, self.ctx, self.what, self.submit = f, info, ctx, what, submit
        self.item = torch.empty((), dtype=info.dtype).element_size()
        self.hold = info.dtype.is_floating_point and self.item <= 4 and info.numel * 4 <= held_bytes
        # two block buffers (pool roles): the one the caller has, and the one read ahead into
        self.roles = (role, role + "+")
        self.slot = 0
        self.checked = 0  # elements [0, checked) were read and checked (held: and converted)
        self.held: torch.Tensor | None = None
        self.ahead: tuple[Future, int, int, int] | None = None  # (future, start, stop, slot)

    def _fetch(self, start: int, stop: int, slot: int) -> torch.Tensor | None:
        """Read [start, stop): into the held buffer (returns None), else into block buffer `slot`."""
        raw = self.f.read_range(self.info.name, start * self.item,
                                self.ctx.pool.bytes(self.roles[slot], (stop - start) * self.item))
        block = raw.view(self.info.dtype)
        if stop > self.checked:
            check_finite(block, self.what)
        if self.hold:
            self.held[start:stop].copy_(self.ctx.to_device(block))
        self.checked = max(self.checked, stop)
        return None if self.hold else self.ctx.to_device(block)

    def wait(self) -> tuple[int, int, int, torch.Tensor | None] | None:
        """Finish the read ahead, if any: (start, stop, slot, block), or None (none, or it failed)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        fut, start, stop, slot = ahead
        try:
            return start, stop, slot, fut.result()
        except Exception:  # noqa: BLE001 - read again in line, which raises what it finds
            return None

    def read(self, start: int, stop: int) -> torch.Tensor:
        done = self.wait()
        n = self.info.numel
        if self.hold:
            if self.held is None:
                self.held = self.ctx.scratch(f"{self.roles[0]}:held", (n,))
            if stop > self.checked:
                self._fetch(self.checked, stop, 0)
            if self.checked < n:
                self._ahead(self.checked, min(n, self.checked + stop - start), 1)
            return self.held[start:stop]
        if done is not None and done[:2] == (start, stop):
            self.slot, block = done[2], done[3]
        else:
            self.slot ^= 1
            block = self._fetch(start, stop, self.slot)
        if stop < n:
            self._ahead(stop, min(n, stop + stop - start), self.slot ^ 1)
        return block

    def _ahead(self, start: int, stop: int, slot: int) -> None:
        if self.submit is not None and stop > start:
            self.ahead = (self.submit(self._fetch, start, stop, slot), start, stop, slot)
