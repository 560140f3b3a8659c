"""Bradley-Terry fit, bootstrap intervals, matrices, filters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graft_ui.arena import ratings as R
from graft_ui.arena.store import Vote

TRUE_THETA = {"v0": -0.8, "v1": -0.3, "v2": 0.0, "v3": 0.4, "v4": 0.9}  # log-strengths (nats)


def simulate(theta: dict, n: int, seed: int, tie_rate: float = 0.0) -> list[dict]:
    """Battles between uniformly drawn pairs, outcomes from the Bradley-Terry model."""
    rng = np.random.default_rng(seed)
    names = list(theta)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        if rng.random() < tie_rate:
            label = "tie" if rng.random() < 0.5 else "both_bad"
        else:
            label = "a" if rng.random() < 1 / (1 + math.exp(theta[b] - theta[a])) else "b"
        out.append({"variant_a": a, "variant_b": b, "vote": label, "blind": True})
    return out


def centred_truth(theta: dict) -> dict:
    mean = np.mean(list(theta.values()))
    return {k: R.BASE_RATING + R.SCALE * (v - mean) for k, v in theta.items()}


def test_recovers_known_strengths():
    votes = simulate(TRUE_THETA, 3000, seed=1)
    got = R.bradley_terry(votes)
    truth = centred_truth(TRUE_THETA)
    assert sorted(got, key=got.get) == list(TRUE_THETA)  # ordered like the truth
    assert np.mean(list(got.values())) == pytest.approx(R.BASE_RATING, abs=1e-6)
    for name in TRUE_THETA:  # ~4 standard errors (se ~ 27 points here)
        assert abs(got[name] - truth[name]) < 110, (name, got[name], truth[name])


def test_bootstrap_intervals_cover_the_truth_in_most_runs():
    theta = {k: TRUE_THETA[k] for k in ("v0", "v2", "v3", "v4")}
    truth = centred_truth(theta)
    covered = total = 0
    for run in range(20):
        votes = simulate(theta, 500, seed=100 + run)
        point = R.bradley_terry(votes)
        intervals = R.bootstrap(votes, n=100, seed=run)
        for name, (lo, hi) in intervals.items():
            assert lo < point[name] < hi
            covered += lo <= truth[name] <= hi
            total += 1
    assert covered / total >= 0.8, f"95% intervals covered the truth {covered}/{total} times"


def _irls_logistic(votes, names, ridge, iters=50):
    """Plain logistic regression (no intercept) on rows x = e_a - e_b, fitted by Newton/IRLS;
    a tie or both_bad is two half-weight rows (a wins, b wins)."""
    idx = {n: i for i, n in enumerate(names)}
    xs, ys, ws = [], [], []
    for v in votes:
        x = np.zeros(len(names))
        x[idx[v["variant_a"]]] = 1.0
        x[idx[v["variant_b"]]] = -1.0
        if v["vote"] in ("a", "b"):
            xs.append(x), ys.append(1.0 if v["vote"] == "a" else 0.0), ws.append(1.0)
        else:
            xs += [x, x]
            ys += [1.0, 0.0]
            ws += [0.5, 0.5]
    X, y, w = np.array(xs), np.array(ys), np.array(ws)
    beta = np.zeros(len(names))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ beta))
        grad = X.T @ (w * (p - y)) + ridge * beta
        hess = X.T @ (X * (w * p * (1 - p))[:, None]) + ridge * np.eye(len(names))
        beta -= np.linalg.solve(hess, grad)
    return beta


def test_agrees_with_logistic_regression_on_a_small_example():
    votes = [
        {"variant_a": a, "variant_b": b, "vote": o}
        for a, b, o in [
            ("x", "y", "a"), ("x", "y", "a"), ("y", "x", "a"), ("x", "z", "tie"), ("z", "x", "b"),
            ("y", "z", "both_bad"), ("z", "y", "a"), ("w", "x", "b"), ("w", "y", "a"), ("z", "w", "a"),
            ("w", "z", "tie"), ("x", "w", "a"), ("y", "w", "b"),
        ]
    ]
    for ridge in (R.DEFAULT_RIDGE, 0.5):
        battles = R.encode(votes)
        theta = R.fit_log_strengths(R._win_matrix(battles), ridge)
        beta = _irls_logistic(votes, battles.variants, ridge)
        np.testing.assert_allclose(theta, beta - beta.mean(), atol=1e-6)
        np.testing.assert_allclose(beta.mean(), 0.0, atol=1e-9)  # the ridge centres the fit


def test_two_variants_closed_form():
    votes = [{"variant_a": "x", "variant_b": "y", "vote": o} for o in "aaab"]
    got = R.bradley_terry(votes, ridge=1e-9)
    assert got["x"] - got["y"] == pytest.approx(400 * math.log10(3), abs=1e-3)  # 3:1 odds
    undefeated = R.bradley_terry([{"variant_a": "x", "variant_b": "y", "vote": "a"}] * 5)
    assert all(math.isfinite(r) for r in undefeated.values()) and undefeated["x"] > undefeated["y"]


def test_both_bad_is_a_tie_in_the_fit_but_its_own_label_in_counts():
    votes = simulate(TRUE_THETA, 400, seed=3, tie_rate=0.3)
    as_ties = [dict(v, vote="tie" if v["vote"] == "both_bad" else v["vote"]) for v in votes]
    assert R.bradley_terry(votes) == pytest.approx(R.bradley_terry(as_ties))
    lb = R.leaderboard(votes, n_bootstrap=20)
    n_both_bad = sum(v["vote"] == "both_bad" for v in votes)
    assert sum(s.both_bad for s in lb.standings) == 2 * n_both_bad and n_both_bad > 0
    for s in lb.standings:
        assert s.battles == s.wins + s.losses + s.ties + s.both_bad


def test_matrices_by_hand():
    votes = [
        {"variant_a": "x", "variant_b": "y", "vote": "a"},
        {"variant_a": "y", "variant_b": "x", "vote": "a"},
        {"variant_a": "x", "variant_b": "y", "vote": "tie"},
        {"variant_a": "x", "variant_b": "z", "vote": "a"},
    ]
    names, frac = R.win_fraction_matrix(votes)
    assert names == ("x", "y", "z")
    np.testing.assert_allclose(frac, [[np.nan, 0.5, 1.0], [0.5, np.nan, np.nan], [0.0, np.nan, np.nan]])
    names, counts = R.battle_counts(votes)
    np.testing.assert_array_equal(counts, [[0, 3, 1], [3, 0, 0], [1, 0, 0]])


def _vote(turn, a, b, label, **kw):
    return Vote(turn_id=turn, battle_id=turn, turn_index=0, created_at="2026-01-01T00:00:00+00:00",
                variant_a=a, variant_b=b, vote=label, prompt="p", answer_a="", answer_b="", **kw)


def test_leaderboard_only_blind_votes_and_domain_filters():
    votes = [
        _vote("1", "x", "y", "a", domain="math", expertise="math"),
        _vote("2", "x", "y", "a", domain="math", expertise="none"),
        _vote("3", "y", "z", "a", domain="code", expertise="math"),
        _vote("4", "z", "x", "a", domain="math", blind=False),  # named side-by-side: never counted
    ]
    lb = R.leaderboard(votes, n_bootstrap=30)
    assert lb.n_votes == 3 and lb.variants[0] == "x"
    assert sum(s.battles for s in lb.standings) == 6
    math_lb = R.leaderboard(votes, domain="math", n_bootstrap=30)
    assert set(math_lb.variants) == {"x", "y"} and math_lb.n_votes == 2
    expert_lb = R.leaderboard(votes, expertise="math", n_bootstrap=30)
    assert expert_lb.n_votes == 2 and set(expert_lb.variants) == {"x", "y", "z"}
    table = lb.table()
    assert list(table.columns) == list(R.TABLE_COLUMNS)
    assert table["rank"].tolist() == [1, 2, 3] and (table["ci_low"] <= table["rating"]).all()
    assert lb.counts.shape == lb.win_fraction.shape == (3, 3)
    assert (lb.counts == lb.counts.T).all()


def test_empty_leaderboard_and_reproducible_bootstrap():
    lb = R.leaderboard([], n_bootstrap=10)
    assert lb.standings == () and lb.table().empty
    votes = simulate(TRUE_THETA, 200, seed=9)
    assert R.bootstrap(votes, n=30, seed=4) == R.bootstrap(votes, n=30, seed=4)
    assert R.bootstrap(votes, n=30, seed=4) != R.bootstrap(votes, n=30, seed=5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="'left'"):
        R.bradley_terry([{"variant_a": "x", "variant_b": "y", "vote": "left"}])
    with pytest.raises(ValueError, match="n_bootstrap=0"):
        R.bootstrap([{"variant_a": "x", "variant_b": "y", "vote": "a"}], n=0)
    with pytest.raises(ValueError, match="ridge=0"):
        R.fit_log_strengths(np.zeros((2, 2)), ridge=0)


def test_few_battles_are_provisional_and_counts_use_whole_numbers():
    from graft_ui.arena.plots import battle_count_figure, rating_figure
    from graft_ui.ui.leaderboard import rows_of

    votes = [_vote(str(i), "x", "y", "a") for i in range(5)] + [_vote("t", "x", "z", "tie")]
    lb = R.leaderboard(votes, n_bootstrap=30)
    assert all(s.provisional for s in lb.standings) and R.MIN_BATTLES == 10
    rows = rows_of(lb)
    assert {r["rank"] for r in rows} == {"—"} and all("provisional" in r["rating"] for r in rows)
    assert not any(" – " in r["95% interval"] for r in rows)  # no (zero-width) interval for few battles
    assert [t.name for t in rating_figure(lb).data] == ["provisional (under 10 battles)"]
    bar = battle_count_figure(lb).data[0].colorbar
    assert bar.tickformat == "d" and bar.dtick == 1
