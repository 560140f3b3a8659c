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
