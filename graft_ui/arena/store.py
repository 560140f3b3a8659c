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

Schema (table `arena_votes`; sides: `a` is shown on the left as "Model A", `b` on the
right as "Model B"):

    id            integer primary key (insertion order)
    turn_id       text unique    -- one vote per battle turn
    battle_id     text           -- a battle is one pair of variants over 1+ turns
    turn_index    integer        -- 0, 1, ... within the battle
    created_at    text           -- ISO 8601, UTC, microseconds
    variant_a     text           -- id of the variant on side A (left)
    variant_b     text           -- id of the variant on side B (right)
    vote          text           -- a | b | tie | both_bad
    blind         integer        -- 1: names hidden until the vote (counts for ratings)
    prompt        text           -- the full prompt of this turn
    answer_a      text
    answer_b      text
    image_sha256  text null      -- sha256 of the stored PNG
    settings      text           -- generation settings, JSON object
    recipe_a      text null      -- fused variant's recipe, JSON object
    recipe_b      text null
    note          text           -- voter's free-text note ('' when none)
    expertise     text null      -- voter's declared expertise (e.g. math, none)
    domain        text null      -- the prompt's domain
    client_hash   text null      -- HMAC-SHA256(salt, client address), hex
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

VOTE_CHOICES = ("a", "b", "tie", "both_bad")
SCHEMA_VERSION = 1
TABLE = "arena_votes"
SALT_FILE = "client_salt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_SCHEMES = ("postgresql://", "postgres://")
PSYCOPG_HINT = "pip install 'psycopg[binary]==3.3.9'"

# column name -> (sqlite type, postgresql type); order is the table's and the exports'
COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    "turn_id": ("TEXT NOT NULL UNIQUE", "TEXT NOT NULL UNIQUE"),
    "battle_id": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "turn_index": ("INTEGER NOT NULL", "INTEGER NOT NULL"),
    "created_at": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "variant_a": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "variant_b": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "vote": ("TEXT NOT NULL CHECK (vote IN ('a','b','tie','both_bad'))",) * 2,
    "blind": ("INTEGER NOT NULL", "INTEGER NOT NULL"),
    "prompt": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "answer_a": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "answer_b": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "image_sha256": ("TEXT", "TEXT"),
    "settings": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "recipe_a": ("TEXT", "TEXT"),
    "recipe_b": ("TEXT", "TEXT"),
    "note": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "expertise": ("TEXT", "TEXT"),
    "domain": ("TEXT", "TEXT"),
    "client_hash": ("TEXT", "TEXT"),
}
_JSON_COLUMNS = ("settings", "recipe_a", "recipe_b")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def default_db_path() -> Path:
    """`$GRAFT_ARENA_DB`, else `~/.cache/graft_ui/arena/votes.sqlite`."""
    env = os.environ.get("GRAFT_ARENA_DB")
    return Path(env) if env else Path.home() / ".cache" / "graft_ui" / "arena" / "votes.sqlite"


def is_url(target: str | os.PathLike) -> bool:
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


@dataclass(frozen=True)
class Vote:
    """One stored vote (one battle turn). `vote` names a side: a, b, tie or both_bad."""

    turn_id: str
    battle_id: str
    turn_index: int
    created_at: str
    variant_a: str
    variant_b: str
    vote: str
    prompt: str
    answer_a: str
    answer_b: str
    blind: bool = True
    image_sha256: str | None = None
    settings: dict = field(default_factory=dict)
    recipe_a: dict | None = None
    recipe_b: dict | None = None
    note: str = ""
    expertise: str | None = None
    domain: str | None = None
    client_hash: str | None = None
    id: int | None = None
    # False when record_vote found this turn already voted and returned the stored vote
    # (a double submit); not stored, not compared.
    new: bool = field(default=True, compare=False, repr=False)

    @property
    def winner(self) -> str | None:
        """The winning variant's id, or None for tie / both_bad."""
        return {"a": self.variant_a, "b": self.variant_b}.get(self.vote)

    def to_record(self) -> dict[str, Any]:
        """The stored columns as plain JSON-ready values (settings/recipes as dicts)."""
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "Vote":
        """From `to_record()`'s shape or a database row (JSON text, integer flags)."""
        data = {name: rec.get(name) for name in COLUMNS}
        missing = [n for n in ("turn_id", "battle_id", "variant_a", "variant_b", "vote") if data[n] in (None, "")]
        if missing:
            raise ValueError(f"vote record {rec.get('turn_id')!r} lacks {missing}")
        for name in _JSON_COLUMNS:
            value = data[name]
            if isinstance(value, str):
                try:
                    data[name] = json.loads(value) if value else None
                except json.JSONDecodeError as exc:
                    raise ValueError(f"vote {data['turn_id']!r}: {name} is not JSON: {value[:80]!r} ({exc})") from None
        data["settings"] = data["settings"] or {}
        data["blind"] = _as_bool(data["blind"], "blind")
        data["turn_index"] = int(data["turn_index"] or 0)
        data["id"] = None if data["id"] in (None, "") else int(data["id"])
        for name in ("prompt", "answer_a", "answer_b", "note"):
            data[name] = "" if data[name] is None else str(data[name])
        for name in ("image_sha256", "expertise", "domain", "client_hash"):
            data[name] = data[name] or None
        if data["vote"] not in VOTE_CHOICES:
            raise ValueError(f"vote {data['turn_id']!r}: vote={data['vote']!r} is not one of {list(VOTE_CHOICES)}")
        return cls(**data)


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.strip().lower() in ("1", "true", "yes")
    raise ValueError(f"{name}={value!r} is not a boolean")


