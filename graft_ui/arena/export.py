"""Vote export: CSV (one row per vote) and JSONL (one battle turn per line), both round-trip.

Columns are the store's (see graft_ui.arena.store), in its order, plus a derived
`winner` (the winning variant's id, or tie / both_bad) that readers ignore. In JSONL the
generation settings and the recipes are JSON objects; in CSV they are compact JSON text.
Empty CSV cells read back as null for the optional columns.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable

from graft_ui.arena.store import VoteStore
from graft_ui.arena.vote import COLUMNS, JSON_COLUMNS, Vote
from graft_ui.atomic import replacing
from graft_ui.jsonl import iter_jsonl

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")
EXPORT_COLUMNS = tuple(COLUMNS) + ("winner",)


def _export_record(vote: Vote) -> dict:
    rec = vote.to_record()
    rec["winner"] = vote.winner or vote.vote
    return rec


def _csv_cell(name: str, value) -> str:
    if value is None:
        return ""
    if name in JSON_COLUMNS:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_csv(votes: Iterable[Vote], dest: str | os.PathLike | IO[str]) -> int:
    """Write votes as CSV (header + one row per vote); returns the number written."""
    def write(f) -> int:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(EXPORT_COLUMNS)
        n = 0
        for v in votes:
            rec = _export_record(v)
            w.writerow([_csv_cell(c, rec[c]) for c in EXPORT_COLUMNS])
            n += 1
        return n

    return _write(dest, write)


def write_jsonl(votes: Iterable[Vote], dest: str | os.PathLike | IO[str]) -> int:
    """Write one JSON object per vote per line (answers and recipes included)."""
    def write(f) -> int:
        n = 0
        for v in votes:
            f.write(json.dumps(_export_record(v), ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
        return n

    return _write(dest, write)


def _write(dest, write) -> int:
    if hasattr(dest, "write"):
        return write(dest)
    path = Path(dest)
    # a reader (or a download) never sees half an export
    with replacing(path, mode=0o644) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        n = write(f)
    log.info("exported %d votes to %s", n, path)
    return n


def _open_text(src):
    if hasattr(src, "read"):
        return src, False
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"vote export {str(path)!r} does not exist")
    return open(path, encoding="utf-8", newline=""), True


def read_csv(src: str | os.PathLike | IO[str]) -> list[Vote]:
    f, close = _open_text(src)
    try:
        reader = csv.DictReader(f)
        missing = sorted(set(COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise ValueError(f"vote CSV {getattr(f, 'name', '<stream>')!r} lacks columns {missing}")
        out = []
        for row in reader:
            try:
                out.append(Vote.from_record(row))
            except ValueError as exc:
                raise ValueError(f"vote CSV line {reader.line_num}: {exc}") from None
        return out
    finally:
        if close:
            f.close()


def read_jsonl(src: str | os.PathLike | IO[str]) -> list[Vote]:
    f, close = _open_text(src)
    try:
        out = []
        for lineno, rec in iter_jsonl(f, "vote JSONL"):
            try:
                out.append(Vote.from_record(rec))
            except ValueError as exc:
                raise ValueError(f"vote JSONL line {lineno}: {exc}") from None
        return out
    finally:
        if close:
            f.close()


def _format(fmt: str | None, out: Path | None) -> str:
    if fmt is None and out is not None:
        fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {list(FORMATS)}")
    return fmt


def export_votes(votes: Iterable[Vote], out: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write votes to `out` as csv or jsonl (default: from the file suffix)."""
    out = Path(out)
    fmt = _format(fmt, out)
    (write_csv if fmt == "csv" else write_jsonl)(votes, out)
    return out


def export_store(store: VoteStore, out: str | os.PathLike, fmt: str | None = None, *, blind: bool | None = None) -> Path:
    """Every vote in the store (or only blind / only named ones) to `out`."""
    return export_votes(store.votes(blind=blind), out, fmt)


def export_for_download(store: VoteStore, fmt: str, folder: str | os.PathLike) -> Path:
    """A fresh `votes-<UTC time>.<fmt>` file in `folder` (created if needed) for a download button."""
    fmt = _format(fmt, None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return export_store(store, folder / f"votes-{stamp}.{fmt}", fmt)


def to_text(votes: Iterable[Vote], fmt: str) -> str:
    """The export as a string (small exports, previews)."""
    fmt = _format(fmt, None)
    buf = io.StringIO(newline="")
    (write_csv if fmt == "csv" else write_jsonl)(votes, buf)
    return buf.getvalue()
