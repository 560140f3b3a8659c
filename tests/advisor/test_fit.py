"""The advisor's maths on data small enough to check by hand."""

import math

import pytest

from graft_ui.advisor.fit import fit_ridge, heldout_metrics, loo_predictions


def test_ordinary_least_squares_recovers_a_line_exactly():
    X, y = [[0.0], [1.0], [2.0], [4.0]], [2.0, 5.0, 8.0, 14.0]  # y = 2 + 3x
    m = fit_ridge(X, y, ["x"], lam=0.0)
    assert m.predict([3.0]) == pytest.approx(11.0)
    loo = loo_predictions(X, y, ["x"], lam=0.0)
    assert loo == pytest.approx(y)  # a line is predicted exactly from any three of its points
    h = heldout_metrics(loo, y)
    assert h["rmse"] == pytest.approx(0.0, abs=1e-9) and h["rho"] == pytest.approx(1.0) and h["n"] == 4


def test_ridge_by_hand():
    # x = 0, 1, 2 -> mean 1, population sd sqrt(2/3); y = 0, 1, 5 -> mean 2; sum z^2 = n = 3
    # b = sum z (y - ybar) / (n + lam) = (5 / sd) / 4;  prediction at x = 2: 2 + b / sd = 2 + 5 / (4 * 2/3) = 3.875
    m = fit_ridge([[0.0], [1.0], [2.0]], [0.0, 1.0, 5.0], ["x"], lam=1.0)
    assert m.intercept == pytest.approx(2.0) and m.sd[0] == pytest.approx(math.sqrt(2 / 3))
    assert m.predict([2.0]) == pytest.approx(3.875)


def test_leave_one_out_by_hand():
    # without (2, 5): y = x -> 2 (error -3); without (0, 0): y = 4x - 3 -> -3 (error -3);
    # without (1, 1): y = 2.5x -> 2.5 (error +1.5)
    X, y = [[0.0], [1.0], [2.0]], [0.0, 1.0, 5.0]
    loo = loo_predictions(X, y, ["x"], lam=0.0)
    assert loo == pytest.approx([-3.0, 2.5, 2.0])
    h = heldout_metrics(loo, y)
    assert h["rmse"] == pytest.approx(math.sqrt((9 + 2.25 + 9) / 3)) and h["mae"] == pytest.approx(2.5)


def test_a_constant_signal_contributes_nothing():
    X, y = [[0.0, 7.0], [1.0, 7.0], [2.0, 7.0]], [0.0, 1.0, 5.0]
    a = fit_ridge(X, y, ["x", "c"], lam=1.0)
    b = fit_ridge([[r[0]] for r in X], y, ["x"], lam=1.0)
    assert a.coef[1] == 0.0 and a.predict([2.0, 7.0]) == pytest.approx(b.predict([2.0]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="do not match"):
        fit_ridge([[1.0], [2.0]], [1.0], ["x"])
    with pytest.raises(ValueError, match="finite"):
        fit_ridge([[1.0], [float("nan")]], [1.0, 2.0], ["x"])
    with pytest.raises(ValueError, match="lambda"):
        fit_ridge([[1.0], [2.0]], [1.0, 2.0], ["x"], lam=-1)
    with pytest.raises(ValueError, match="at least 3"):
        loo_predictions([[1.0], [2.0]], [1.0, 2.0], ["x"])
    with pytest.raises(ValueError, match="signals"):
        fit_ridge([[1.0], [2.0]], [1.0, 2.0], ["x"]).predict([1.0, 2.0])