def _to_jsonable(value: Any, what: str) -> dict | None:
    """A recipe / settings object as a JSON object: Mapping, dataclass, or `.to_dict()`."""
    if value is None:
        return None
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping, a dataclass or have to_dict(); got {type(value).__name__}")
    try:
        # round trip through JSON so the returned vote equals what a later read gives back
        return json.loads(json.dumps(dict(value), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


def _dumps(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ---- backends ------------------------------------------------------------------------


class _Backend:
    """The few SQL operations the store needs; `?` placeholders in, dict rows out."""

    dialect = ""

    def write_vote(self, insert_sql: str, params: Sequence, turn_id: str) -> tuple[dict, bool]:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SQLiteBackend(_Backend):
    dialect = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float, synchronous: str):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        # isolation_level=None: no implicit transactions; we BEGIN IMMEDIATE ourselves so a
        # writer takes the write lock up front (no deadlock-prone read->write upgrade)
        self.conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self._retry_locked(self._init, synchronous)

    def _retry_locked(self, fn: Callable, *args):
        # Switching to WAL and creating the schema need locks that a busy handler does not
        # always cover while other processes open the same new file; retry until the timeout.
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.005
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or time.monotonic() > deadline:
                    raise
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _init(self, synchronous: str) -> None:
        c = self.conn
        c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("vote store %s: journal_mode is %r, not WAL (file system without shared memory?)", self.path, mode)
        c.execute(f"PRAGMA synchronous = {synchronous}")
        c.execute("BEGIN IMMEDIATE")
        try:
            _create_schema(lambda sql, params=(): c.execute(sql, params), self.dialect, lambda sql: c.execute(sql).fetchall())
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def write_vote(self, insert_sql, params, turn_id):
        def tx():
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                inserted = c.execute(insert_sql, params).rowcount == 1
                row = c.execute(f"SELECT * FROM {TABLE} WHERE turn_id = ?", (turn_id,)).fetchone()
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return dict(row), inserted

        return self._retry_locked(tx)

    def query(self, sql, params=()):
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def close(self):
        self.conn.close()


class _PostgresBackend(_Backend):
    dialect = "postgresql"
    _SCHEMA_LOCK = 0x6772_6166_7476  # pg_advisory_xact_lock key: serialises schema creation

    def __init__(self, url: str, connect_timeout_s: float):
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise ValueError(f"database URL {_redact(url)!r} needs the psycopg package ({PSYCOPG_HINT})") from None
        self._psycopg = psycopg
        self._dict_row = dict_row
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.conn = self._connect()
        with self.conn.transaction():
            cur = self.conn.cursor()
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._SCHEMA_LOCK,))
            _create_schema(
                lambda sql, params=(): cur.execute(_pg(sql), params), self.dialect, lambda sql: cur.execute(_pg(sql)).fetchall()
            )

    def _connect(self):
        try:
            return self._psycopg.connect(
                self.url, autocommit=True, row_factory=self._dict_row, connect_timeout=max(1, int(self.connect_timeout_s))
            )
        except self._psycopg.OperationalError as exc:
            raise ValueError(f"cannot connect to vote database {_redact(self.url)!r}: {str(exc).strip()}") from None

    def _with_reconnect(self, fn):
        # A long-running app outlives server restarts; the write is idempotent on turn_id,
        # so one retry on a fresh connection cannot duplicate a vote.
        try:
            return fn()
        except self._psycopg.OperationalError:
            if not self.conn.closed and not self.conn.broken:
                raise
            log.warning("vote database connection lost; reconnecting to %s", _redact(self.url))
            self.conn = self._connect()
            return fn()

    def write_vote(self, insert_sql, params, turn_id):
        def tx():
            with self.conn.transaction():
                cur = self.conn.cursor()
                cur.execute(_pg(insert_sql), params)
                inserted = cur.rowcount == 1
                row = cur.execute(f"SELECT * FROM {TABLE} WHERE turn_id = %s", (turn_id,)).fetchone()
            return dict(row), inserted

        return self._with_reconnect(tx)

    def query(self, sql, params=()):
        return self._with_reconnect(lambda: [dict(r) for r in self.conn.execute(_pg(sql), params).fetchall()])

    def close(self):
        self.conn.close()


