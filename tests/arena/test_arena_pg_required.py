"""The PostgreSQL vote tests cannot skip silently: with GRAFT_REQUIRE_POSTGRES=1 a missing server fails."""

import pytest

from _arena_helpers import pg_unavailable


def test_missing_postgres_fails_when_required(monkeypatch):
    monkeypatch.setenv("GRAFT_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL vote tests required"):
        pg_unavailable("initdb not found")


def test_missing_postgres_skips_otherwise(monkeypatch):
    monkeypatch.delenv("GRAFT_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception):
        pg_unavailable("initdb not found")
