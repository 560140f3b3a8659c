"""Target sample selection: seeded, balanced for unions, clear errors."""

from __future__ import annotations

import pytest

from graft_ui.analysis.data import load_target, read_jsonl, select
from graft_ui.models.manifest import load_manifest


def test_selection_is_seeded_and_balanced(mini_manifest):
    m = load_manifest(mini_manifest)
    a = load_target("math", 3, manifest=m, seed=1)
    assert [s.id for s in a] == [s.id for s in load_target("math", 3, manifest=m, seed=1)]
    assert len(a) == 3 and all(s.domain == "math" for s in a)
    u = load_target("math+medical", 5, manifest=m, seed=0)
    assert [s.domain for s in u].count("math") == 3 and [s.domain for s in u].count("medical") == 2
    everything = load_target("math", 100, manifest=m)
    assert [s.id for s in everything] == [s.id for s in read_jsonl(m.dataset("math").eval)]
    assert everything[0].root.endswith("data/math")


def test_errors_name_the_bad_value(mini_manifest, tmp_path):
    m = load_manifest(mini_manifest)
    with pytest.raises(FileNotFoundError, match="'finance'"):
        load_target("finance", 2, manifest=m)
    with pytest.raises(ValueError, match="k=0"):
        select([], 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_jsonl(bad)
