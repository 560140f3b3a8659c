"""Plotly figures for the Leaderboard tab (no gradio here): win fractions, battle counts, ratings.

Every figure sets an explicit height (gr.Plot otherwise collapses or stretches it) that
grows with the number of variants. An empty leaderboard gives a blank figure that says so.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from graft_ui.arena.ratings import MIN_BATTLES, Leaderboard


def _height(k: int) -> int:
    return int(min(900, max(360, 140 + 44 * k)))


def _empty(title: str, message: str = "No blind votes yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 16})
    fig.update_layout(title=title, height=360, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _heatmap(lb: Leaderboard, z: np.ndarray, text: list[list[str]], title: str, colorbar: str, **trace) -> go.Figure:
    names = list(lb.variants)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            colorbar={"title": {"text": colorbar}},
            hoverongaps=False,
            **trace,
        )
    )
    k = len(names)
    fig.update_layout(
        title=title,
        height=_height(k),
        margin={"l": 20, "r": 20, "t": 100, "b": 20},  # title above the top axis labels
        xaxis={"title": {"text": "opponent"}, "side": "top", "tickangle": -30},
        # best variant at the top, as in the table
        yaxis={"title": {"text": "variant"}, "autorange": "reversed"},
    )
    return fig


def win_fraction_figure(lb: Leaderboard) -> go.Figure:
    """Row variant's share of wins against the column variant (ties and both_bad count half)."""
    title = "Win fraction (row vs column, blind votes)"
    if not lb.standings:
        return _empty(title)
    z = lb.win_fraction
    counts = lb.counts
    text = [
        ["" if counts[i, j] == 0 else f"{z[i, j]:.0%}" for j in range(z.shape[1])]
        for i in range(z.shape[0])
    ]
    return _heatmap(lb, z, text, title, "win share", zmin=0.0, zmax=1.0, colorscale="RdBu",
                    hovertemplate="%{y} vs %{x}: %{z:.1%}<extra></extra>")


def battle_count_figure(lb: Leaderboard) -> go.Figure:
    """Number of blind battles between each pair."""
    title = "Battles per pair (blind votes)"
    if not lb.standings:
        return _empty(title)
    counts = lb.counts.astype(float)
    z = np.where(counts > 0, counts, np.nan)  # blank cells for pairs that never met
    text = [["" if c == 0 else str(int(c)) for c in row] for row in lb.counts]
    top = max(1, int(lb.counts.max()))
    fig = _heatmap(lb, z, text, title, "battles", zmin=0, zmax=top, colorscale="Blues",
                   hovertemplate="%{y} vs %{x}: %{z:d} battles<extra></extra>")
    # counts are whole numbers: whole-number ticks only (0, 1, 2 ... or a coarser integer step)
    fig.update_traces(colorbar={"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(top / 5)),
                                "tickformat": "d"})
    return fig


def rating_figure(lb: Leaderboard) -> go.Figure:
    """Ratings with their bootstrap intervals, best first."""
    title = f"Bradley-Terry rating, {lb.level:.0%} bootstrap interval"
    if not lb.standings:
        return _empty(title)
    s = sorted(lb.standings, key=lambda x: x.provisional)  # rated first, provisional below them
    fig = go.Figure()
    rated = [x for x in s if not x.provisional]
    if rated:
        fig.add_trace(go.Scatter(
            x=[x.rating for x in rated], y=[x.variant for x in rated], mode="markers", name="rated",
            marker={"size": 10, "color": "#047857"},
            error_x={"type": "data", "symmetric": False, "array": [x.ci_high - x.rating for x in rated],
                     "arrayminus": [x.rating - x.ci_low for x in rated]},
            customdata=[[x.ci_low, x.ci_high, x.battles] for x in rated],
            hovertemplate="%{y}: %{x:.0f} [%{customdata[0]:.0f}, %{customdata[1]:.0f}], %{customdata[2]} battles<extra></extra>",
        ))
    few = [x for x in s if x.provisional]
    if few:  # no interval: with so few battles it would look precise (even zero-width) and mean nothing
        fig.add_trace(go.Scatter(
            x=[x.rating for x in few], y=[x.variant for x in few], mode="markers",
            name=f"provisional (under {MIN_BATTLES} battles)",
            marker={"size": 10, "color": "#94a3b8", "symbol": "circle-open", "line": {"width": 2}},
            customdata=[[x.battles] for x in few],
            hovertemplate=(f"%{{y}}: %{{x:.0f}}, provisional: %{{customdata[0]}} of {MIN_BATTLES} battles"
                           "<extra></extra>"),
        ))
    fig.update_layout(
        title=title,
        height=int(min(700, max(300, 120 + 36 * len(s)))),
        margin={"l": 20, "r": 20, "t": 60, "b": 40},
        xaxis={"title": {"text": "rating (1000 = average; +400 = 10:1 odds)"}},
        yaxis={"autorange": "reversed"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def agreement_figure(rows: list[dict], rho: dict[str, float]) -> go.Figure:
    """Arena rating against held-out accuracy, one marker series per domain (human vs automatic)."""
    title = "People vs the benchmark: rating against held-out accuracy"
    if not rows:
        return _empty(title, "No variant has both blind votes and a held-out accuracy yet")
    fig = go.Figure()
    for domain in dict.fromkeys(r["domain"] for r in rows):
        pts = [r for r in rows if r["domain"] == domain]
        label = f"{domain} (ρ = {rho[domain]:+.2f})" if domain in rho else domain
        fig.add_trace(go.Scatter(x=[r["accuracy"] for r in pts], y=[r["rating"] for r in pts], mode="markers+text",
                                 text=[r["variant"] for r in pts], textposition="top center", name=label))
    fig.update_layout(title=title, height=420, xaxis={"title": {"text": "held-out accuracy"}},
                      yaxis={"title": {"text": "arena rating"}})
    return fig
