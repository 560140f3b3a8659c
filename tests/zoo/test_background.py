"""The background zoo builder's bookkeeping: progress counts, the lock, failures reported, not lost."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from graft_ui.zoo import background
from graft_ui.zoo.background import ZooBuild, run_builder
from graft_ui.zoo.progress import ProgressBar, ProgressFile, describe


class FakeBar:
    total = 100

    def __init__(self):
        self.n, self.postfix = 0, ""

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, s):
        self.postfix = s

    def close(self):
        pass


@pytest.fixture
def zoo_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_ZOO_DIR", str(tmp_path))
    return tmp_path


def test_progress_bar_counts_experts_per_design_and_forwards_to_the_bar():
    seen = []
    bar = FakeBar()
    pb = ProgressBar(bar, expert_steps=[10, 20], kinds=2, report=seen.append, profile="ci", every=0)
    pb.set_postfix_str("experts")
    for _ in range(10):  # design 0's LoRA is done; design 1 is halfway through its LoRA
        pb.task_steps(0, 1)
        pb.update(1)
    pb.task_steps(1, 10)
    pb.update(10)
    snap = pb.snapshot()
    assert bar.n == 20 and bar.postfix == "experts"
    assert (snap["experts_done"], snap["experts_total"], snap["steps"], snap["total_steps"]) == (1, 4, 20, 100)
    pb.task_steps(1, 35)  # design 1: LoRA (20) and full (20) both past their steps
    assert pb.experts_done() == 3
    assert seen[0]["stage"] == "experts" and seen[-1]["steps"] == 20
    assert pb.eta() is not None and pb.eta() >= 0  # a rate from this stage's steps
    line = describe(dict(snap, experts_done=3, eta_s=150))
    assert "stage 5 of 6: experts" in line and "experts: 3 of 4 trained" in line and "about 2 min left" in line


def test_a_builder_that_died_silently_shows_as_failed_naming_its_log(zoo_root):
    build = ZooBuild("ci")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    build.progress.write({"state": "building", "pid": int(dead.stdout), "stage": "base"})
    st = build.status()
    assert st["state"] == "failed" and str(build.log_file) in st["error"]
    assert not build.running()


def test_a_build_error_is_written_to_the_progress_file(zoo_root, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("the tokenizer could not be trained: no text")

    monkeypatch.setattr("graft_ui.zoo.build.build_zoo", boom)
    assert run_builder("ci") == 1
    st = ZooBuild("ci").status()
    assert st["state"] == "failed" and "ValueError: the tokenizer could not be trained" in st["error"]
    assert not (zoo_root / "ci").exists()


def test_one_builder_at_a_time(zoo_root, monkeypatch):
    """A second builder sees the lock held by a live, reporting builder and leaves without building."""
    build = ZooBuild("ci")
    monkeypatch.setattr("graft_ui.zoo.build.build_zoo", lambda *a, **k: pytest.fail("a second build started"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the "first builder"
    try:
        build.progress.write({"state": "building", "pid": other.pid, "stage": "base"})
        with open(build.lock_file, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            assert run_builder("ci") == 0
        assert json.loads(build.progress.path.read_text())["pid"] == other.pid  # its report is left alone
    finally:
        other.kill()
        other.wait()


def test_start_attaches_to_a_live_builder(zoo_root, monkeypatch):
    build = ZooBuild("ci")
    build.progress.write({"state": "building", "pid": os.getpid()})
    monkeypatch.setattr(background.subprocess, "Popen", lambda *a, **k: pytest.fail("started a second builder"))
    assert build.start() == os.getpid()


def test_progress_file_is_replaced_whole(tmp_path):
    pf = ProgressFile(tmp_path / "p.json")
    assert pf.read() is None
    pf.write({"state": "building", "steps": 3})
    pf.path.write_text("{not json")  # a torn file (not what write makes) reads as no report
    assert pf.read() is None
    pf.write({"state": "ready"})
    assert pf.read() == {"state": "ready"} and [p.name for p in tmp_path.iterdir()] == ["p.json"]
