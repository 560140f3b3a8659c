"""Shared helpers for the arena tests (paths, subprocess environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_arena_worker.py")


def worker_env() -> dict:
    """The current environment with the repo importable and one BLAS thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


REQUIRE_POSTGRES = "GRAFT_REQUIRE_POSTGRES"  # =1 (scripts/test.sh sets it): no PostgreSQL is a failure, not a skip


def pg_unavailable(reason: str):
    """Skip the PostgreSQL cases, or fail them when $GRAFT_REQUIRE_POSTGRES=1, so that CI cannot
    pass with the PostgreSQL vote store untested."""
    if os.environ.get(REQUIRE_POSTGRES) == "1":
        pytest.fail(f"PostgreSQL vote tests required ({REQUIRE_POSTGRES}=1) but cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
