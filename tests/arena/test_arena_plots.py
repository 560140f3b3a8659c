"""Leaderboard figures: explicit heights, heatmaps in standings order, an empty state."""

from __future__ import annotations

import numpy as np

from graft_ui.arena.plots import battle_count_figure, rating_figure, win_fraction_figure
from graft_ui.arena.ratings import leaderboard

VOTES = [
    {"variant_a": a, "variant_b": b, "vote": o, "blind": True}
    for a, b, o in [("x", "y", "a"), ("y", "x", "b"), ("x", "z", "tie"), ("y", "z", "a"), ("z", "y", "both_bad")]
]


def test_heatmaps_and_ratings_figure():
    lb = leaderboard(VOTES, n_bootstrap=20)
    for make in (win_fraction_figure, battle_count_figure, rating_figure):
        fig = make(lb)
        assert isinstance(fig.layout.height, int) and fig.layout.height >= 300
        fig.to_json()  # serialisable, as gr.Plot needs
    heat = win_fraction_figure(lb).data[0]
    assert heat.type == "heatmap" and list(heat.x) == list(lb.variants) == list(heat.y)
    np.testing.assert_allclose(np.array(heat.z, dtype=float), lb.win_fraction)
    counts = battle_count_figure(lb).data[0]
    assert np.nansum(np.array(counts.z, dtype=float)) == 2 * len(VOTES)


def test_empty_figures_say_so():
    lb = leaderboard([], n_bootstrap=5)
    for make in (win_fraction_figure, battle_count_figure, rating_figure):
        fig = make(lb)
        assert fig.layout.height == 360
        assert "No blind votes" in fig.layout.annotations[0].text
