"""pairstats: the pair benchmark, gain, kept, Spearman and its bootstrap interval."""

import pytest

from graft_ui.analysis.pairstats import bench, bootstrap_spearman, gain, kept, spearman


def test_bench_gain_kept():
    assert bench({"a": 10.0, "b": 30.0, "c": 99.0}, ["a", "b"]) == 20.0
    assert gain({"a": 40, "b": 40}, {"a": 80, "b": 0}, {"a": 0, "b": 60}, ["a", "b"]) == pytest.approx(0.0)
    assert kept(30.0, 60.0) == 0.5 and kept(5.0, 0.0) is None
    with pytest.raises(KeyError, match="'b'"):
        bench({"a": 1.0}, ["a", "b"])


def test_bootstrap_interval_is_seeded_and_brackets_rho():
    xs = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.8, 0.7, 0.6, 0.05]
    ys = [1.0, 3.0, 4.0, 8.0, 2.0, 5.0, 9.0, 6.0, 7.0, 0.0]
    rho = spearman(xs, ys)["rho"]
    a = bootstrap_spearman(xs, ys, resamples=300, seed=1)
    assert a == bootstrap_spearman(xs, ys, resamples=300, seed=1)
    assert a != bootstrap_spearman(xs, ys, resamples=300, seed=2)
    assert -1.0 <= a["lo"] < rho < a["hi"] <= 1.0
    assert bootstrap_spearman([1, 2], [1, 2])["lo"] is None
