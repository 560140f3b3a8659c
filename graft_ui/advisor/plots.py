"""The pair heatmap of a forecast (plotly): experts x experts, colour = predicted gain, hover = signals."""

from __future__ import annotations

import plotly.graph_objects as go


def pair_heatmap(fc, *, height: int | None = None) -> go.Figure:
    """Symmetric matrix over the forecast's experts; the diagonal is empty (an expert is not a pair)."""
    names = list(dict.fromkeys([n for r in fc.rows for n in (r.a, r.b)]))
    idx = {n: i for i, n in enumerate(names)}
    z = [[None] * len(names) for _ in names]
    text = [[""] * len(names) for _ in names]
    hover = [["—"] * len(names) for _ in names]
    for r in fc.rows:
        measured = "" if r.measured_gain is None else f"<br>measured by the study: {r.measured_gain:+.1f}"
        extra = "<br>(extrapolated: the experts' own domains are " + "+".join(r.domains) + ")" if r.extrapolated else ""
        h = (f"<b>{r.a} + {r.b}</b><br>predicted gain {r.predicted_gain:+.1f} ± {r.error:.1f} points"
             f"<br>compatibility {r.compatibility:.3f}<br>task-vector cosine {r.tv_cosine:.3f}"
             f"<br>stronger expert {r.stronger}: {r.best_single:.1f}%<br>predicted accuracy {r.predicted_accuracy:.1f}%"
             f"{measured}{extra}")
        for i, j in ((idx[r.a], idx[r.b]), (idx[r.b], idx[r.a])):
            z[i][j], text[i][j], hover[i][j] = r.predicted_gain, f"{r.predicted_gain:+.1f}", h
    lim = max([abs(r.predicted_gain) for r in fc.rows] + [1.0])
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", hovertext=hover,
                               hoverinfo="text", colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                               colorbar=dict(title="pred. gain")))
    fig.update_layout(title=f"Predicted Graft gain on {'+'.join(fc.target)} ({fc.kind} pairs; hover: compatibility)",
                      height=height or max(320, 60 * len(names) + 140), margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(autorange="reversed"), font=dict(size=13))
    return fig
