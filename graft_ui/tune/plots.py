"""The tuner's Pareto figure: each trial's dev accuracy on domain A (x) vs domain B (y).

Trials are dots (colour = trial number, hover = its values), the Pareto front (no other trial
is at least as good on both and better on one) is a line, the defaults (trial 0) a diamond,
the best trial on dev a ringed point, and each expert a star. With one dev domain the x axis
is the trial number instead; with more than two, the first two are plotted.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from graft_ui.tune.tuner import values_text


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximising both), ordered by x."""
    front = [i for i, (x, y) in enumerate(points)
             if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def pareto_figure(trials: Sequence[Mapping], domains: Sequence[str], experts_dev: Mapping[str, Mapping] | None = None,
                  *, best: int | None = None, title: str = "Tuning on dev data") -> go.Figure:
    ok = [t for t in trials if t.get("mean") is not None]
    two = len(domains) >= 2
    xd, yd = (domains[0], domains[1]) if two else ("trial", domains[0] if domains else "")

    def xy(t) -> tuple[float, float]:
        return (t["dev"][xd], t["dev"][yd]) if two else (float(t["number"]), t["dev"][yd])

    fig = go.Figure()
    pts = [xy(t) for t in ok]
    fig.add_trace(go.Scatter(
        x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name="trials",
        marker=dict(size=10, color=[t["number"] for t in ok], colorscale="Viridis", showscale=bool(ok),
                    colorbar=dict(title="trial")),
        hovertext=[f"trial {t['number']}: mean {t['mean']:.1f}%<br>{values_text(t['values'])}" for t in ok],
        hoverinfo="text"))
    if two and pts:
        front = pareto_front(pts)
        fig.add_trace(go.Scatter(x=[pts[i][0] for i in front], y=[pts[i][1] for i in front], mode="lines",
                                 name="Pareto front", line=dict(color="#888", dash="dot"), hoverinfo="skip"))
    marks = [(t, "defaults", dict(symbol="diamond", size=16, color="#d62728")) for t in ok if t.get("default")]
    marks += [(t, f"best (trial {t['number']})", dict(symbol="circle-open", size=22, color="#111", line=dict(width=3)))
              for t in ok if best is not None and t["number"] == best]
    for t, name, marker in marks:
        x, y = xy(t)
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", name=name, marker=marker,
                                 hovertext=[f"{name}: {values_text(t['values'])}"], hoverinfo="text"))
    if two:
        for name, acc in (experts_dev or {}).items():
            if xd in acc and yd in acc:
                fig.add_trace(go.Scatter(x=[acc[xd]], y=[acc[yd]], mode="markers+text", name=name, text=[name],
                                         textposition="top center", marker=dict(symbol="star", size=16),
                                         hovertext=[f"expert {name}"], hoverinfo="text"))
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10), font=dict(size=13),
                      xaxis_title=f"{xd} dev accuracy %" if two else "trial",
                      yaxis_title=f"{yd} dev accuracy %", legend=dict(orientation="h", y=-0.2))
    return fig
