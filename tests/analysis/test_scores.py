"""Scores: min-max normalisation, rho', compatibility, pair scores, threshold (paper eqs 12-14)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graft_ui.analysis import scores as S
from graft_ui.analysis.stats import ActivationStats, ModuleStats

L = "model.language_model.layers.{}.mlp.{}"


def stats(values, source="output", ids=("a", "b")):
    mods = {L.format(i, t): ModuleStats(name=L.format(i, t), mu=mu, s=s, v=v)
            for i, (t, (mu, s, v)) in enumerate(values.items())}
    return ActivationStats(source=source, eps=1e-3, k=2, modules=mods, sample_ids=list(ids))


def test_minmax():
    np.testing.assert_allclose(S.minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(S.minmax([5.0, 5.0]), [0.5, 0.5])  # constant: no information -> midpoint
    with pytest.raises(ValueError, match="non-finite"):
        S.minmax([1.0, float("nan")])


def test_rho_prime_and_compatibility_by_hand():
    st = stats({"up_proj": (1.0, 0.5, 4.0), "down_proj": (3.0, 0.1, 1.0), "gate_proj": (2.0, 0.3, 9.0)})
    sc = S.module_scores(st)
    up, down, gate = (sc[L.format(i, t)] for i, t in enumerate(("up_proj", "down_proj", "gate_proj")))
    # mu' = (0, 1, .5), s' = (1, 0, .5), v' = (3/8, 0, 1)
    assert (up["mu_n"], down["mu_n"], gate["mu_n"]) == pytest.approx((0.0, 1.0, 0.5))
    assert (up["s_n"], down["s_n"], gate["s_n"]) == pytest.approx((1.0, 0.0, 0.5))
    assert up["v_n"] == pytest.approx(3 / 8) and down["v_n"] == 0.0 and gate["v_n"] == 1.0
    assert up["rho_n"] == 0.0 and down["rho_n"] == 0.0 and gate["rho_n"] == pytest.approx(0.5 * 0.5 * 1.0)
    assert gate["rho"] == pytest.approx(2.0 * 0.7 * 3.0)  # eq 12 on raw values
    assert S.compatibility(st) == pytest.approx(0.25 / 3)


def test_pair_score_joint_normalisation():
    a = stats({"up_proj": (1.0, 0.2, 1.0), "down_proj": (2.0, 0.1, 4.0)})
    b = stats({"up_proj": (0.1, 0.6, 0.01), "down_proj": (0.2, 0.5, 0.04)})
    # jointly: mu (1, 2, .1, .2) -> ((.9/1.9), 1, 0, .1/1.9); s (.2,.1,.6,.5) -> (.2, 0, 1, .8); v -> (.99/3.99, 1, 0, .03/3.99)
    mu = np.array([0.9, 1.9, 0.0, 0.1]) / 1.9
    s = np.array([0.2, 0.0, 1.0, 0.8])
    v = np.array([0.99, 3.99, 0.0, 0.03]) / 3.99
    assert S.pair_score(a, b) == pytest.approx(float(np.mean(mu * (1 - s) * np.sqrt(v))))
    assert S.pair_score(a, b) == pytest.approx(S.pair_score(b, a))  # symmetric
    assert S.pair_score(a, a) == pytest.approx(S.compatibility(a))  # a pair of one expert is that expert
    # separate normalisation hides that b barely reacts; the joint score does not
    assert S.pair_score_mean(a, b) == pytest.approx(0.5 * (S.compatibility(a) + S.compatibility(b)))
    assert S.pair_score(a, b) < S.pair_score_mean(a, b)


def test_pair_score_refuses_mismatched_statistics():
    a = stats({"up_proj": (1.0, 0.2, 1.0)})
    with pytest.raises(ValueError, match="same kind"):
        S.pair_score(a, stats({"up_proj": (1.0, 0.2, 1.0)}, source="adapter"))
    with pytest.raises(ValueError, match="same target"):
        S.pair_score(a, stats({"up_proj": (1.0, 0.2, 1.0)}, ids=("c",)))


def test_threshold():
    assert S.acceptable(0.3, 0.2) and S.acceptable(0.2, 0.2) and not S.acceptable(0.19, 0.2)
    assert not math.isnan(S.DEFAULT_THRESHOLD)


def test_stats_json_round_trip():
    st = stats({"up_proj": (1.0, 0.2, 1.0), "down_proj": (2.0, 0.1, 4.0)})
    assert ActivationStats.from_dict(st.to_dict()).to_dict() == st.to_dict()
