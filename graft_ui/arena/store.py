"""The vote store: one row per battle turn, SQLite by default, PostgreSQL by URL.

Votes are rare (human speed) and precious, so every write is a short transaction that is
durable when `record_vote` returns: SQLite runs in WAL mode with `synchronous=FULL`
(a commit is fsynced), a busy timeout lets several processes share one file, and the
`turn_id` column is UNIQUE, so a double click, a retried request or two app instances
racing on the same turn store exactly one vote (`INSERT ... ON CONFLICT DO NOTHING`,
then read back the row that won). A team running several app instances points them all
at one PostgreSQL database with a URL (`postgresql://user@host:5432/db`; needs the
`psycopg` package).

Privacy: the client address is never stored; the row keeps an HMAC-SHA256 of it keyed
with a per-store random salt kept in a 0600 file beside the images, not in the
database, so an exported or leaked vote table cannot be reversed by hashing all IPv4
addresses. Images are stored once, content-addressed, as
`<store_dir>/images/<sha256[:2]>/<sha256>.png`; the row holds only the hash.

The vote record and its schema are in arena/vote.py, the backends in arena/backends.py, the
image and salt files in arena/files.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Sequence

from graft_ui.arena.backends import Backend, PostgresBackend, SQLiteBackend, is_url, redact_url
from graft_ui.arena.files import load_or_create_salt, png_bytes
from graft_ui.arena.vote import (
    MARKS_TABLE,
    TABLE,
    VOTE_CHOICES,
    Vote,
    as_bool,
    dumps_json,
    opt_label,
    to_jsonable,
    utc_now,
)
from graft_ui.atomic import replacing

log = logging.getLogger(__name__)

SALT_FILE = "client_salt"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def default_db_path() -> Path:
    """`$GRAFT_ARENA_DB`, else `~/.cache/graft_ui/arena/votes.sqlite`."""
    env = os.environ.get("GRAFT_ARENA_DB")
    return Path(env) if env else Path.home() / ".cache" / "graft_ui" / "arena" / "votes.sqlite"


# ---- the store -----------------------------------------------------------------------


class VoteStore:
    """Votes in SQLite (a file path) or PostgreSQL (a URL). Thread-safe; many processes may share it.

    Open with `VoteStore.open(target)`. `store_dir` holds `images/` and the client-address
    salt; it defaults to the SQLite file's folder, or for a URL to `$GRAFT_ARENA_DIR` or
    `~/.cache/graft_ui/arena` (several app instances on one PostgreSQL should share it).
    """

    def __init__(self, backend: Backend, store_dir: Path, target: str):
        self._backend = backend
        self._lock = threading.RLock()  # one connection per store; callbacks come from many threads
        self.store_dir = Path(store_dir)
        self.target = target
        self._salt: bytes | None = None

    @classmethod
    def open(
        cls,
        target: str | os.PathLike | None = None,
        *,
        store_dir: str | os.PathLike | None = None,
        create: bool = True,
        busy_timeout_s: float = 30.0,
        synchronous: str = "FULL",
    ) -> "VoteStore":
        """Open (and create unless `create=False`) a store.

        `target`: a SQLite file path, `sqlite:///path`, or `postgresql://...`; None means
        `default_db_path()`. `synchronous` (SQLite): FULL fsyncs every commit (default:
        votes are few and must survive a crash); NORMAL survives a killed process but may
        lose the last commits on power loss. `busy_timeout_s`: how long a writer waits for
        another's lock (SQLite), or the connect timeout (PostgreSQL).
        """
        if target is None:
            target = default_db_path()
        if isinstance(target, str) and target.startswith("sqlite:///"):
            target = target[len("sqlite:///") :]
        if is_url(target):
            backend: Backend = PostgresBackend(str(target), busy_timeout_s)
            env_dir = os.environ.get("GRAFT_ARENA_DIR")
            sdir = Path(store_dir) if store_dir else Path(env_dir) if env_dir else default_db_path().parent
            log.info("vote store: %s (images and salt in %s)", redact_url(str(target)), sdir)
            return cls(backend, sdir, redact_url(str(target)))
        if isinstance(target, str) and "://" in target:
            raise ValueError(f"vote store target {target!r}: unsupported URL scheme; use a file path, sqlite:///PATH or postgresql://")
        if str(target) in ("", ":memory:"):
            raise ValueError(f"vote store target {str(target)!r}: needs a file path")
        path = Path(target).expanduser()
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r} is not one of FULL, NORMAL, EXTRA")
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"vote database {str(path)!r} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
        elif path.is_dir():
            raise ValueError(f"vote store target {str(path)!r} is a folder; give a file path such as {str(path / 'votes.sqlite')!r}")
        backend = SQLiteBackend(path, busy_timeout_s, synchronous.upper())
        log.info("vote store: %s", path)
        return cls(backend, Path(store_dir) if store_dir else path.parent, str(path))

    @property
    def dialect(self) -> str:
        return self._backend.dialect

    def close(self) -> None:
        with self._lock:
            self._backend.close()

    def __enter__(self) -> "VoteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- images and client hashes ----------------------------------------------------

    @property
    def image_dir(self) -> Path:
        return self.store_dir / "images"

    def image_path(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            raise ValueError(f"image hash {sha256!r} is not a lowercase hex sha256")
        return self.image_dir / sha256[:2] / f"{sha256}.png"

    def put_image(self, image: Any) -> str:
        """Store an image once, content-addressed; return its sha256 (of the PNG bytes).

        Accepts PNG/other image bytes, a file path, a PIL image or an HxW(xC) uint8 array;
        non-PNG input is re-encoded as PNG so the stored file matches its name.
        """
        data = png_bytes(image)
        sha = hashlib.sha256(data).hexdigest()
        dest = self.image_path(sha)
        if dest.exists():
            return sha
        with replacing(dest, suffix=".png") as tmp:  # readers never see a half-written image
            tmp.write_bytes(data)
        return sha

    def _client_salt(self) -> bytes:
        if self._salt is None:
            self._salt = load_or_create_salt(self.store_dir / SALT_FILE)
        return self._salt

    def hash_client(self, address: str | None) -> str | None:
        """HMAC-SHA256 of the client address with this store's salt (None for no address)."""
        if address is None or not str(address).strip():
            return None
        return hmac.new(self._client_salt(), str(address).strip().lower().encode(), hashlib.sha256).hexdigest()

    # ---- votes -----------------------------------------------------------------------

    def record_vote(
        self,
        *,
        turn_id: str,
        battle_id: str,
        variant_a: str,
        variant_b: str,
        vote: str,
        prompt: str,
        answer_a: str,
        answer_b: str,
        turn_index: int = 0,
        blind: bool = True,
        image: Any = None,
        image_sha256: str | None = None,
        settings: Any = None,
        recipe_a: Any = None,
        recipe_b: Any = None,
        note: str | None = "",
        expertise: str | None = None,
        domain: str | None = None,
        client_address: str | None = None,
        voter_id: str | None = None,
        read_s: float | None = None,
        created_at: str | None = None,
    ) -> Vote:
        """Store one vote and return it as stored; durable (committed) when this returns.

        Idempotent on `turn_id`: a second submit for the same turn stores nothing and
        returns the first vote (with `.new == False`), whatever the second one said.
        `voter_id` (the browser session) is stored as a salted hash like the client address;
        `read_s` is the time the voter had from both answers complete to the vote.
        """
        for name, value in (("turn_id", turn_id), ("battle_id", battle_id), ("variant_a", variant_a), ("variant_b", variant_b)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}={value!r} must be a non-empty string")
        if variant_a == variant_b:
            raise ValueError(f"variant_a and variant_b are both {variant_a!r}; a battle needs two different variants")
        if vote not in VOTE_CHOICES:
            raise ValueError(f"vote={vote!r} is not one of {list(VOTE_CHOICES)}")
        for name, value in (("prompt", prompt), ("answer_a", answer_a), ("answer_b", answer_b)):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        if isinstance(turn_index, bool) or not isinstance(turn_index, int) or turn_index < 0:
            raise ValueError(f"turn_index={turn_index!r} must be a non-negative integer")
        if read_s is not None and (isinstance(read_s, bool) or not isinstance(read_s, (int, float)) or not read_s >= 0):
            raise ValueError(f"read_s={read_s!r} must be a non-negative number of seconds or None")
        if image is not None and image_sha256 is not None:
            raise ValueError("give image or image_sha256, not both")
        if image_sha256 is not None:
            if not self.image_path(image_sha256).exists():
                raise FileNotFoundError(f"image {image_sha256!r} is not in {str(self.image_dir)!r}; store it with put_image first")
        elif image is not None:
            image_sha256 = self.put_image(image)  # before the vote, so a stored hash always has its file
        record = {
            "turn_id": turn_id,
            "battle_id": battle_id,
            "turn_index": turn_index,
            "created_at": created_at or utc_now(),
            "variant_a": variant_a,
            "variant_b": variant_b,
            "vote": vote,
            "blind": 1 if as_bool(blind, "blind") else 0,
            "prompt": prompt,
            "answer_a": answer_a,
            "answer_b": answer_b,
            "image_sha256": image_sha256,
            "settings": dumps_json(to_jsonable(settings, "settings") or {}),
            "recipe_a": dumps_json(to_jsonable(recipe_a, f"recipe of {variant_a!r}")),
            "recipe_b": dumps_json(to_jsonable(recipe_b, f"recipe of {variant_b!r}")),
            "note": (note or "").strip(),
            "expertise": opt_label(expertise, "expertise"),
            "domain": opt_label(domain, "domain"),
            "client_hash": self.hash_client(client_address),
            "voter_hash": self.hash_client(voter_id),
            "read_s": None if read_s is None else float(read_s),
        }
        names = list(record)
        sql = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            "ON CONFLICT (turn_id) DO NOTHING"
        )
        with self._lock:
            row, inserted = self._backend.write_vote(sql, [record[n] for n in names], turn_id)
        stored = Vote.from_record(row)
        if inserted:
            log.info("vote %s: %s (%s vs %s)", turn_id, vote, variant_a, variant_b)
            return stored
        if (stored.vote, stored.variant_a, stored.variant_b) != (vote, variant_a, variant_b):
            log.warning("turn %s already voted %r; ignoring the later submit %r", turn_id, stored.vote, vote)
        else:
            log.info("turn %s: repeated submit, vote already stored", turn_id)
        return dataclasses.replace(stored, new=False)

    def get_vote(self, turn_id: str) -> Vote | None:
        rows = self._query(f"SELECT * FROM {TABLE} WHERE turn_id = ?", (turn_id,))
        return Vote.from_record(rows[0]) if rows else None

    def votes(
        self,
        *,
        blind: bool | None = None,
        domain: str | None = None,
        expertise: str | None = None,
        battle_id: str | None = None,
    ) -> list[Vote]:
        """Stored votes in insertion order; each filter is applied when not None."""
        where, params = [], []
        for name, value in (("domain", domain), ("expertise", expertise), ("battle_id", battle_id)):
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        if blind is not None:
            where.append("blind = ?")
            params.append(1 if blind else 0)
        sql = f"SELECT * FROM {TABLE}" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        return [Vote.from_record(r) for r in self._query(sql, params)]

    def count(self, *, blind: bool | None = None) -> int:
        if blind is None:
            rows = self._query(f"SELECT COUNT(*) AS n FROM {TABLE}")
        else:
            rows = self._query(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE blind = ?", (1 if blind else 0,))
        return int(rows[0]["n"])

    def distinct(self, column: str) -> list[str]:
        """Distinct non-null values of domain, expertise, variant_a/variant_b (for filter menus)."""
        if column == "variant":
            rows = self._query(f"SELECT variant_a AS v FROM {TABLE} UNION SELECT variant_b AS v FROM {TABLE}")
            return sorted(r["v"] for r in rows)
        if column not in ("domain", "expertise", "variant_a", "variant_b"):
            raise ValueError(f"column={column!r} is not one of domain, expertise, variant, variant_a, variant_b")
        rows = self._query(f"SELECT DISTINCT {column} AS v FROM {TABLE} WHERE {column} IS NOT NULL")
        return sorted(r["v"] for r in rows)

    # ---- marks: operator decisions kept beside the votes, never in them ----------------------

    def set_mark(self, kind: str, key: str, value: str) -> None:
        """Record (or replace) one decision, e.g. ("voter", <hash>, "restored") or ("fresh", <variant>, <time>)."""
        for name, v in (("kind", kind), ("key", key), ("value", value)):
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"mark {name}={v!r} must be a non-empty string")
        sql = (f"INSERT INTO {MARKS_TABLE} (kind, key, value, updated_at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
        with self._lock:
            self._backend.execute(sql, (kind, key, value, utc_now()))
        log.info("mark %s %s = %s", kind, key[:16], value)

    def clear_mark(self, kind: str, key: str) -> None:
        with self._lock:
            self._backend.execute(f"DELETE FROM {MARKS_TABLE} WHERE kind = ? AND key = ?", (kind, key))
        log.info("mark %s %s cleared", kind, key[:16])

    def marks(self, kind: str) -> dict[str, str]:
        """{key: value} of one kind of mark."""
        return {r["key"]: r["value"] for r in self._query(f"SELECT key, value FROM {MARKS_TABLE} WHERE kind = ?", (kind,))}

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self._lock:
            return self._backend.query(sql, params)


def open_store(target: str | os.PathLike | None = None, **kwargs) -> VoteStore:
    """Shorthand for `VoteStore.open(target, **kwargs)`."""
    return VoteStore.open(target, **kwargs)
