"""Arena fixtures: SQLite stores in tmp dirs, and a real PostgreSQL server of our own.

The PostgreSQL server (the suite's `pg_server`, tests/_postgres.py) is started once per test session and each test gets
a fresh database in it; without a server the PostgreSQL cases skip, or fail under
GRAFT_REQUIRE_POSTGRES=1 as scripts/test.sh runs them.
"""

from __future__ import annotations

import pytest

from graft_ui.arena.store import VoteStore
from tests._postgres import create_database, drop_database


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the private server."""
    url = create_database(pg_server, "arena")
    yield url
    drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path):
    """(target, store_dir) for each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "votes.sqlite"), tmp_path
    return request.getfixturevalue("pg_url"), tmp_path / "store"


@pytest.fixture
def store(store_target):
    target, store_dir = store_target
    s = VoteStore.open(target, store_dir=store_dir)
    yield s
    s.close()

