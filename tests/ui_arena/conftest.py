"""Arena/leaderboard UI tests: the real app (`python app.py`) on the ci zoo, in a subprocess.

A subprocess (not an in-process launch) so that the concurrency test's 20 client threads do not
share the server's interpreter, and so that the durability test can kill it with SIGKILL.
One app is shared by the session (`arena_app`); `launch_app` starts extra ones.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[2] / ".zoo"))

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    url: str
    votes: Path
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def start_app(manifest: str, folder: Path, env: dict | None = None) -> App:
    """`python app.py` on a free port with its vote store and work dir in `folder`; waits until it serves.
    `env`: extra environment (e.g. GRAFT_ARENA_RATE for the rate-limit test)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    votes = folder / "votes.sqlite"
    log = folder / "app.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, str(ROOT / "app.py"), "--manifest", manifest, "--port", str(port), "--device", "cpu",
           "--votes", str(votes), "--work-dir", str(folder / "work")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    app = App(f"http://127.0.0.1:{port}/", votes, proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not app.alive():
            raise RuntimeError(f"app exited with {proc.returncode} while starting:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(app.url + "config", timeout=5) as r:
                if r.status == 200:
                    return app
        except OSError:
            pass
        time.sleep(0.5)
    app.stop()
    raise RuntimeError(f"app did not serve within {START_TIMEOUT_S} s:\n{app.log_tail()}")


@pytest.fixture(scope="session")
def zoo_manifest_path() -> str:
    from graft_ui.zoo import ensure_zoo

    return str(ensure_zoo("ci") / "manifest.yaml")


@pytest.fixture(scope="session")
def arena_app(zoo_manifest_path, tmp_path_factory):
    app = start_app(zoo_manifest_path, tmp_path_factory.mktemp("arena-app"))
    yield app
    app.stop()


@pytest.fixture(scope="session")
def launch_app(zoo_manifest_path, tmp_path_factory):
    """A factory for extra apps (each with its own store); all are stopped at the end."""
    apps: list[App] = []

    def launch(env: dict | None = None) -> App:
        app = start_app(zoo_manifest_path, tmp_path_factory.mktemp("arena-app-extra"), env)
        apps.append(app)
        return app

    yield launch
    for app in apps:
        app.stop()


@pytest.fixture()
def open_store():
    """Open a vote store in this (test) process; closed after the test."""
    from graft_ui.arena.store import VoteStore

    stores = []

    def opener(path):
        s = VoteStore.open(path)
        stores.append(s)
        return s

    yield opener
    for s in stores:
        s.close()
