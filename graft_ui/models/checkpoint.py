"""Streaming safetensors I/O: read one tensor at a time, write sharded files as tensors come.

Why not `safe_open` / `save_file`: `safe_open` serves memory-mapped views, whose touched
pages stay resident (and count in RSS) for as long as the file is open, so a merge of two
4.4 GB checkpoints would look like an 8.8 GB process; and `save_file` needs the whole
shard in memory. Here:

- `SafetensorsFile` parses the header and `pread`s a tensor's bytes into a caller-owned,
  reused buffer (`BufferPool`): no allocation per tensor, RSS bounded by the buffers;
- `ShardedWriter` lays out every output tensor up front (names, dtypes and shapes are
  known before any maths), writes the headers, then `pwrite`s each tensor at its offset
  whenever it is ready, in any order, starting each file's write-back in the background as
  it grows (`_Flusher`), so the fsync before publishing is short. Shards are ~1 GB; more
  than one shard gets an HF `*.safetensors.index.json`. The files are plain safetensors (checked by `safe_open`
  and `from_pretrained` in the tests).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

log = logging.getLogger(__name__)

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
SHARD_BYTES = 1 << 30  # ~1 GB shards: bounded output files, many small writes

_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class BufferPool:
    """Reusable byte buffers, one per role (expert 0, expert 1, base, output ...).

    Allocation is expensive on small VMs (DESIGN.md §6), so each role keeps the largest
    buffer it has needed and hands out views of it.
    """

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def bytes(self, role: str, nbytes: int) -> torch.Tensor:
        buf = self._bufs.get(role)
        if buf is None or buf.numel() < nbytes:
            # round up so a slightly bigger next tensor does not reallocate
            size = max(nbytes, 1)
            size = (size + (1 << 20) - 1) // (1 << 20) * (1 << 20)
            buf = self._bufs[role] = torch.empty(size, dtype=torch.uint8)
        return buf[:nbytes]

    def typed(self, role: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        raw = self.bytes(role, n * itemsize)
        return raw.view(dtype).view(tuple(shape)) if n else torch.empty(tuple(shape), dtype=dtype)

    def clear(self) -> None:
        self._bufs.clear()


def _pread_into(fd: int, view: memoryview, offset: int, path) -> None:
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise ValueError(f"safetensors file {str(path)!r} is truncated (wanted {total} bytes at {offset})")
        done += n


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    total = len(view)
    while done < total:
        done += os.pwrite(fd, view[done:], offset + done)


def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


class SafetensorsFile:
    """One safetensors file: header parsed eagerly, tensor bytes read on demand with pread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than 8 bytes")
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise ValueError(f"header length {n} is not plausible")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise FileNotFoundError(f"weights file {str(self.path)!r} does not exist") from None
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{str(self.path)!r} is not a valid safetensors file: {exc}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        start = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, spec in header.items():
            try:
                dtype = DTYPES[spec["dtype"]]
                s, e = spec["data_offsets"]
                shape = tuple(int(x) for x in spec["shape"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{str(self.path)!r}: tensor {name!r} has an unsupported header entry {spec!r}") from None
            if start + e > size:
                raise ValueError(f"safetensors file {str(self.path)!r} is truncated: tensor {name!r} ends past the file")
            self.tensors[name] = TensorInfo(name, dtype, shape, start + s, e - s)
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor `name`, read into `out` (uint8 buffer of at least nbytes) or a new tensor."""
        info = self.tensors[name]
        raw = torch.empty(info.nbytes, dtype=torch.uint8) if out is None else out[: info.nbytes]
        if info.nbytes:
            _pread_into(self.fd, memoryview(raw.numpy()), info.start, self.path)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        return raw.view(info.dtype).view(info.shape)

    def read_range(self, name: str, byte_start: int, out: torch.Tensor) -> torch.Tensor:
        """Bytes [byte_start, byte_start + len(out)) of tensor `name` into the uint8 `out`."""
        info = self.tensors[name]
        _pread_into(self.fd, memoryview(out.numpy()), info.start + byte_start, self.path)
        return out


class Checkpoint:
    """A model folder's weights: `model.safetensors`, or shards listed in the HF index."""

    def __init__(self, folder: str | Path, single_name: str = SINGLE_NAME, index_name: str = INDEX_NAME):
        self.folder = Path(folder)
        index = self.folder / index_name
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"checkpoint index {str(index)!r} is unreadable: {exc}") from None
            for fname in dict.fromkeys(weight_map.values()):
                self.files[fname] = SafetensorsFile(self.folder / fname)
            for name, fname in weight_map.items():
                if name not in self.files[fname].tensors:
                    raise ValueError(
                        f"checkpoint {str(self.folder)!r}: tensor {name!r} is listed in {index.name} "
                        f"but missing from {fname}"
                    )
                self.where[name] = fname
        elif (self.folder / single_name).is_file():
            self.files[single_name] = SafetensorsFile(self.folder / single_name)
            self.where = {name: single_name for name in self.files[single_name].tensors}
        else:
            others = sorted(p.name for p in self.folder.glob("*.bin")) if self.folder.is_dir() else []
            hint = f" (found {others}; convert them to safetensors first)" if others else ""
            raise FileNotFoundError(f"no {single_name} or {index_name} in {str(self.folder)!r}{hint}")
        # file order (shard, then offset): reading in this order is sequential on disk
        order = {f: i for i, f in enumerate(self.files)}
        self.names: list[str] = sorted(self.where, key=lambda n: (order[self.where[n]], self.info(n).start))

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def info(self, name: str) -> TensorInfo:
        try:
            return self.files[self.where[name]].tensors[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is missing from checkpoint {str(self.folder)!r}") from None

    def file(self, name: str) -> SafetensorsFile:
        return self.files[self.where[name]]

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        if name not in self.where:
            raise ValueError(f"tensor {name!r} is missing from checkpoint {str(self.folder)!r}")
        return self.file(name).read(name, out)

    @property
    def total_bytes(self) -> int:
        return sum(self.info(n).nbytes for n in self.names)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise naming `what` when a floating tensor holds NaN or inf.

    `aminmax` propagates NaN and shows inf, and is ~30x cheaper than `isfinite(t).all()`
    on bf16 (no boolean temporary).
    """
    if not t.is_floating_point() or not t.numel():
        return
    try:
        lo, hi = torch.aminmax(t)
        ok = math.isfinite(float(lo)) and math.isfinite(float(hi))
    except (RuntimeError, NotImplementedError):  # dtypes without aminmax (float8)
        ok = bool(torch.isfinite(t.float()).all())
    if not ok:
        raise ValueError(f"{what} contains NaN or inf values")


@dataclass
class _Slot:
    file_index: int
    start: int  # absolute offset in the shard file
    info: TensorInfo


class _Flusher:
    """Writes back what the writer wrote while the merge goes on: after every FLUSH_BYTES
    written, one background fdatasync of that file (never two at once), so the fsync before
    publishing finds little left to write instead of the whole output."""

    FLUSH_BYTES = 128 << 20

    def __init__(self):
        self._dirty: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # module jobs may write from several threads

    def wrote(self, fd: int, n: int) -> None:
        with self._lock:
            self._dirty[fd] = self._dirty.get(fd, 0) + n
            if self._dirty[fd] >= self.FLUSH_BYTES and (self._thread is None or not self._thread.is_alive()):
                self._dirty[fd] = 0
                self._thread = threading.Thread(target=self._sync, args=(fd,), daemon=True)
                self._thread.start()

    @staticmethod
    def _sync(fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError:  # best effort: the fsync before publishing reports real errors
            pass

    def wait(self) -> None:
        """Before the files are closed (an fd must not close under a running fdatasync)."""
        with self._lock:
            if self._thread is not None:
                self._thread.join()
                self._thread = None


class ShardedWriter:
    """Lay out all output tensors first, then pwrite each one whenever it is computed.

    `specs` are (name, dtype, shape) in the order tensors should sit in the shards; a new
    shard starts when the current one would pass `shard_bytes`. Within a shard tensors are
    ordered by element size (largest first) so every tensor is aligned to its dtype.
    """

    def __init__(
        self,
        folder: str | Path,
        specs: Iterable[tuple[str, torch.dtype, Sequence[int]]],
        *,
        shard_bytes: int | None = None,
        single_name: str = SINGLE_NAME,
        index_name: str = INDEX_NAME,
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.index_name = index_name
        shard_bytes = shard_bytes or SHARD_BYTES
        groups: list[list[TensorInfo]] = [[]]
        size = 0
        for name, dtype, shape in specs:
            shape = tuple(int(s) for s in shape)
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if groups[-1] and size + nbytes > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(TensorInfo(name, dtype, shape, 0, nbytes))
            size += nbytes
        n = len(groups)
        self.file_names = [single_name] if n == 1 else [
            f"{Path(single_name).stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)
        ]
        self.slots: dict[str, _Slot] = {}
        self._fds: list[int] = []
        self._flusher = _Flusher()
        self.total_size = 0
        meta = {"format": "pt", **(metadata or {})}
        for i, group in enumerate(groups):
            group = sorted(group, key=lambda t: -torch.empty((), dtype=t.dtype).element_size())
            header: dict = {"__metadata__": meta}
            offset = 0
            for t in group:
                if t.name in self.slots or t.name in header:
                    raise ValueError(f"output tensor {t.name!r} is listed twice")
                header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
                offset += t.nbytes
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned
            data_start = 8 + len(blob)
            path = self.folder / self.file_names[i]
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.pwrite(fd, struct.pack("<Q", len(blob)) + blob, 0)
            os.ftruncate(fd, data_start + offset)
            for t in group:
                start = data_start + header[t.name]["data_offsets"][0]
                self.slots[t.name] = _Slot(i, start, t)
            self.total_size += offset
        self._written: set[str] = set()

    def spec(self, name: str) -> TensorInfo:
        return self.slots[name].info

    def write(self, name: str, tensor: torch.Tensor) -> None:
        slot = self.slots[name]
        info = slot.info
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise ValueError(
                f"output tensor {name!r}: got {tuple(tensor.shape)} {tensor.dtype}, planned {info.shape} {info.dtype}"
            )
        data = _as_bytes(tensor)
        _pwrite_all(self._fds[slot.file_index], data, slot.start)
        self._flusher.wrote(self._fds[slot.file_index], len(data))
        self._written.add(name)

    def write_bytes(self, name: str, byte_start: int, data: torch.Tensor, last: bool) -> None:
        """Raw bytes (uint8 tensor) at `byte_start` within tensor `name` (chunked copies)."""
        slot = self.slots[name]
        if byte_start + data.numel() > slot.info.nbytes:
            raise ValueError(f"output tensor {name!r}: write past its end")
        _pwrite_all(self._fds[slot.file_index], _as_bytes(data), slot.start + byte_start)
        self._flusher.wrote(self._fds[slot.file_index], data.numel())
        if last:
            self._written.add(name)

    def close(self) -> list[str]:
        """Check every planned tensor was written, close the files, write the index; the file names."""
        missing = [n for n in self.slots if n not in self._written]
        self.abort()
        if missing:
            raise RuntimeError(f"internal error: output tensors never written: {missing[:5]}")
        if len(self.file_names) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {n: self.file_names[s.file_index] for n, s in sorted(self.slots.items())},
            }
            (self.folder / self.index_name).write_text(json.dumps(index, indent=2) + "\n")
            return list(self.file_names) + [self.index_name]
        return list(self.file_names)

    def abort(self) -> None:
        self._flusher.wait()
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def copy_tensor(src: Checkpoint | SafetensorsFile, name: str, writer: ShardedWriter, pool: BufferPool,
                *, out_name: str | None = None, chunk_bytes: int = 64 << 20, what: str = "") -> None:
    """Copy one tensor's bytes unchanged, in chunks, checking floats for NaN/inf on the way."""
    info = src.info(name) if isinstance(src, Checkpoint) else src.tensors[name]
    f = src.file(name) if isinstance(src, Checkpoint) else src
    out_name = out_name or name
    if info.nbytes == 0:
        writer.write(out_name, torch.empty(info.shape, dtype=info.dtype))
        return
    item = torch.empty((), dtype=info.dtype).element_size()
    step = max(item, chunk_bytes // item * item)
    is_float = info.dtype.is_floating_point
    for begin in range(0, info.nbytes, step):
        n = min(step, info.nbytes - begin)
        raw = f.read_range(name, begin, pool.bytes("copy", n))
        if is_float:
            check_finite(raw.view(info.dtype), f"tensor {name!r}{what}")
        writer.write_bytes(out_name, begin, raw, last=begin + n >= info.nbytes)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
SKIP_FILES = {"recipe.yaml", "gates.json", INDEX_NAME, "pytorch_model.bin.index.json", "adapter_config.json"}


def copy_sidecar_files(src: str | Path, dst: str | Path, *, skip: Iterable[str] = ()) -> list[str]:
    """Copy config, tokenizer, processor and chat-template files (not weights) from `src` to `dst`."""
    skip = SKIP_FILES | set(skip)
    copied = []
    for p in sorted(Path(src).iterdir()):
        if not p.is_file() or p.name in skip or p.name.endswith(WEIGHT_SUFFIXES) or p.name.startswith("."):
            continue
        shutil.copy2(p, Path(dst, p.name))
        copied.append(p.name)
    return copied
