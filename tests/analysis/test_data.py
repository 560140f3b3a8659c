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


def test_train_split_for_calibration(mini_manifest, tmp_path, caplog):
    """Calibration reads a domain's train split (the eval split stays held out); no train split: eval, warned."""
    import yaml

    from graft_ui.analysis.calibrate import calibration_samples
    from graft_ui.recipe import Recipe

    d = yaml.safe_load(mini_manifest.read_text())
    root = mini_manifest.parent
    d["datasets"]["math"]["train"] = str(root / "data" / "medical" / "eval.jsonl")  # distinct ids stand in
    d["datasets"] = {k: {kk: str(root / v) for kk, v in ds.items()} for k, ds in d["datasets"].items()}
    d["base"]["path"] = str(root / "base")
    for e in d["experts"]:
        e["path"] = str(root / e["path"])
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(d))
    m = load_manifest(path)
    train_ids = {s.id for s in read_jsonl(m.dataset("math").train)}
    assert {s.id for s in load_target("math", 4, manifest=m, split="train")} <= train_ids
    assert {s.id for s in load_target("math", 4, manifest=m)}.isdisjoint(train_ids)  # analysis: eval split
    recipe = Recipe.from_dict({"method": "graft", "experts": [{"path": "math-lora"}, {"path": "medical-lora"}],
                               "calibrate": {"samples": 3, "dataset": "math"}})
    assert {s.id for s in calibration_samples(recipe, m)} <= train_ids
    with caplog.at_level("WARNING"):
        fallback = load_target("medical", 2, manifest=m, split="train")
    assert all(s.domain == "medical" for s in fallback) and "no train split" in caplog.text
    with pytest.raises(ValueError, match="split='test'"):
        load_target("math", 2, manifest=m, split="test")
