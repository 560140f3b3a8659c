"""Suite-wide settings: offline hub, no analytics, a shared zoo cache; the suite's PostgreSQL server."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[1] / ".zoo"))

from tests._postgres import pg_server  # noqa: E402,F401 - a session fixture: one server for every test that needs one


@pytest.fixture(scope="session")
def ray_address():
    """A private Ray head on 127.0.0.1 (tests/_ray.py), started for the first test that asks, stopped at the end."""
    from tests._ray import ray_head

    with ray_head(num_cpus=2) as address:
        yield address
