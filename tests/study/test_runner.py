"""Planning: only what the cache lacks is scheduled; failed fusions are retried."""

import pytest

from graft_ui.models.manifest import DatasetEntry, Manifest, ModelEntry
from graft_ui.study.pairs import enumerate_pairs
from graft_ui.study.runner import StudyConfig, plan
from graft_ui.study.worker import Cache, write_json


def test_plan_schedules_only_missing_or_failed_pieces(tmp_path):
    experts = (ModelEntry("m", "x/m", "lora", "math"), ModelEntry("c", "x/c", "lora", "code"))
    manifest = Manifest(base=ModelEntry("base", "x/b"), experts=experts,
                        datasets={d: DatasetEntry(eval=f"{d}.jsonl") for d in ("math", "code")})
    pairs = enumerate_pairs(manifest, ("lora",), is_zoo=True)
    cache = Cache(tmp_path)
    cfg = StudyConfig()
    tasks, cached = plan(manifest, pairs, ["graft", "ties"], cache, cfg, {})
    assert cached == 0 and [t["type"] for t in tasks] == ["single", "single", "pair"]
    assert tasks[2]["variants"] == ["graft", "ties"] and tasks[2]["compat"] and tasks[2]["weights"]

    for e in ("m", "c"):
        write_json(cache.single(e), {"accuracy": {"math": 1.0, "code": 2.0}})
    write_json(cache.compat("m+c"), {"score": 0.2})
    write_json(cache.weights("m+c"), {"cosine": 0.1})
    write_json(cache.fused("m+c", "graft"), {"accuracy": {"math": 1.0, "code": 1.0}})
    write_json(cache.fused("m+c", "ties"), {"error": "OSError: disk full"})
    tasks, cached = plan(manifest, pairs, ["graft", "ties"], cache, cfg, {})
    assert cached == 1 and len(tasks) == 1
    assert tasks[0]["variants"] == ["ties"] and not tasks[0]["compat"] and not tasks[0]["weights"]

    write_json(cache.fused("m+c", "ties"), {"accuracy": {"math": 1.0, "code": 1.0}})
    assert plan(manifest, pairs, ["graft", "ties"], cache, cfg, {}) == ([], 2)
    # a config that changes results gets its own cache key
    assert StudyConfig(limit=4).key(None, "m.yaml") != cfg.key(None, "m.yaml")
    assert StudyConfig(device="cuda").key(None, "m.yaml") == cfg.key(None, "m.yaml")


def test_plan_for_a_cluster_makes_one_task_per_fusion(tmp_path):
    """split=True (Ray): a pair's compatibility + weights is one task, each fusion + evaluation another."""
    experts = (ModelEntry("m", "x/m", "lora", "math"), ModelEntry("c", "x/c", "lora", "code"))
    manifest = Manifest(base=ModelEntry("base", "x/b"), experts=experts,
                        datasets={d: DatasetEntry(eval=f"{d}.jsonl") for d in ("math", "code")})
    pairs = enumerate_pairs(manifest, ("lora",), is_zoo=True)
    cache = Cache(tmp_path)
    tasks, cached = plan(manifest, pairs, ["graft", "ties"], cache, StudyConfig(), {}, split=True)
    assert [(t["type"], t.get("variants"), t.get("compat")) for t in tasks] == [
        ("single", None, None), ("single", None, None), ("pair", [], True), ("pair", ["graft"], False),
        ("pair", ["ties"], False)]
    write_json(cache.compat("m+c"), {"score": 0.2})
    write_json(cache.weights("m+c"), {"cosine": 0.1})
    write_json(cache.fused("m+c", "graft"), {"accuracy": {"math": 1.0, "code": 1.0}})
    tasks, cached = plan(manifest, pairs, ["graft", "ties"], cache, StudyConfig(), {}, split=True)
    assert cached == 1 and [t.get("variants") for t in tasks if t["type"] == "pair"] == [["ties"]]


def test_detached_pieces_are_stored_inside_the_cache_only(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.store({"fused/m+c/graft.json": {"accuracy": {"math": 1.0}}})
    assert Cache.read(cache.fused("m+c", "graft")) == {"accuracy": {"math": 1.0}}
    with pytest.raises(ValueError, match="outside the cache"):
        cache.store({"../escape.json": {}})
