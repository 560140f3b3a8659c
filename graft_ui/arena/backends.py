"""Where votes live: the SQLite backend (default: one file, WAL, fsynced commits, busy
timeout for several processes) and the PostgreSQL backend (a URL; needs `psycopg`).

Both write a vote in one short transaction (`INSERT ... ON CONFLICT (turn_id) DO NOTHING`,
then read back the row that won) and answer plain queries as lists of dicts.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from graft_ui.arena.vote import COLUMNS, MARKS_TABLE, SCHEMA_VERSION, TABLE

log = logging.getLogger(__name__)

_URL_SCHEMES = ("postgresql://", "postgres://")
PSYCOPG_HINT = "pip install 'psycopg[binary]==3.3.9'"


def is_url(target: str | os.PathLike) -> bool:
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


# ---- backends ------------------------------------------------------------------------


class Backend:
    """The few SQL operations the store needs; `?` placeholders in, dict rows out."""

    dialect = ""

    def write_vote(self, insert_sql: str, params: Sequence, turn_id: str) -> tuple[dict, bool]:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence = ()) -> None:
        """One write statement in its own committed transaction."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteBackend(Backend):
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

    def execute(self, sql, params=()):
        def tx():
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(sql, params)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

        self._retry_locked(tx)

    def close(self):
        self.conn.close()


class PostgresBackend(Backend):
    dialect = "postgresql"
    _SCHEMA_LOCK = 0x6772_6166_7476  # pg_advisory_xact_lock key: serialises schema creation

    def __init__(self, url: str, connect_timeout_s: float):
        try:
            import psycopg  # optional: only a PostgreSQL vote store needs it
            from psycopg.rows import dict_row
        except ImportError:
            raise ValueError(f"database URL {redact_url(url)!r} needs the psycopg package ({PSYCOPG_HINT})") from None
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
            raise ValueError(f"cannot connect to vote database {redact_url(self.url)!r}: {str(exc).strip()}") from None

    def _with_reconnect(self, fn):
        # A long-running app outlives server restarts; the write is idempotent on turn_id,
        # so one retry on a fresh connection cannot duplicate a vote.
        try:
            return fn()
        except self._psycopg.OperationalError:
            if not self.conn.closed and not self.conn.broken:
                raise
            log.warning("vote database connection lost; reconnecting to %s", redact_url(self.url))
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

    def execute(self, sql, params=()):
        def tx():
            with self.conn.transaction():
                self.conn.execute(_pg(sql), params)

        self._with_reconnect(tx)

    def close(self):
        self.conn.close()


def _pg(sql: str) -> str:
    # our SQL never contains a literal '?' or '%'
    return sql.replace("?", "%s")


def redact_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _create_schema(execute: Callable, dialect: str, fetchall: Callable) -> None:
    col = 0 if dialect == "sqlite" else 1
    cols = ",\n  ".join(f"{name} {types[col]}" for name, types in COLUMNS.items())
    execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  {cols}\n)")
    execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_battle ON {TABLE} (battle_id)")
    execute("CREATE TABLE IF NOT EXISTS arena_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    execute(f"CREATE TABLE IF NOT EXISTS {MARKS_TABLE} (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
            "updated_at TEXT NOT NULL, PRIMARY KEY (kind, key))")
    rows = fetchall("SELECT value FROM arena_meta WHERE key = 'schema_version'")
    if not rows:
        execute("INSERT INTO arena_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return
    found = int(rows[0][0] if not isinstance(rows[0], Mapping) else rows[0]["value"])
    if found > SCHEMA_VERSION:
        raise ValueError(f"vote store schema_version={found} is newer than this code ({SCHEMA_VERSION}); upgrade graft_ui")
    if found < SCHEMA_VERSION:
        _migrate(execute, dialect, fetchall, found)


def _migrate(execute: Callable, dialect: str, fetchall: Callable, found: int) -> None:
    """Bring an older store up to SCHEMA_VERSION in the caller's transaction: later versions only add
    nullable columns (and tables, created above), so every stored vote is kept as it was."""
    if dialect == "sqlite":
        have = {r[1] if not isinstance(r, Mapping) else r["name"] for r in fetchall(f"PRAGMA table_info({TABLE})")}
    else:
        rows = fetchall(f"SELECT column_name FROM information_schema.columns WHERE table_name = '{TABLE}' "
                        "AND table_schema = current_schema()")
        have = {r[0] if not isinstance(r, Mapping) else r["column_name"] for r in rows}
    col = 0 if dialect == "sqlite" else 1
    for name, types in COLUMNS.items():
        if name not in have:
            execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {types[col]}")
    execute("UPDATE arena_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    log.info("vote store schema migrated from version %d to %d", found, SCHEMA_VERSION)
