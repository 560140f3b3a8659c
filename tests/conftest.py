"""Suite-wide settings: offline hub, no analytics, a shared zoo cache; the suite's PostgreSQL server."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[1] / ".zoo"))

from tests._postgres import pg_server  # noqa: E402,F401 - a session fixture: one server for every test that needs one
