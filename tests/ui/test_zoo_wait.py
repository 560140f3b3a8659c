"""The app on a zoo still being built (no browser): a stand-in model set, waiting tabs, a failed build shown."""

from __future__ import annotations

import pytest


@pytest.fixture
def pending_ctx(tmp_path, monkeypatch):
    from graft_ui.ui.app import make_context
    from graft_ui.zoo.background import ZooBuild

    monkeypatch.setenv("GRAFT_ZOO_DIR", str(tmp_path / "zoo"))
    build = ZooBuild("ci")
    build.progress.write({"state": "building", "pid": 0, "stage": "experts", "steps": 60, "total_steps": 120,
                          "experts_done": 3, "experts_total": 8, "eta_s": 40})
    return make_context(None, device="cpu", work_dir=tmp_path / "work", zoo_build=build, zoo_manifest=str(build.manifest))


def test_the_app_builds_on_a_stand_in_while_the_zoo_is_missing(pending_ctx):
    from graft_ui.ui import zoo_wait
    from graft_ui.ui.app import build_app

    ctx = pending_ctx
    assert zoo_wait.waiting(ctx) and ctx.studio.manifest.experts == ()
    assert ctx.studio.chat_names() == [zoo_wait.STAND_IN]  # not "base": the zoo's defaults win when it comes
    build_app(ctx)
    waiting_tabs = [name for name, note, body in ctx.pending_zoo.parts if note.visible and not body.visible]
    assert waiting_tabs == list(zoo_wait.WAITS)
    assert str(ctx.pending_zoo.build.path) in {str(r) for r in ctx.studio.roots.roots}  # the zoo may be loaded


def test_progress_and_failure_texts(pending_ctx):
    from graft_ui.ui import zoo_wait

    assert pending_ctx.pending_zoo.build.status()["stage"] == "experts"  # the builder's snapshot, as written
    failed = zoo_wait.banner_html({"state": "failed", "error": "RuntimeError: out of memory"}, True)
    assert "could not be built" in failed and "out of memory" in failed and "keeps serving" in failed
    assert "out of memory" in zoo_wait.note_text("chat", {"state": "failed", "error": "RuntimeError: out of memory"})
    live = zoo_wait.banner_html({"state": "building", "stage": "experts", "steps": 60, "total_steps": 120,
                                 "experts_done": 3, "experts_total": 8, "eta_s": 40}, True)
    assert 'value="50"' in live and "experts: 3 of 8 trained" in live and "about 40 s left" in live
    assert zoo_wait.banner_html({"state": "ready"}, False) == ""
