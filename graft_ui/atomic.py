"""Atomic file writing and folder publishing, written once for every writer in the package.

A reader (another process, a download, a crash-restarted app) sees either the old file or
the new one, never half of one: the data goes to a temporary file beside the destination
(same filesystem, so the rename is atomic), is fsynced, and replaces the destination; the
folder is fsynced after so the rename itself survives a crash. Folders (a merge output, a
built zoo) are built under a temporary name and swapped in with `publish_folder`.
Used by votes and images (arena/store.py), exports (arena/export.py), the native-stats
build (analysis/_native_stats.py), merge output (models/merge.py) and the zoo build.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_dir(path: str | Path) -> None:
    """fsync a folder so a rename inside it is durable; best effort (not every FS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def replacing(dest: str | Path, *, suffix: str = ".tmp", mode: int | None = None, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside `dest`, moved onto `dest` when the block succeeds and removed
    when it fails. `mode` sets the file's permissions (mkstemp creates 0600); `fsync=False`
    for caches that may be rebuilt after a crash."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(dest.parent)


def write_bytes(dest: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `dest` atomically and durably."""
    with replacing(dest, mode=mode) as tmp:
        tmp.write_bytes(data)


def temp_folder(out: str | Path, tag: str = "tmp") -> Path:
    """An empty folder beside `out` (`<out>.<tag>-<pid>`) to build it in before `publish_folder`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.{tag}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish_folder(tmp: str | Path, out: str | Path) -> None:
    """Move the finished folder `tmp` to `out`; an old `out` is moved aside first (so the
    swap is one rename) and removed only after."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)
