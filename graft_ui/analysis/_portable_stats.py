"""The portable reductions of activation statistics: numpy on the CPU, staged or direct torch ops anywhere.

`stats.StatsAccumulator` hands an activation here when neither the C kernel
(`_native_stats`) nor the Triton kernel (`_triton_stats`) takes it; stats.py's docstring
says which path runs when. Every path reduces one call to the same five float32 sums
[l1, x0, sd, sq, big] = sum|x|, the shift x0 (the call's first element), sum(x - x0),
sum(x - x0)^2 and count(|x| >= thr). `take()` hands a finished sample's sums over as
blocks of ((module index, numel, scale) per call, (calls, 5) float64 sums), with one
device -> host transfer per device.
"""

from __future__ import annotations

import numpy as np
import torch

HOST_CHUNK = 1 << 20  # elements a numpy step reduces at once (bounds the host scratch)
STAGE_BYTES = 8 << 20  # one staging buffer (float32 rows of one activation length)
STAGE_BUFFERS = 8  # staging buffers per device before all of them are reduced and reused
# a buffer holds at least this many rows: above that length the per-op cost is small next to
# the reduction itself, and the extra copy would only add to it
STAGE_MIN_ROWS = 8

Meta = tuple[int, int, float]  # (module index, numel, scale) of one call
Block = tuple[list[Meta], np.ndarray]  # calls and their (calls, 5) float64 sums


