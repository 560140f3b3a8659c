"""One launched Graft Studio on the ci zoo per test session, shared by the API and browser tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[2] / ".zoo"))

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def zoo_manifest_path() -> str:
    from graft_ui.zoo import ensure_zoo

    return str(ensure_zoo("ci") / "manifest.yaml")


@pytest.fixture(scope="session")
def app_server(zoo_manifest_path, tmp_path_factory):
    """(url, ctx) of a launched app; work_dir and votes live in a temp folder."""
    from graft_ui.ui.app import build_app, launch_kwargs, make_context

    work = tmp_path_factory.mktemp("studio")
    ctx = make_context(zoo_manifest_path, device=os.environ.get("GRAFT_TEST_DEVICE", "cpu"), work_dir=work, votes=str(work / "votes.sqlite"),
                       zoo_manifest=zoo_manifest_path)
    app = build_app(ctx)
    kw = launch_kwargs(port=free_port(), quiet=True)
    app.launch(prevent_thread_lock=True, **kw)
    url = f"http://127.0.0.1:{kw['server_port']}/"
    yield url, ctx
    app.close()
    ctx.studio.close()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client

    return Client(app_server[0], verbose=False)
