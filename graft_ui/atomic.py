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

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


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


INCOMPLETE = ".incomplete"  # marker file inside a temp folder until publish_folder removes it


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user counts as alive: never touch its files)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path, tags: tuple[str, ...]) -> dict[int, list[Path]]:
    """Temp and old folders of `out` by the PID in their name: `<out>.<tag>-PID`, `.<out>.<tag>-PID`, `.<out>.old-PID`."""
    found: dict[int, list[Path]] = {}
    names = [f"{out.name}.{tag}-" for tag in tags] + [f".{out.name}.{tag}-" for tag in tags] + [f".{out.name}.old-"]
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return found
    for p in entries:
        for prefix in names:
            if p.name.startswith(prefix) and p.name[len(prefix):].isdigit():
                found.setdefault(int(p.name[len(prefix):]), []).append(p)
    return found


def recover_folder(out: str | Path, tags: tuple[str, ...] = ("tmp",)) -> None:
    """Clean up after writers of `out` that died (kill -9, power loss) before or during `publish_folder`.

    For each dead PID: if `out` is missing but that process had moved the old `out` aside
    (`.<out>.old-PID`), the kill fell between the two renames of an overwrite: the old folder is
    put back (the new one was never acknowledged). Then its temp folders (complete or not) and
    old folder are removed. Afterwards `out` is the old complete folder, or the new one when the
    kill came after the final rename. Folders of live processes are left alone.
    """
    out = Path(out)
    for pid, paths in sorted(_leftovers(out, tags).items()):
        if pid == os.getpid() or pid_alive(pid):
            continue
        old = out.parent / f".{out.name}.old-{pid}"
        if old in paths and not out.exists():
            log.warning("restoring %s: a replacement was interrupted (process %d is gone)", out, pid)
            os.replace(old, out)
            fsync_dir(out.parent)
            paths = [p for p in paths if p != old]
        for p in paths:
            log.info("removing %s left by process %d (it is gone)", p, pid)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def temp_folder(out: str | Path, tag: str = "tmp", *, hidden: bool = False) -> Path:
    """An empty folder beside `out` (`<out>.<tag>-<pid>`, with a leading dot when `hidden`) to build
    it in before `publish_folder`. Leftovers of dead writers are cleaned first (`recover_folder`), and
    the new folder holds an `.incomplete` marker until it is published, so a crash leaves a folder
    that says what it is."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out, (tag,))
    tmp = out.parent / f"{'.' if hidden else ''}{out.name}.{tag}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / INCOMPLETE).write_text(f"pid {os.getpid()}: being written for {out.name}; removed when published\n")
    return tmp


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under `root` (bottom-up), so a rename of `root` publishes data on disk."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_file(p)
        fsync_dir(dirpath)


def publish_folder(tmp: str | Path, out: str | Path) -> None:
    """Move the finished folder `tmp` to `out`: its files and folders are fsynced and its
    `.incomplete` marker removed first; an old `out` is moved aside (`.<out>.old-<pid>`, so the
    swap is one rename) and removed only after. A kill between the two renames is undone by the
    next `temp_folder`/`recover_folder` for `out` (the old folder is restored)."""
    tmp, out = Path(tmp), Path(out)
    (tmp / INCOMPLETE).unlink(missing_ok=True)
    fsync_tree(tmp)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)
