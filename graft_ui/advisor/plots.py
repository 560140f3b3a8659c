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


BEST = "best method"


def kept_heatmap(plan: dict, method: str = BEST, *, height: int | None = None) -> go.Figure:
    """Experts x experts, colour = predicted kept_min of the pair with `method` (BEST: each pair's best
    method by predicted accuracy, named in the cell); hover: kept per expert, ±, the preview's agreement."""
    rows = plan["pairs"]
    chosen: dict[tuple, dict] = {}
    for r in rows:  # best first
        key = tuple(r["experts"])
        if (method == BEST or r["method"] == method) and key not in chosen:
            chosen[key] = r
    names = list(dict.fromkeys(n for r in rows for n in r["experts"]))
    idx = {n: i for i, n in enumerate(names)}
    z = [[None] * len(names) for _ in names]
    text = [[""] * len(names) for _ in names]
    hover = [["—"] * len(names) for _ in names]
    for (a, b), r in chosen.items():
        pv, kp = r["preview"], r["predicted_kept"]
        measured = "" if r.get("measured_kept_min") is None else f"<br>measured by the study: {r['measured_kept_min']:.2f}"
        h = (f"<b>{a} + {b}</b> with {r['method']}<br>predicted kept_min {r['predicted_kept_min']:.2f} ± {r['error']:.2f}"
             f"<br>{a} keeps {kp[a]:.2f}, {b} keeps {kp[b]:.2f}<br>predicted accuracy {r['predicted_accuracy']:.1f}%"
             f"<br>preview agreement: {a} {pv['agree_a']:.2f}, {b} {pv['agree_b']:.2f}"
             f"<br>preview KL: {pv['kl_a']:.3f} / {pv['kl_b']:.3f}{measured}"
             + (f"<br>(extrapolated: own domains {'+'.join(r['domains'])})" if r["extrapolated"] else ""))
        cell = f"{r['predicted_kept_min']:.2f}±{r['error']:.2f}" + (f"<br>{r['method']}" if method == BEST else "")
        for i, j in ((idx[a], idx[b]), (idx[b], idx[a])):
            z[i][j], text[i][j], hover[i][j] = r["predicted_kept_min"], cell, h
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", hovertext=hover,
                               hoverinfo="text", colorscale="RdYlGn", zmin=0, zmax=1,
                               colorbar=dict(title="pred. kept_min")))
    weak = " · WEAK forecast" if plan.get("weak") else ""
    fig.update_layout(title=f"Predicted kept fraction ({method}) on {'+'.join(plan['target'])}, {plan['kind']} pairs{weak}",
                      height=height or max(320, 60 * len(names) + 140), margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(autorange="reversed"), font=dict(size=13))
    return fig
