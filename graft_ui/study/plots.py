"""The study's figures (plotly): predicted vs measured gain, and method x pair kept fraction.

Each figure is written as HTML and as PNG. PNG export uses kaleido when installed, else
the system's headless Chromium (`$CHROMIUM` or /usr/bin/chromium) screenshotting the
figure's own HTML page, so no extra package is needed; without either, HTML only.

The pages load plotly.js from one copy in the folder above the study's (`../plotly.min.js`):
studies written side by side (docs/results/<study>/) share it instead of holding 4.6 MB each,
and the pages still work offline.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import plotly.graph_objects as go

from graft_ui.analysis.plots import kaleido_available
from graft_ui.atomic import write_bytes

log = logging.getLogger(__name__)

KIND_COLOURS = {"lora": "#1f77b4", "full": "#d62728"}
REL_SYMBOLS = {"same": "circle", "related": "diamond", "unrelated": "x", "n/a": "square"}
PREDICTOR_LABELS = {
    "pair_score": "pair compatibility score",
    "two_factor_linear": "two-factor prediction (leave-one-out), points",
    "tv_cosine": "task-vector cosine",
}
TARGET_LABELS = {"gain_graft": "Graft gain", "gain_best": "best method's gain"}
SIZE = (900, 560)
PLOTLY_JS = "plotly.min.js"


def gain_scatter(rows: Sequence[Mapping], predictor: str, target: str = "gain_graft",
                 stats: Mapping | None = None) -> go.Figure:
    """One point per pair: predictor (x) vs measured gain (y); colour = kind, symbol = relatedness."""
    fig = go.Figure()
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for rel in dict.fromkeys(r["relatedness"] for r in rows):
            pts = [r for r in rows if r["kind"] == kind and r["relatedness"] == rel
                   and r.get(predictor) is not None and r.get(target) is not None]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[r[predictor] for r in pts], y=[r[target] for r in pts], mode="markers",
                name=f"{kind} · {rel}", text=[r["pair"] for r in pts],
                marker={"color": KIND_COLOURS.get(kind, "#555"), "symbol": REL_SYMBOLS.get(rel, "circle"), "size": 11},
                hovertemplate="%{text}<br>x = %{x:.4f}<br>gain = %{y:+.1f}<extra></extra>"))
    if predictor == "two_factor_linear":  # predicted = measured reference line
        vals = [v for r in rows for v in (r.get(predictor), r.get(target)) if v is not None]
        if vals:
            lo, hi = min(vals), max(vals)
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured",
                                     line={"dash": "dot", "color": "#888"}))
    title = f"{PREDICTOR_LABELS.get(predictor, predictor)} vs measured {TARGET_LABELS.get(target, target)}"
    if stats and stats.get("rho") is not None:
        ci = (f", 95% CI [{stats['ci_lo']:+.2f}, {stats['ci_hi']:+.2f}]" if stats.get("ci_lo") is not None else "")
        title += f"<br><sup>Spearman ρ = {stats['rho']:+.2f} (p = {stats['p']:.3g}, n = {stats['n']}){ci}</sup>"
    fig.add_hline(y=0, line={"color": "#bbb", "width": 1})
    fig.update_layout(title=title, xaxis_title=PREDICTOR_LABELS.get(predictor, predictor),
                      yaxis_title="gain (points of mean accuracy)", width=SIZE[0], height=SIZE[1],
                      template="plotly_white", legend_title="kind · relatedness")
    return fig


def kept_heatmap(t1: Sequence[Mapping], kind: str) -> go.Figure:
    """Variants (rows) x pairs (columns) of kept_min, the weaker-kept expert's fraction of its own accuracy."""
    rows = [r for r in t1 if r["kind"] == kind]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cell = {(r["variant"], r["pair"]): r.get("kept_min") for r in rows}
    z = [[cell.get((v, p)) for p in pairs] for v in variants]
    text = [["—" if x is None else f"{x:.2f}" for x in line] for line in z]
    fig = go.Figure(go.Heatmap(z=z, x=pairs, y=variants, text=text, texttemplate="%{text}", zmin=0, zmax=1.2,
                               colorscale="RdYlGn", colorbar={"title": "kept"},
                               hovertemplate="%{y} on %{x}<br>kept_min = %{z:.2f}<extra></extra>"))
    fig.update_layout(title=f"Kept fraction (min over the pair's two experts) — {kind} pairs",
                      width=max(SIZE[0], 120 + 70 * len(pairs)), height=max(400, 160 + 34 * len(variants)),
                      template="plotly_white", xaxis={"tickangle": -35}, yaxis={"autorange": "reversed"})
    return fig


def study_figures(study: Mapping) -> dict[str, go.Figure]:
    figs: dict[str, go.Figure] = {}
    rows = study["pairs"]
    corr = study["correlations"]
    group = "all" if "all" in corr else next(iter(corr), None)
    for pred in ("pair_score", "two_factor_linear", "tv_cosine"):
        stats = corr[group]["gain_graft"][pred] if group else None
        figs[f"gain_vs_{pred}"] = gain_scatter(rows, pred, "gain_graft", stats)
    for kind in dict.fromkeys(r["kind"] for r in study["table1"]):
        figs[f"kept_{kind}"] = kept_heatmap(study["table1"], kind)
    return figs


def chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def shared_plotly_js(out: Path) -> str:
    """The src from which the pages in `out` load plotly.js: one copy in `out`'s parent folder,
    written when missing or from another plotly version; a copy of an older layout inside
    `out` is removed."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs().encode()
    dest = out.resolve().parent / PLOTLY_JS
    if not dest.is_file() or dest.stat().st_size != len(js) or dest.read_bytes() != js:
        write_bytes(dest, js, mode=0o644)
    (out / PLOTLY_JS).unlink(missing_ok=True)
    return f"../{PLOTLY_JS}"


def _png_chromium(fig: go.Figure, png: Path, browser: str, js_src: str) -> None:
    width, height = int(fig.layout.width or SIZE[0]), int(fig.layout.height or SIZE[1])
    page = png.with_name(f".{png.stem}.screenshot.html")
    # static plot, no mode bar, no body margin: the screenshot is the figure only
    body = fig.to_html(include_plotlyjs=js_src, full_html=False,
                       config={"staticPlot": True, "displayModeBar": False})
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>body{{margin:0}}</style></head>"
                    f"<body>{body}</body></html>")
    try:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={width},{height}", "--virtual-time-budget=8000",
                        f"--screenshot={png}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    finally:
        page.unlink(missing_ok=True)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot at {png}")


def save(figs: Mapping[str, go.Figure], out_dir: str | Path, *, png: bool = True) -> list[Path]:
    """HTML (loading the shared ../plotly.min.js, so pages work offline) and PNG for each figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js_src = shared_plotly_js(out)
    written = []
    use_kaleido = png and kaleido_available()
    browser = chromium() if png and not use_kaleido else None
    if png and not use_kaleido and browser is None:
        log.warning("neither kaleido nor chromium found: figures written as HTML only")
    for stem, fig in figs.items():
        html = out / f"{stem}.html"
        fig.write_html(html, include_plotlyjs=js_src)
        written.append(html)
        target = out / f"{stem}.png"
        if not png or not (use_kaleido or browser):
            target.unlink(missing_ok=True)  # a PNG of an earlier run would no longer match the HTML
            continue
        try:
            if use_kaleido:
                fig.write_image(target, scale=2)
            else:
                _png_chromium(fig, target, browser, js_src)
            written.append(target)
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            target.unlink(missing_ok=True)
            log.warning("PNG export of %s failed (%s); HTML only", stem, exc)
    return written
