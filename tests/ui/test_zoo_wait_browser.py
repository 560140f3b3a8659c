"""The page first, the zoo after: `app.py` on an empty zoo folder serves at once, shows the build's
progress, and its tabs come alive when the zoo is in, without a reload.

End to end on the real path: app.py starts the background builder (graft_ui/zoo/background.py),
which builds the ci zoo into a temp GRAFT_ZOO_DIR. The test holds the zoo's build lock first, so
the page is seen while the build waits whatever the machine's speed; it then lets the builder go
and watches its stages and the tabs opening.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from _browser import ARTIFACTS, MARKS, app_page

ROOT = Path(__file__).resolve().parents[2]

pytestmark = MARKS


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> float:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        assert proc.poll() is None, f"app.py exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def test_page_serves_during_the_build_and_tabs_come_alive(tmp_path):
    from playwright.sync_api import expect

    from graft_ui.zoo import is_built

    zoo_root = tmp_path / "zoo"
    zoo_root.mkdir()
    env = dict(os.environ, GRAFT_ZOO_DIR=str(zoo_root), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               TOKENIZERS_PARALLELISM="false")
    lock = open(zoo_root / ".ci.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # the builder waits for it: the page is seen before any training
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--zoo-profile", "ci", "--port", str(port), "--device", "cpu",
                             "--work-dir", str(tmp_path / "work"), "--votes", str(tmp_path / "votes.sqlite")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, proc, 180)
        with app_page(url) as pg:
            banner = pg.locator("#gs-zoo-banner")
            expect(banner).to_contain_text("waiting for another build of this zoo", timeout=60_000)
            pg.get_by_role("tab", name=re.compile("Chat")).click()
            expect(pg.locator("#gs-wait-chat")).to_contain_text("Waiting for the demo zoo")
            expect(pg.locator("#gs-body-chat")).to_be_hidden()
            expect(pg.locator("#gs-header-box")).to_contain_text("building")

            fcntl.flock(lock, fcntl.LOCK_UN)  # let the builder go: it reports its stages
            expect(banner).to_contain_text(re.compile(r"stage \d of 6"), timeout=120_000)
            expect(pg.locator("#gs-wait-chat")).to_contain_text(re.compile(r"stage \d of 6"))
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / "zoo-building.png"), full_page=True)

            # the zoo is in: the same page (no reload) shows the chat tab with the zoo's models
            expect(pg.locator("#gs-body-chat")).to_be_visible(timeout=300_000)
            expect(pg.locator("#gs-wait-chat")).to_be_hidden()
            expect(banner).not_to_contain_text("Building")
            expect(pg.locator("#gs-header-box")).to_contain_text("graft-demo-zoo-ci")
            expect(pg.locator("#gs-body-chat")).to_contain_text("lora")  # default columns: base + two experts
            pg.get_by_role("tab", name=re.compile("Experts")).click()
            expect(pg.locator("#gs-models-table")).to_contain_text("math-lora")
            pg.screenshot(path=str(ARTIFACTS / "zoo-ready.png"), full_page=True)
        assert is_built(zoo_root / "ci")
        assert proc.poll() is None  # still serving
    finally:
        lock.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _stop_builder(zoo_root)


def _stop_builder(zoo_root: Path) -> None:
    """The builder outlives the app by design (a restart attaches to it): stop it if a failure left it running."""
    from graft_ui.zoo.background import ZooBuild

    old = os.environ.get("GRAFT_ZOO_DIR")
    os.environ["GRAFT_ZOO_DIR"] = str(zoo_root)
    try:
        ZooBuild("ci").stop()
    finally:
        if old is None:
            os.environ.pop("GRAFT_ZOO_DIR")
        else:
            os.environ["GRAFT_ZOO_DIR"] = old
