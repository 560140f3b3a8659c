"""What a fusion did, drawn from its gates.json (plotly only): Graft's gate maps, each with its
own labelled colour scale, a one-line reading guide, and for the baselines (no gates) their own
per-module statistics (kept fraction, non-zero entries, mask sizes, low-rank error).

    gate_maps(gates, title, experts)     Graft: w_glob and mean w_b per module, one scale each
    gate_guide(experts)                  the one line that says how to read gate_maps
    method_stats(gates)                  (figure or None, markdown) for any method's stats
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from graft_ui.analysis.grid import grid
from graft_ui.analysis.modules import parse_name

FONT = dict(size=13)
ROW_PX = 26
MIN_HEIGHT = 320
# Graft's panels: (key, subplot title, colour-bar title)
GATE_PANELS = (
    ("w_glob", "global gate w_glob", "w_glob<br>share of<br>expert 1"),
    ("wb_mean", "mean row weight w_b", "mean w_b<br>share of<br>expert 1"),
)
# the baselines' per-module numbers worth a map: (key, subplot title, colour-bar title)
STAT_PANELS = (
    ("kept", "kept fraction (mean over experts)", "kept"),
    ("nonzero", "non-zero after sign election", "non-zero"),
    ("mask_kept", "mask size (mean over experts)", "mask"),
    ("lowrank_rel_err", "low-rank error of the output", "rel. error"),
)


def _mean(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return float(np.mean(v))
    return None


def _modules(gates: str | Path | Mapping[str, Any]) -> tuple[dict, dict]:
    """(gates.json content, {module: stats of its last step}) for modules with a parsable name."""
    if not isinstance(gates, Mapping):
        path = Path(gates)
        path = path / "gates.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"gates file {str(path)!r} does not exist")
        gates = json.loads(path.read_text())
    out = {}
    for name, st in (gates.get("modules", gates) or {}).items():
        if isinstance(st, Sequence) and not isinstance(st, (str, bytes)) and st and isinstance(st[-1], Mapping):
            st = st[-1]
        clean = name[: -len(".weight")] if name.endswith(".weight") else name
        if isinstance(st, Mapping) and parse_name(clean) is not None:
            out[clean] = st
    return dict(gates), out


def _heatmaps(panels: Sequence[tuple[str, str, str, dict[str, float], tuple[float, float], str]],
              title: str) -> go.Figure:
    """One heatmap per panel side by side, each with its own colour bar beside it."""
    from plotly.subplots import make_subplots

    n = len(panels)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.22 if n > 1 else 0.1)
    nrows = 0
    for c, (key, _sub, bar, values, (lo, hi), scale) in enumerate(panels, 1):
        rows, cols, z, hover = grid(values, key)
        nrows = max(nrows, len(rows))
        axis = fig.layout["xaxis" if c == 1 else f"xaxis{c}"]
        fig.add_trace(go.Heatmap(
            z=z, x=cols, y=rows, text=hover, hoverinfo="text", hovertemplate="%{text}<extra></extra>",
            colorscale=scale, zmin=lo, zmax=hi, xgap=1, ygap=1, showscale=True,
            colorbar=dict(title=dict(text=bar, side="top"), x=axis.domain[1] + 0.01, xanchor="left", len=0.9,
                          thickness=12, tickformat=".2f"),
        ), row=1, col=c)
        fig.update_yaxes(autorange="reversed", title_text="layer" if c == 1 else None, row=1, col=c)
        fig.update_xaxes(tickangle=-30, row=1, col=c)
    fig.update_layout(title=title, height=max(MIN_HEIGHT, ROW_PX * nrows + 170), font=FONT,
                      margin=dict(l=60, r=40, t=80, b=80))
    return fig


def _around_half(values: Mapping[str, Mapping[str, float]], key: str) -> tuple[float, float]:
    """A scale centred on 0.5 (an even mix) just wide enough for the data, at least ±0.05."""
    z = [float(v[key]) for v in values.values()]
    half = max([0.05] + [abs(x - 0.5) for x in z if np.isfinite(x)])
    half = min(0.5, float(np.ceil(half * 100) / 100))
    return 0.5 - half, 0.5 + half


def gate_maps(gates: str | Path | Mapping[str, Any], *, title: str = "Graft gates") -> go.Figure:
    """Graft: w_glob and mean w_b per module (rows = layers), each map with its own colour bar
    centred on 0.5. Blue = the fused rows follow expert 1, red = expert 2."""
    _, mods = _modules(gates)
    panels = []
    for key, sub, bar in GATE_PANELS:
        values = {n: {key: float(st[key]), **{k: v for k, v in st.items() if isinstance(v, (int, float))}}
                  for n, st in mods.items() if _mean(st.get(key)) is not None}
        if key == "wb_mean" and not values:  # older files: the row weights as a list
            values = {n: {key: _mean(st["wb"])} for n, st in mods.items() if _mean(st.get("wb")) is not None}
        if values:
            panels.append((key, sub, bar, values, _around_half(values, key), "RdBu"))
    if not panels:
        raise ValueError("gates.json holds no module with w_glob or wb_mean to draw (language-model or vision-block "
                         "module names)")
    return _heatmaps(panels, title)


def gate_guide(experts: Sequence[str] = ()) -> str:
    """One line on how to read `gate_maps`."""
    first = f"expert 1 ({experts[0]})" if experts else "expert 1"
    second = f"expert 2 ({experts[-1]})" if len(experts) > 1 else "expert 2"
    return (f"How to read: one cell per module (row = layer, column = module type); **blue** = the fused weights "
            f"follow {first}, **red** = {second}, white = an even mix. Left: the global gate from the two weights' "
            f"entropy gap; right: the final per-row weight, averaged over the module's rows."
            + (" With three or more experts, expert 1 is everything fused before the last one." if len(experts) > 2
               else ""))


def method_stats(gates: str | Path | Mapping[str, Any], experts: Sequence[str] = ()) -> tuple[go.Figure | None, str]:
    """A baseline's own statistics: (per-module maps of the numbers it records, or None when it records
    none, and a markdown summary: mean per statistic, per expert where it has one value each)."""
    data, mods = _modules(gates)
    method = data.get("method", "this method")
    lines = []
    panels = []
    for key, sub, bar in STAT_PANELS:
        values = {n: {key: _mean(st[key])} for n, st in mods.items() if _mean(st.get(key)) is not None}
        if not values:
            continue
        z = [v[key] for v in values.values()]
        lo, hi = min(z), max(z)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.01, hi + 0.01
        panels.append((key, sub, bar, values, (lo, hi), "Viridis"))
        per = [st[key] for st in mods.values() if isinstance(st.get(key), Sequence)]
        if per and all(len(p) == len(per[0]) for p in per) and len(per[0]) > 1:
            names = list(experts) if len(experts) == len(per[0]) else [f"expert {i + 1}" for i in range(len(per[0]))]
            each = ", ".join(f"{nm} {np.mean([p[i] for p in per]):.1%}" for i, nm in enumerate(names))
            lines.append(f"- **{sub}**: {np.mean(z):.1%} on average ({each})")
        else:
            lines.append(f"- **{sub}**: {np.mean(z):.3g} on average, {min(z):.3g} to {max(z):.3g} across modules")
    scalars = {k: v for st in list(mods.values())[:1] for k, v in st.items()
               if k in ("lam", "density", "p", "coefficients")}
    if scalars:
        lines.append("- settings: " + ", ".join(f"{k} = {v}" for k, v in scalars.items()))
    head = f"**{method}** has no gates; its own statistics over {len(mods)} modules:"
    if not panels:
        head = (f"**{method}** has no gates and records no per-module statistic over its {len(mods)} modules: "
                "it combines the experts' weights with fixed coefficients.")
    fig = _heatmaps(panels, f"{method}: per-module statistics") if panels else None
    return fig, "\n".join([head] + lines)


def used_md(gates: str | Path | Mapping[str, Any]) -> str:
    """The per-layer value of each gradient or filtered parameter, as the merge used it
    (gates.json `used`): one line per parameter, the range over a layer's tensors."""
    from graft_ui.models.keys import language_layer

    _, mods = _modules(gates)
    table: dict[str, dict[int, list[float]]] = {}
    for name, st in mods.items():
        layer = language_layer(name)
        for key, v in (st.get("used") or {}).items():
            vals = [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, (int, float))]
            if layer is not None and vals:
                table.setdefault(key, {}).setdefault(layer, []).extend(vals)
    lines = []
    for key, by_layer in table.items():
        cells = []
        for layer in sorted(by_layer):
            lo, hi = min(by_layer[layer]), max(by_layer[layer])
            cells.append(f"{layer}: {lo:.3g}" + (f"–{hi:.3g}" if hi - lo > 1e-12 else ""))
        lines.append(f"- **{key}** used per layer: " + ", ".join(cells))
    return "\n".join(lines)


def curve_figure(points: Sequence[tuple[int, Any]], param: str) -> go.Figure:
    """A small line plot of a per-layer curve (the Fuse form's preview)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", name=param))
    fig.update_layout(height=220, margin=dict(l=40, r=10, t=30, b=30), title=f"{param} per layer",
                      xaxis_title="layer", yaxis_title=param)
    return fig


def fusion_view(gates_path: str | Path | None, method: str, experts: Sequence[str] = (),
                title: str = "") -> tuple[go.Figure | None, str]:
    """What to show for a fused variant: (Graft's gate maps, their reading guide) or, for the
    baselines, (their per-module statistics or None, a summary of them)."""
    if gates_path is None:
        return None, "This fusion left no gates.json: nothing to draw."
    try:
        if method == "graft":
            fig, guide = gate_maps(gates_path, title=title or "Graft gates"), gate_guide(experts)
        else:
            fig, guide = method_stats(gates_path, experts)
        used = used_md(gates_path)
        return fig, guide + ("\n\n" + used if used else "")
    except ValueError as exc:  # e.g. no module of a known layout in gates.json
        return None, f"Nothing to draw: {exc}."
