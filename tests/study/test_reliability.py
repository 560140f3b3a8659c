"""Split-half reliability of kept_min (graft_ui.study.reliability): hand-checkable pieces and
synthetic studies whose answer is known."""

import numpy as np
import pytest

from graft_ui.study.reliability import spearman_brown, spearman_rho, split_half_reliability


def _study(true_kept, n_items, seed=0):
    """Fusions of experts a<i>/b<i> (domains math/code) whose fused accuracy is `kept` x the expert's 0.8,
    items drawn as Bernoulli outcomes: the ground truth varies between pairs exactly as `true_kept`."""
    rng = np.random.default_rng(seed)
    draw = lambda p: "".join("1" if x else "0" for x in rng.random(n_items) < p)  # noqa: E731
    singles, fusions = {}, []
    for i, k in enumerate(true_kept):
        a, b = f"a{i}", f"b{i}"
        singles[a], singles[b] = {"math": draw(0.8)}, {"code": draw(0.8)}
        fusions.append({"a": a, "b": b, "domain_a": "math", "domain_b": "code",
                        "correct": {"math": draw(0.8 * k), "code": [int(c) for c in draw(0.8 * k)]}})
    return fusions, singles


def test_spearman_brown_and_rho_by_hand():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.48, 6) == pytest.approx(6 * 0.48 / (1 + 5 * 0.48))
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank, as scipy's spearmanr does
    from scipy.stats import spearmanr

    x, y = [1, 2, 2, 3, 5, 5], [2, 1, 4, 4, 6, 3]
    assert spearman_rho(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman_rho([1, 1, 1], [1, 2, 3]) is None and spearman_rho([1, 2], [1, 2]) is None


def test_reliability_is_high_when_pairs_differ_and_low_when_they_do_not():
    varied, singles = _study(np.linspace(0.2, 1.0, 30), n_items=400)
    r = split_half_reliability(varied, singles, seed=0)
    assert r["reliability"] > 0.9 and r["n_fusions"] == 30 and r["items"] == {"math": 400, "code": 400}
    same, singles = _study([0.7] * 30, n_items=400)  # no true difference: halves agree by chance only
    assert abs(split_half_reliability(same, singles, seed=0)["reliability"]) < 0.5
    # more items, more reliable (Spearman-Brown's direction), for a modest spread of true kept_min
    few = split_half_reliability(*_study(np.linspace(0.6, 0.9, 30), n_items=40, seed=1), seed=0)["reliability"]
    many = split_half_reliability(*_study(np.linspace(0.6, 0.9, 30), n_items=800, seed=1), seed=0)["reliability"]
    assert many > few + 0.2


def test_reliability_is_seeded_and_checks_item_counts():
    fusions, singles = _study(np.linspace(0.3, 1.0, 12), n_items=60)
    assert split_half_reliability(fusions, singles, seed=3) == split_half_reliability(fusions, singles, seed=3)
    fusions[0]["correct"]["math"] = fusions[0]["correct"]["math"][:50]
    with pytest.raises(ValueError, match=r"has 60 items of 'math', another fusion 50"):
        split_half_reliability(fusions, singles)
    with pytest.raises(ValueError, match="splits=0"):
        split_half_reliability(fusions, singles, splits=0)


def test_runner_collects_items_from_the_cache_and_reports_reliability(tmp_path):
    """The study's per-item correctness goes cache -> items.json form -> reliability per kind and
    method -> study.md, and pieces cached without items are left out."""
    from graft_ui.models.manifest import ModelEntry
    from graft_ui.study.pairs import Pair
    from graft_ui.study.report import reliability_markdown
    from graft_ui.study.runner import collect_items, items_reliability
    from graft_ui.study.worker import Cache, write_json

    fusions, singles = _study(np.linspace(0.3, 1.0, 6), n_items=100)
    cache = Cache(tmp_path)
    experts = {}
    for name, items in singles.items():
        experts[name] = ModelEntry(name, path=f"/x/{name}", kind="lora", domain=next(iter(items)))
        write_json(cache.single(name), {"expert": name, "accuracy": {}, "correct": items})
    pairs = [Pair(experts[f["a"]], experts[f["b"]], "unrelated") for f in fusions]
    for p, f in zip(pairs, fusions):
        write_json(cache.fused(p.name, "ties"), {"pair": p.name, "variant": "ties", "accuracy": {},
                                                 "correct": f["correct"]})
        write_json(cache.fused(p.name, "graft"), {"pair": p.name, "variant": "graft", "accuracy": {}})  # no items
    items = collect_items(pairs, ["ties", "graft"], cache)
    assert len(items["fusions"]) == 6 and {f["variant"] for f in items["fusions"]} == {"ties"}
    assert items["fusions"][0]["domain_a"] == "math" and items["singles"]["a0"] == singles["a0"]
    rel = items_reliability(items)
    assert set(rel) == {"lora"} and set(rel["lora"]) == {"ties"}
    assert rel["lora"]["ties"] == split_half_reliability(fusions, singles)
    text = "\n".join(reliability_markdown({"reliability": rel}))
    assert "Split-half reliability" in text and "| lora | ties | " in text and "math 100, code 100" in text
    assert reliability_markdown({}) == []
