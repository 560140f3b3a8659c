"""Style features and the style-controlled fit on hand-made battles; adaptive pairing weights."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from graft_ui.arena.pairing import UNIFORM, pair_weights
from graft_ui.arena.ratings import bradley_terry
from graft_ui.arena.style import FEATURES, answer_counts, standardise, style_controlled, style_differences


def test_answer_counts_tokens_and_markdown_outside_code():
    text = "# Title\n- one\n- **two**\n1. three\n```\n# not a header\n- not a list\n```\nok."
    tokens, headers, lists, bold = answer_counts(text)
    assert (headers, lists, bold) == (1, 3, 1)
    assert tokens == len("# Title - one - * * two * * 1 . three ` ` ` # not a header - not a list ` ` ` ok .".split())


def test_style_difference_is_a_minus_b_over_a_plus_b_plus_one():
    d = style_differences([{"answer_a": "one two three", "answer_b": "one"}])
    assert d.shape == (1, len(FEATURES))
    assert d[0, 0] == pytest.approx((3 - 1) / (3 + 1 + 1)) and np.all(d[0, 1:] == 0)
    z = standardise(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert z[:, 0] == pytest.approx([-1.0, 1.0]) and np.all(z[:, 1] == 0)  # constant column -> 0


def _battles(seed=0, n=3000):
    """Three equal variants; voters prefer the longer answer; 'long' always answers at length."""
    rng = random.Random(seed)
    votes = []
    for i in range(n):
        a, b = rng.sample(["long", "p", "q"], 2)
        la = 60 if a == "long" else rng.choice([10, 20, 40])
        lb = 60 if b == "long" else rng.choice([10, 20, 40])
        d = (la - lb) / (la + lb + 1)
        p = 1 / (1 + np.exp(-3.0 * d))  # pure length preference: true strengths equal
        votes.append({"turn_id": str(i), "variant_a": a, "variant_b": b, "vote": "a" if rng.random() < p else "b",
                      "answer_a": "w " * la, "answer_b": "w " * lb, "blind": True})
    return votes


def test_style_control_removes_a_pure_length_advantage():
    votes = _battles()
    raw = bradley_terry(votes)
    fit = style_controlled(votes, n_bootstrap=20, seed=0)
    ctrl = fit.ratings()
    assert raw["long"] - 1000 > 60  # long looks better raw
    assert abs(ctrl["long"] - 1000) < 0.4 * (raw["long"] - 1000)  # most of it goes to the length coefficient
    assert fit.coef[0] > 0.3 and fit.coef_low[0] > 0  # longer wins, clearly
    assert fit.ci_low[0] <= fit.rating[0] <= fit.ci_high[0]


def test_pairing_weights_favour_unsettled_pairs():
    votes = [{"turn_id": str(i), "variant_a": "a", "variant_b": "b", "vote": "ab"[i % 2], "blind": True}
             for i in range(200)]
    votes += [{"turn_id": f"c{i}", "variant_a": "a", "variant_b": "c", "vote": "ab"[i % 2], "blind": True}
              for i in range(4)]
    w = pair_weights(votes, ["a", "b", "c"])
    assert sum(w.values()) == pytest.approx(1.0)
    assert w[("a", "b")] < w[("a", "c")] < w[("b", "c")]  # settled < few votes < never played
    uni = pair_weights(votes, ["a", "b", "c"], mode=UNIFORM)
    assert list(uni.values()) == pytest.approx([1 / 3] * 3) and set(uni) == set(itertools.combinations("abc", 2))
    with pytest.raises(ValueError, match="pairing"):
        pair_weights(votes, ["a", "b"], mode="greedy")
