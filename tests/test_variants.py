"""Fused variants on disk (graft_ui/variants.py, Studio): restored after a restart, unique default
names, overwriting only when asked, removal remembered; the analysis refuses an empty expert list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graft_ui.variants import next_free_name

os.environ.setdefault("GRAFT_ZOO_DIR", str(Path(__file__).resolve().parents[1] / ".zoo"))


@pytest.fixture(scope="module")
def manifest_path() -> str:
    from graft_ui.zoo import ensure_zoo

    return str(ensure_zoo("ci") / "manifest.yaml")


def studio(manifest_path, work):
    from graft_ui.studio import Studio

    return Studio.from_manifest(manifest_path, device="cpu", work_dir=work)


def test_variants_survive_a_restart_with_their_summary(manifest_path, tmp_path):
    s = studio(manifest_path, tmp_path)
    name = s.next_variant_name("graft")
    assert name == "graft-1"
    v = s.fuse(s.build_recipe("graft", ["math-lora", "code-lora"]), name)
    ties = s.fuse(s.build_recipe("ties", ["math-lora", "code-lora"]), s.next_variant_name("ties"))
    with pytest.raises(ValueError, match="tick \"Overwrite\""):
        s.fuse(s.build_recipe("graft", ["math-lora", "code-lora"]), name)
    s.close()

    again = studio(manifest_path, tmp_path)  # a restart on the same work folder
    assert list(again.variants) == [name, ties.name]
    restored = again.variants[name]
    assert restored.restored and restored.kind == "lora" and restored.recipe.method == "graft"
    assert restored.summary["modules_fused"] == v.summary["modules_fused"]
    assert name in again.chat_names() and again.next_variant_name("graft") == "graft-2"
    again.fuse(again.build_recipe("graft", ["math-lora", "code-lora"]), name, overwrite=True)  # explicit
    again.remove_variant(ties.name)  # removed: the folder stays, a restart does not bring it back
    assert ties.out_dir.is_dir()
    again.close()
    third = studio(manifest_path, tmp_path)
    assert list(third.variants) == [name]
    # another base: its variants are not offered
    third.set_base(str(Path(manifest_path).parent / "experts" / "math-full"))
    assert third.variants == {}
    third.close()


def test_next_free_name_skips_taken_names_and_folders(tmp_path):
    (tmp_path / "graft-2").mkdir()
    assert next_free_name("graft", {"graft-1"}, tmp_path) == "graft-3"


def test_messages_are_sentences(manifest_path, tmp_path):
    s = studio(manifest_path, tmp_path)
    with pytest.raises(ValueError) as err:
        s.build_recipe("graft", ["math-lora", "code-full"])
    assert "[(" not in str(err.value) and "math-lora (LoRA), code-full (full)" in str(err.value)
    with pytest.raises(ValueError, match="none is selected"):
        s.analyze("math", [], k=1)
    s.close()
