"""Real servers for the remote-backend tests (no mocks): Hugging Face `transformers serve` on the
CPU (the transformers[serving] extra) answering the ci zoo's full checkpoints by folder path, and
tests/remote/broken_server.py for the failures a healthy server cannot be asked for.

`transformers serve` loads any local checkpoint named in a request's `model` field, so one server
answers the zoo base, math-full, and `chatty` (a copy of the base whose generation_config asks for
at least 300 new tokens: a stream long enough to stop, or to kill the server in the middle of).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ui.conftest import free_port

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 120


def wait_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not come up in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def start_transformers_serve(log: Path) -> tuple[str, subprocess.Popen]:
    """`transformers serve` on a free port; returns (base URL …/v1, process)."""
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    cmd = [str(cli), "serve", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_up(f"http://127.0.0.1:{port}/health", proc, log)
    return f"http://127.0.0.1:{port}/v1", proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from graft_ui.zoo import ensure_zoo

    return Path(ensure_zoo("ci"))


@pytest.fixture(scope="session")
def chatty(zoo_dir, tmp_path_factory) -> str:
    """A copy of the zoo base that always answers at least 300 tokens (its own generation_config)."""
    out = tmp_path_factory.mktemp("chatty") / "chatty"
    shutil.copytree(zoo_dir / "base", out)
    cfg = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**cfg, "min_new_tokens": 300}))
    return str(out)


@pytest.fixture(scope="session")
def tserve(tmp_path_factory):
    """(endpoint, process) of a `transformers serve` shared by the session."""
    endpoint, proc = start_transformers_serve(tmp_path_factory.mktemp("tserve") / "server.log")
    yield endpoint
    stop(proc)


@pytest.fixture
def doomed_tserve(tmp_path):
    """A `transformers serve` of its own, for a test that kills it."""
    endpoint, proc = start_transformers_serve(tmp_path / "server.log")
    yield endpoint, proc
    stop(proc)


@pytest.fixture(scope="session")
def broken(tmp_path_factory):
    """Endpoint (…/v1) of tests/remote/broken_server.py."""
    port = free_port()
    log = tmp_path_factory.mktemp("broken") / "server.log"
    proc = subprocess.Popen([sys.executable, str(HERE / "broken_server.py"), str(port)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_up(f"http://127.0.0.1:{port}/health", proc, log)
    yield f"http://127.0.0.1:{port}/v1"
    stop(proc)


@pytest.fixture
def dead_endpoint() -> str:
    """An endpoint nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"
