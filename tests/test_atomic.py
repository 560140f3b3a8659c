"""graft_ui/atomic.py: temp folders carry a marker, leftovers of dead writers are cleaned, an
interrupted overwrite is undone (the state of every kill point of publish_folder, built by hand)."""

from __future__ import annotations

import subprocess
import sys

from graft_ui.atomic import INCOMPLETE, publish_folder, recover_folder, temp_folder


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def folder(path, text):
    path.mkdir()
    (path / "weights").write_text(text)
    return path


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_temp_folder_is_marked_until_published(tmp_path):
    out = tmp_path / "out"
    tmp = temp_folder(out)
    assert (tmp / INCOMPLETE).is_file()
    (tmp / "weights").write_text("new")
    publish_folder(tmp, out)
    assert sorted(p.name for p in out.iterdir()) == ["weights"] and leftovers(tmp_path) == []


def test_a_dead_writers_temp_folder_is_swept(tmp_path):
    out, pid = tmp_path / "out", dead_pid()
    folder(tmp_path / f"out.tmp-{pid}", "half")
    recover_folder(out)
    assert leftovers(tmp_path) == [] and not out.exists()


def test_kill_between_the_two_renames_restores_the_old_output(tmp_path):
    out, pid = tmp_path / "out", dead_pid()
    folder(tmp_path / f".out.old-{pid}", "old")  # old moved aside, new not yet renamed in
    folder(tmp_path / f"out.tmp-{pid}", "new")
    temp_folder(out)  # the next run's temp folder recovers first
    assert (out / "weights").read_text() == "old"
    assert leftovers(tmp_path) == [f"out.tmp-{__import__('os').getpid()}"]


def test_kill_after_the_final_rename_keeps_the_new_output(tmp_path):
    out, pid = tmp_path / "out", dead_pid()
    folder(out, "new")
    folder(tmp_path / f".out.old-{pid}", "old")  # rmtree of the old one was cut short
    recover_folder(out)
    assert (out / "weights").read_text() == "new" and leftovers(tmp_path) == []


def test_a_live_writers_folders_are_left_alone(tmp_path):
    out = tmp_path / "out"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        folder(tmp_path / f"out.tmp-{live.pid}", "busy")
        recover_folder(out)
        assert leftovers(tmp_path) == [f"out.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()
