"""Chat tests run on the ci demo zoo (built once, ~1 min, shared with the rest of the suite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[2] / ".zoo"))

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def zoo_manifest():
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo import ensure_zoo

    return load_manifest(ensure_zoo("ci") / "manifest.yaml")


@pytest.fixture(scope="session")
def pool(zoo_manifest):
    from graft_ui.chat import ModelPool

    device = os.environ.get("GRAFT_TEST_DEVICE", "cpu")  # cuda on a GPU machine
    p = ModelPool(zoo_manifest.base.path, device=device, base_name=zoo_manifest.base.name, max_full=1)
    for e in zoo_manifest.experts:
        p.register(e.name, e.path, e.kind)
    yield p
    p.close()


@pytest.fixture()
def image_prompt():
    return [{"role": "user", "content": [{"type": "image", "image": str(EXAMPLES / "images" / "math-shapes.png")},
                                         {"type": "text", "text": "How many circles are there?"}]}]