class _Stage:
    """Rows of one activation length waiting in a staging buffer, and who they belong to."""

    __slots__ = ("buf", "arena", "rows", "meta", "thrs")

    def __init__(self, arena: torch.Tensor, length: int):
        self.arena = arena
        self.buf = arena[: (arena.numel() // length) * length].view(-1, length)
        self.rows = 0
        self.meta: list[Meta] = []  # per row
        self.thrs: list[float] = []


class PortableSums:
    """Pending per-call sums of the numpy (`host`), staged (`stage`) and direct (`direct`) paths.

    A device holds at most `stage_buffers` staging buffers plus one scratch buffer of
    `stage_bytes` each; `free_buffers` drops them (and the numpy scratch).
    """

    def __init__(self, stage_bytes: int = STAGE_BYTES, stage_buffers: int = STAGE_BUFFERS):
        if stage_bytes < 4 * STAGE_MIN_ROWS or stage_buffers < 1:
            raise ValueError(f"stage_bytes={stage_bytes!r} and stage_buffers={stage_buffers!r} are too small")
        self._arena_numel = int(stage_bytes) // 4
        self.stage_max = self._arena_numel // STAGE_MIN_ROWS  # longest activation that is staged
        self._stage_buffers = int(stage_buffers)
        self.free_buffers()
        self.reset()

    def free_buffers(self) -> None:
        self._free: dict[torch.device, list[torch.Tensor]] = {}  # allocated staging buffers not in use
        self._arenas: dict[torch.device, int] = {}  # staging buffers allocated per device
        self._scratch: dict[torch.device, torch.Tensor] = {}
        # host path: x - x0 then |x|, |x| >= thr, and ones (for BLAS sums); a float32 copy of other dtypes
        self._host: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._host_cast: torch.Tensor | None = None

    def reset(self) -> None:
        """Drop everything pending (the staging buffers in use are dropped with it)."""
        # numpy path: finished rows (module index, numel, scale, [l1, x0, sd, sq, big])
        self._rows: list[tuple[int, int, float, list[float]]] = []
        # direct calls: host metadata, and 0-dim device tensors brought over once per sample
        self._meta: list[Meta] = []
        self._l1: list[torch.Tensor] = []  # sum |x|
        self._x0: list[torch.Tensor] = []  # shift: the call's first element
        self._sd: list[torch.Tensor] = []  # sum (x - x0)
        self._sq: list[torch.Tensor] = []  # sum (x - x0)^2
        self._big: list[torch.Tensor] = []  # count |x| >= eps / |scale| (as a float sum)
        # staged calls: buffers in use by (device, length), and reduced buffers' (rows, 5) results
        self._stages: dict[tuple[torch.device, int], _Stage] = {}
        self._sres: list[tuple[list[Meta], torch.Tensor]] = []

    def take(self) -> tuple[list[Block], list[Block], list[Block]]:
        """The finished sample's (numpy, direct, staged) blocks; nothing stays pending."""
        for st in self._stages.values():
            self._reduce_stage(st)
            self._free.setdefault(st.arena.device, []).append(st.arena)
        rows, meta, sres = self._rows, self._meta, self._sres
        parts = self._l1 + self._x0 + self._sd + self._sq + self._big
        self.reset()
        host: list[Block] = []
        if rows:
            host.append(([r[:3] for r in rows], np.array([r[3] for r in rows], np.float64)))
        direct: list[Block] = []
        if meta:
            # one device -> host transfer per sample
            direct.append((meta, torch.stack(parts).double().cpu().view(5, len(meta)).t().numpy()))
        by_device: dict[torch.device, list[tuple[list[Meta], torch.Tensor]]] = {}
        for item in sres:
            by_device.setdefault(item[1].device, []).append(item)
        staged = [([m for metas, _ in items for m in metas], torch.cat([t for _, t in items]).double().cpu().numpy())
                  for items in by_device.values()]
        return host, direct, staged

    # ---------------------------------------------------------------- numpy (CPU)

    def host(self, a: torch.Tensor, n: int, idx: int, scale: float, thr: float) -> None:
        """The five sums of a CPU activation with numpy; raises RuntimeError/TypeError where numpy cannot view it."""
        self._rows.append((idx, n, scale, self._host_sums(a, n, thr)))

    def _host_sums(self, a: torch.Tensor, n: int, thr: float) -> list[float]:
        """The five sums in chunks of at most HOST_CHUNK elements.

        Preallocated scratch (no allocation per call), single-threaded, sums as BLAS dot
        products (like torch.dot); the chunks' partial sums add up in float64. One scratch
        buffer serves x - x0 and then |x|, to keep the footprint in cache small.
        """
        m = min(n, HOST_CHUNK)
        if self._host is None or self._host[0].size < m:
            # at least doubled: lengths that grow sample by sample do not reallocate every time
            m = min(max(m, 2 * (self._host[0].size if self._host else 0)), HOST_CHUNK)
            self._host = (np.empty(m, np.float32), np.empty(m, np.bool_), np.ones(m, np.float32))
        buf, ge_buf, ones = self._host
        if a.dtype == torch.float32:
            x = a.numpy().reshape(-1)  # a view of the tensor's memory; numpy reshapes cheaper than torch
            flat = cast = None
        else:  # bf16/fp16: converted chunk by chunk into a float32 buffer
            x, flat = None, a.reshape(-1)
            if self._host_cast is None or self._host_cast.numel() < buf.size:
                self._host_cast = torch.empty(buf.size, dtype=torch.float32)
            cast = self._host_cast
        t32 = np.float32(thr)  # the comparison in float32, as on the other paths
        x0 = None
        l1 = sd = sq = 0.0
        big = 0
        for start in range(0, n, HOST_CHUNK):
            c = min(n - start, HOST_CHUNK)
            if x is not None:
                xs = x[start : start + c]
            else:
                cast[:c].copy_(flat[start : start + c])  # type: ignore[index]
                xs = cast[:c].numpy()  # type: ignore[index]
            if x0 is None:
                x0 = xs[0]  # a numpy scalar (a copy), in float32 like the shift on the other paths
            o, s = ones[:c], buf[:c]
            np.subtract(xs, x0, out=s)
            sd += float(np.dot(s, o))
            sq += float(np.dot(s, s))
            np.abs(xs, out=s)
            l1 += float(np.dot(s, o))
            big += int(np.count_nonzero(np.greater_equal(s, t32, out=ge_buf[:c])))
        return [l1, float(x0), sd, sq, float(big)]

    # ---------------------------------------------------------------- direct (torch ops per call)

    def direct(self, a: torch.Tensor, n: int, idx: int, scale: float, thr: float) -> None:
        """Five 0-dim device sums of one activation, brought to the host at the end of the sample."""
        if a.dtype not in (torch.float32, torch.float64):
            a = a.float()  # half precision loses too much in variances; one transient copy
        flat = a.reshape(-1)
        ab = flat.abs()
        # cloned: a view would keep the whole activation alive until the end of the sample
        x0 = flat[0].clone()
        d = flat - x0
        self._meta.append((idx, n, scale))
        self._x0.append(x0)
        self._l1.append(ab.sum())
        # 1 where |x| >= thr, else 0: sign(|x| - thr) is exact (no rounding at the boundary)
        big = (ab - thr).sign_().add_(1.0).clamp_(max=1.0)
        self._big.append(big.sum())
        self._sd.append(d.sum())
        self._sq.append(torch.dot(d, d))

    # ---------------------------------------------------------------- staged (batched torch ops)

    def stage(self, a: torch.Tensor, n: int, idx: int, scale: float, thr: float) -> None:
        """Copy one activation into its length's staging buffer (a copy: later in-place ops cannot change it)."""
        device = a.device
        st = self._stages.get((device, n))
        if st is None:
            st = self._stages[(device, n)] = _Stage(self._take_arena(device), n)
        # copy_ casts to float32; a strided activation is copied through a row viewed in its shape
        row = st.buf[st.rows]
        if a.is_contiguous():
            row.copy_(a.view(-1))
        else:
            row.view(a.shape).copy_(a)
        st.rows += 1
        st.meta.append((idx, n, scale))
        st.thrs.append(thr)
        if st.rows == st.buf.shape[0]:
            self._reduce_stage(st)

    def _take_arena(self, device: torch.device) -> torch.Tensor:
        free = self._free.setdefault(device, [])
        if free:
            return free.pop()
        if self._arenas.get(device, 0) >= self._stage_buffers:
            # every buffer of this device holds another length: reduce them all and reuse them
            for key in [k for k in self._stages if k[0] == device]:
                st = self._stages.pop(key)
                self._reduce_stage(st)
                free.append(st.arena)
            return free.pop()
        self._arenas[device] = self._arenas.get(device, 0) + 1
        return self._empty(device)

    def _empty(self, device: torch.device) -> torch.Tensor:
        # a normal tensor even under inference_mode: hooks may also run outside it, and an
        # inference tensor cannot be written there
        with torch.inference_mode(False):
            return torch.empty(self._arena_numel, dtype=torch.float32, device=device)

    def _reduce_stage(self, st: _Stage) -> None:
        """Reduce a staging buffer's rows in a few batched ops (one (rows, 5) result) and empty it.

        Per row the same sums as the direct path. The buffer is scratch space once copied, so
        it is shifted in place.
        """
        r = st.rows
        if r == 0:
            return
        x = st.buf[:r]
        length = x.shape[1]
        scratch = self._scratch.get(x.device)
        if scratch is None:
            scratch = self._scratch[x.device] = self._empty(x.device)
        ab = scratch[: r * length].view(r, length)
        thrs = st.thrs
        if all(t == thrs[0] for t in thrs):
            thr: float | torch.Tensor = thrs[0]
        else:
            thr = torch.tensor(thrs, dtype=torch.float32).view(r, 1).to(x.device)
        x0 = x[:, :1].clone()
        torch.abs(x, out=ab)
        l1 = ab.sum(1)
        # in place, float 1.0 / 0.0: an exact count, and cheaper than a bool tensor summed in int64
        big = ab.ge_(thr).sum(1)
        d = x.sub_(x0)
        sd = d.sum(1)
        sq = d.square_().sum(1)
        self._sres.append((st.meta, torch.stack([l1, x0.view(r), sd, sq, big], 1)))
        st.rows, st.meta, st.thrs = 0, [], []
