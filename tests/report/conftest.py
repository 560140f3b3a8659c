"""One fused Graft variant of the ci zoo and its report, written by the command, shared by the
report tests (library, command and browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

VARIANT = "graft-report"
EVIL = '<img src=x onerror="alert(1)">'  # a vote's variant label: must reach the page escaped


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    from graft_ui.studio import Studio
    from graft_ui.zoo import ensure_zoo

    st = Studio.from_manifest(ensure_zoo("ci") / "manifest.yaml", device="cpu",
                              work_dir=tmp_path_factory.mktemp("report-studio"))
    st.fuse(st.build_recipe("graft", ["math-lora", "code-lora"]), VARIANT)
    yield st
    st.close()


@pytest.fixture(scope="session")
def votes_db(studio) -> str:
    """A vote store with a few blind battles among the zoo's models, the fused variant and EVIL."""
    from graft_ui.arena.store import open_store

    path = studio.work_dir / "votes.sqlite"
    battles = [(VARIANT, "base", "a"), (VARIANT, "math-lora", "a"), ("code-lora", VARIANT, "tie"),
               ("base", "math-lora", "b"), (EVIL, "base", "a"), ("code-lora", "base", "both_bad")]
    with open_store(str(path)) as store:
        for i, (a, b, vote) in enumerate(battles):
            store.record_vote(turn_id=f"t{i}", battle_id=f"b{i}", variant_a=a, variant_b=b, vote=vote,
                              prompt="What is 2 + 3?", answer_a="5", answer_b="6", domain="math")
    return str(path)


@pytest.fixture(scope="session")
def report_file(studio, votes_db, tmp_path_factory) -> Path:
    """The report written by `python -m graft_ui report` (in-process), by variant name."""
    from graft_ui.commands import main

    out = tmp_path_factory.mktemp("report") / "report.html"
    rc = main(["report", "--variant", VARIANT, "--work-dir", str(studio.work_dir), "--votes", votes_db,
               "--out", str(out), "-k", "4", "--limit", "4", "--answers", "2", "--device", "cpu"])
    assert rc == 0 and out.is_file()
    return out
