"""Figures of the analysis, plotly only (the UI shows them with gr.Plot; the CLI writes HTML/PNG).

- sensitivity heatmap: rows = layers (vision blocks V*, text layers L*), columns = module
  types, colour = rho_i' (or any per-module value); one per expert, or the difference of
  two experts;
- compatibility bars per expert (or per pair) with the threshold line;
- gate maps from a fusion's gates.json: w_glob per module and mean w_b per module;
- the score-vs-gain scatter of `correlate`.

Every figure has an explicit height and hover text with the raw numbers.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from graft_ui.analysis import gate_plots
from graft_ui.analysis.grid import fmt as _fmt
from graft_ui.analysis.grid import grid
from graft_ui.analysis.modules import parse_name

log = logging.getLogger(__name__)

ROW_PX = 26
MIN_HEIGHT = 320
FONT = dict(size=13)


def _modules_of(expert: Any) -> Mapping[str, Mapping[str, float]]:
    """Per-module value dicts from an ExpertAnalysis, its JSON dict, or a plain mapping."""
    if hasattr(expert, "modules") and not isinstance(expert, Mapping):
        return expert.modules
    if isinstance(expert, Mapping) and "modules" in expert and isinstance(expert["modules"], Mapping):
        return expert["modules"]
    return expert


def _height(rows: int) -> int:
    return max(MIN_HEIGHT, ROW_PX * rows + 170)


def sensitivity_heatmap(expert: Any, *, value: str = "rho_n", title: str | None = None) -> go.Figure:
    """Heatmap of one expert's per-module `value` (default rho_i')."""
    rows, cols, z, hover = grid(_modules_of(expert), value)
    name = getattr(expert, "name", None) or (expert.get("name") if isinstance(expert, Mapping) else None)
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, text=hover, hoverinfo="text", hovertemplate="%{text}<extra></extra>",
        colorscale="Viridis", zmin=0.0 if value.endswith("_n") else None, zmax=1.0 if value.endswith("_n") else None,
        colorbar=dict(title=dict(text=_label(value))), xgap=1, ygap=1,
    ))
    fig.update_layout(
        title=title or f"Sensitivity {_label(value)}" + (f" — {name}" if name else ""),
        xaxis=dict(title="module type", side="bottom", tickangle=-30), yaxis=dict(title="layer", autorange="reversed"),
        height=_height(len(rows)), font=FONT, margin=dict(l=70, r=30, t=60, b=90),
    )
    return fig


def sensitivity_difference(a: Any, b: Any, *, value: str = "rho_n", names: tuple[str, str] | None = None) -> go.Figure:
    """Heatmap of `value`(a) - `value`(b) per module (modules present in both), diverging colours around 0."""
    ma, mb = _modules_of(a), _modules_of(b)
    common = [m for m in ma if m in mb]
    if not common:
        raise ValueError("the two experts share no analysed module")
    diff = {m: {"diff": float(ma[m][value]) - float(mb[m][value]), f"{value} (A)": float(ma[m][value]),
                f"{value} (B)": float(mb[m][value])} for m in common}
    rows, cols, z, hover = grid(diff, "diff")
    na, nb = names or (getattr(a, "name", "A"), getattr(b, "name", "B"))
    lim = float(np.nanmax(np.abs(z))) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, text=hover, hoverinfo="text", hovertemplate="%{text}<extra></extra>",
        colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim, colorbar=dict(title=dict(text="A − B")), xgap=1, ygap=1,
    ))
    fig.update_layout(
        title=f"Sensitivity difference {_label(value)}: {na} − {nb}",
        xaxis=dict(title="module type", tickangle=-30), yaxis=dict(title="layer", autorange="reversed"),
        height=_height(len(rows)), font=FONT, margin=dict(l=70, r=30, t=60, b=90),
    )
    return fig


def _label(value: str) -> str:
    return {"rho_n": "ρ′", "rho": "ρ", "mu": "μ", "s": "s", "v": "v", "mu_n": "μ′", "s_n": "s′", "v_n": "v′"}.get(value, value)


def compatibility_bars(
    scores: Mapping[str, float] | Any, threshold: float, *, title: str = "Compatibility", hover: Mapping[str, str] | None = None
) -> go.Figure:
    """Bars of compatibility per expert (or per pair) with a dashed threshold line.

    `scores` is {label: score} or an AnalysisResult (its experts' compatibilities).
    """
    if hasattr(scores, "experts") and not isinstance(scores, Mapping):
        res = scores
        hover = hover or {n: f"kind={e.kind}, domain={e.domain}, source={e.stats.source}, K={e.stats.k}"
                          for n, e in res.experts.items()}
        scores = {n: e.compatibility for n, e in res.experts.items()}
    if not scores:
        raise ValueError("no scores to draw")
    labels = list(scores)
    vals = [float(scores[n]) for n in labels]
    ok = [v >= threshold for v in vals]
    text = [f"{n}<br>score = {v:.4f}<br>{'acceptable' if o else 'below threshold'} ({threshold:g})"
            + (f"<br>{hover[n]}" if hover and n in hover else "") for n, v, o in zip(labels, vals, ok)]
    fig = go.Figure(go.Bar(
        x=labels, y=vals, text=[f"{v:.3f}" for v in vals], textposition="outside",
        marker_color=["#2a9d8f" if o else "#c9c9c9" for o in ok],
        hovertext=text, hoverinfo="text",
    ))
    fig.add_hline(y=threshold, line_dash="dash", line_color="#d62828",
                  annotation_text=f"threshold {threshold:g}", annotation_position="top left")
    top = max(vals + [threshold])
    fig.update_layout(
        title=title, yaxis=dict(title="compatibility (mean ρ′)", range=[0, max(0.05, top * 1.2)]),
        xaxis=dict(title="", tickangle=-30), height=420, font=FONT, margin=dict(l=70, r=30, t=60, b=110),
        showlegend=False,
    )
    return fig


def load_gates(gates: str | Path | Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per module {w_glob, wb_mean, ...} from a gates.json path or its parsed content.

    Accepts `{module: stats}` or `{"modules": {module: stats}}`; the mean row weight of
    the base expert is read from `wb_mean` (or `wb` as a list, averaged). Module names
    may end in `.weight`, which is dropped. Many-expert fusions may hold a list of steps
    per module; the last step (the final fusion) is used.
    """
    if not isinstance(gates, Mapping):
        path = Path(gates)
        if path.is_dir():
            path = path / "gates.json"
        if not path.is_file():
            raise FileNotFoundError(f"gates file {str(path)!r} does not exist")
        gates = json.loads(path.read_text())
    mods = gates.get("modules", gates)
    out: dict[str, dict[str, float]] = {}
    for name, st in mods.items():
        if isinstance(st, Sequence) and not isinstance(st, (str, bytes)) and st and isinstance(st[-1], Mapping):
            st = st[-1]
        if not isinstance(st, Mapping):
            continue
        rec: dict[str, float] = {}
        for k, v in st.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rec[k] = float(v)
        if "wb_mean" not in rec and isinstance(st.get("wb"), Sequence):
            rec["wb_mean"] = float(np.mean(st["wb"]))
        clean = name[: -len(".weight")] if name.endswith(".weight") else name
        if "w_glob" in rec or "wb_mean" in rec:
            out[clean] = rec
    if not out:
        raise ValueError("gates.json holds no module with w_glob or wb_mean")
    return out


def gate_maps(gates: str | Path | Mapping[str, Any], *, title: str = "Graft gates") -> go.Figure:
    """Two heatmaps side by side, each with its own colour bar: w_glob and mean w_b per module
    (rows = layers). Drawn by graft_ui.analysis.gate_plots."""
    return gate_plots.gate_maps(gates, title=title)


def _parsable(name: str) -> bool:
    return parse_name(name) is not None


def correlation_scatter(rows: Sequence[Mapping[str, Any]], *, x: str = "score", y: str = "gain",
                        rho: float | None = None, p: float | None = None, title: str | None = None) -> go.Figure:
    """Pair score vs fusion gain, one marker per pair, labelled by the pair."""
    if not rows:
        raise ValueError("no pairs to draw")
    xs = [float(r[x]) for r in rows]
    ys = [float(r[y]) for r in rows]
    labels = [f"{r['a']} + {r['b']}" for r in rows]
    hover = [f"{lab}<br>{x} = {xv:.4f}<br>{y} = {yv:+.4f}"
             + "".join(f"<br>{k} = {_fmt(v)}" for k, v in r.items() if k not in ("a", "b", x, y) and isinstance(v, (int, float)))
             for lab, xv, yv, r in zip(labels, xs, ys, rows)]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=labels, textposition="top center",
                               hovertext=hover, hoverinfo="text", marker=dict(size=11, color="#264653")))
    fig.add_hline(y=0.0, line_dash="dot", line_color="#888")
    stat = ""
    if rho is not None:
        stat = f"Spearman ρ = {rho:.3f}" + (f", p = {p:.3g}" if p is not None and not math.isnan(p) else "") + f", n = {len(rows)}"
    fig.update_layout(
        title=(title or "Compatibility vs fusion gain") + (f"<br><sub>{stat}</sub>" if stat else ""),
        xaxis=dict(title=f"pair {x}"), yaxis=dict(title=f"fusion {y} (fused − better single expert)"),
        height=480, font=FONT, margin=dict(l=80, r=30, t=80, b=60), showlegend=False,
    )
    return fig


