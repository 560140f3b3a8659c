"""Shared helpers for the arena tests (paths, subprocess environment)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_arena_worker.py")


def worker_env() -> dict:
    """The current environment with the repo importable and one BLAS thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


from tests._postgres import REQUIRE_POSTGRES, pg_unavailable  # noqa: F401 - the arena tests' import