def _pg(sql: str) -> str:
    # our SQL never contains a literal '?' or '%'
    return sql.replace("?", "%s")


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _create_schema(execute: Callable, dialect: str, fetchall: Callable) -> None:
    col = 0 if dialect == "sqlite" else 1
    cols = ",\n  ".join(f"{name} {types[col]}" for name, types in COLUMNS.items())
    execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  {cols}\n)")
    execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_battle ON {TABLE} (battle_id)")
    execute("CREATE TABLE IF NOT EXISTS arena_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    rows = fetchall("SELECT value FROM arena_meta WHERE key = 'schema_version'")
    if not rows:
        execute("INSERT INTO arena_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return
    found = int(rows[0][0] if not isinstance(rows[0], Mapping) else rows[0]["value"])
    if found > SCHEMA_VERSION:
        raise ValueError(f"vote store schema_version={found} is newer than this code ({SCHEMA_VERSION}); upgrade graft_ui")


# ---- the store -----------------------------------------------------------------------


class VoteStore:
    """Votes in SQLite (a file path) or PostgreSQL (a URL). Thread-safe; many processes may share it.

    Open with `VoteStore.open(target)`. `store_dir` holds `images/` and the client-address
    salt; it defaults to the SQLite file's folder, or for a URL to `$GRAFT_ARENA_DIR` or
    `~/.cache/graft_ui/arena` (several app instances on one PostgreSQL should share it).
    """

    def __init__(self, backend: _Backend, store_dir: Path, target: str):
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
            backend: _Backend = _PostgresBackend(str(target), busy_timeout_s)
            env_dir = os.environ.get("GRAFT_ARENA_DIR")
            sdir = Path(store_dir) if store_dir else Path(env_dir) if env_dir else default_db_path().parent
            log.info("vote store: %s (images and salt in %s)", _redact(str(target)), sdir)
            return cls(backend, sdir, _redact(str(target)))
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
        backend = _SQLiteBackend(path, busy_timeout_s, synchronous.upper())
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
        data = _png_bytes(image)
        sha = hashlib.sha256(data).hexdigest()
        dest = self.image_path(sha)
        if dest.exists():
            return sha
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".png")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)  # atomic: readers never see a half-written image
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)
        return sha

    def _client_salt(self) -> bytes:
        if self._salt is None:
            self._salt = _load_or_create_salt(self.store_dir / SALT_FILE)
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
        created_at: str | None = None,
    ) -> Vote:
        """Store one vote and return it as stored; durable (committed) when this returns.

        Idempotent on `turn_id`: a second submit for the same turn stores nothing and
        returns the first vote (with `.new == False`), whatever the second one said.
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
            "blind": 1 if _as_bool(blind, "blind") else 0,
            "prompt": prompt,
            "answer_a": answer_a,
            "answer_b": answer_b,
            "image_sha256": image_sha256,
            "settings": _dumps(_to_jsonable(settings, "settings") or {}),
            "recipe_a": _dumps(_to_jsonable(recipe_a, f"recipe of {variant_a!r}")),
            "recipe_b": _dumps(_to_jsonable(recipe_b, f"recipe of {variant_b!r}")),
            "note": (note or "").strip(),
            "expertise": _opt_label(expertise, "expertise"),
            "domain": _opt_label(domain, "domain"),
            "client_hash": self.hash_client(client_address),
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

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self._lock:
            return self._backend.query(sql, params)


def open_store(target: str | os.PathLike | None = None, **kwargs) -> VoteStore:
    """Shorthand for `VoteStore.open(target, **kwargs)`."""
    return VoteStore.open(target, **kwargs)


def _opt_label(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} must be a string or None")
    return value.strip() or None


def _png_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if data.startswith(PNG_SIGNATURE):
            return data
        return _encode_png(_open_pil(io.BytesIO(data), "image bytes"))
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        data = path.read_bytes()
        if data.startswith(PNG_SIGNATURE):
            return data
        return _encode_png(_open_pil(io.BytesIO(data), str(path)))
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL image
        return _encode_png(image)
    if hasattr(image, "shape") and hasattr(image, "dtype"):  # numpy array, as gradio hands them
        from PIL import Image

        try:
            return _encode_png(Image.fromarray(image))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"image array of shape {tuple(image.shape)} and dtype {image.dtype} is not an image: {exc}") from None
    raise ValueError(f"image of type {type(image).__name__} is not bytes, a path, a PIL image or an array")


def _open_pil(fp, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(fp)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what} is not a readable image: {exc}") from None


def _encode_png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
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


def _load_or_create_salt(path: Path) -> bytes:
    """Read the salt file, creating it (0600, 32 random bytes as hex) exactly once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".salt-")  # mkstemp creates 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic and exclusive: a racing process keeps the first salt
                log.info("created client-address salt %s", path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("salt file %s has mode %o; it should be 0600", path, mode)
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"salt file {str(path)!r} is not 64 hex characters")
    return bytes.fromhex(text)