def analysis_figures(result: Any, *, value: str = "rho_n") -> dict[str, go.Figure]:
    """All figures of an AnalysisResult: one heatmap per expert, the difference of the first two, the bars."""
    figs: dict[str, go.Figure] = {}
    experts = list(result.experts.values())
    for e in experts:
        figs[f"heatmap-{e.name}"] = sensitivity_heatmap(e, value=value, title=f"Sensitivity ρ′ — {e.name} on {result.dataset}")
    # the difference view needs comparable activations: the first two experts of one kind and source
    same = next(((a, b) for i, a in enumerate(experts) for b in experts[i + 1:]
                 if a.kind == b.kind and a.stats.source == b.stats.source), None)
    if same is not None:
        a, b = same
        figs[f"diff-{a.name}-vs-{b.name}"] = sensitivity_difference(a, b, value=value, names=(a.name, b.name))
    figs["compatibility"] = compatibility_bars(result, result.threshold, title=f"Compatibility on {result.dataset} (K={result.k})")
    if result.pairs:
        figs["pairs"] = compatibility_bars({f"{p['a']} + {p['b']}": p["score"] for p in result.pairs}, result.threshold,
                                           title=f"Pair scores on {result.dataset}")
    return figs


def kaleido_available() -> bool:
    try:
        import kaleido  # noqa: F401
    except Exception:
        return False
    return True


def save_figures(figs: Mapping[str, go.Figure], out_dir: str | Path, *, png: bool | None = None) -> list[Path]:
    """Write each figure as HTML, and as PNG when kaleido is installed (png=None: if available)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = kaleido_available() if png is None else png
    written = []
    for stem, fig in figs.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        html = out_dir / f"{safe}.html"
        # "directory": one plotly.min.js beside the pages, so they work offline
        fig.write_html(html, include_plotlyjs="directory")
        written.append(html)
        if png:
            try:
                p = out_dir / f"{safe}.png"
                fig.write_image(p, scale=2)
                written.append(p)
            except Exception as exc:  # kaleido needs a browser; a figure is still written as HTML
                log.warning("PNG export of %s failed (%s); HTML only", stem, exc)
                png = False
    if not png:
        log.info("kaleido not available: figures written as HTML only")
    return written
