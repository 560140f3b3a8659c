"""Suite-wide settings: offline hub, no analytics, a shared zoo cache."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[1] / ".zoo"))
