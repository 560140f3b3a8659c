"""The report's figures (reusing the analysis and arena plots) and the merge's per-module statistics.

Figures are plotly; `figure_html` turns one into a `<div>` plus a `<script>` that draws it
with the plotly.js inlined once in the page, at a fixed width that fits an A4 page, so the
report looks the same on screen and printed. Figure JSON is escaped so that no string
from a model, dataset or vote can close the script.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

FIG_WIDTH = 700  # px: an A4 page at 12 mm margins is ~705 CSS px wide
PREFERRED_STATS = ("kept", "mask_kept", "nonzero")  # what a baseline's map shows first, when it varies
CONFIG = {"displaylogo": False, "responsive": False, "modeBarButtonsToRemove": ["sendDataToCloud"]}


def _sized(fig, height: int | None = None):
    fig.update_layout(width=FIG_WIDTH, autosize=False)
    if height is not None:
        fig.update_layout(height=height)
    return fig


def _last_step(stats: Any) -> Any:
    """Many-expert fusions record a list of steps per module; the last one is the final fusion."""
    if isinstance(stats, list) and stats and isinstance(stats[-1], Mapping):
        return stats[-1]
    return stats


def module_values(gates: Mapping[str, Any], experts: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """Per module, every numeric statistic of gates.json; a per-expert list becomes one value
    per expert (`kept (math-lora)`) plus its mean under the list's own name."""
    out: dict[str, dict[str, float]] = {}
    for module, stats in (gates.get("modules") or {}).items():
        stats = _last_step(stats)
        if not isinstance(stats, Mapping):
            continue
        rec: dict[str, float] = {}
        for key, value in stats.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                rec[key] = float(value)
            elif isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in value):
                rec[key] = float(sum(value) / len(value))
                for i, v in enumerate(value):
                    who = experts[i] if len(value) == len(experts) else f"#{i + 1}"
                    rec[f"{key} ({who})"] = float(v)
        if rec:
            out[module[: -len(".weight")] if module.endswith(".weight") else module] = rec
    return out


def statistics_table(values: Mapping[str, Mapping[str, float]]) -> tuple[list[dict], dict[str, float]]:
    """(rows {statistic, mean, min, max, modules} for statistics that vary over modules,
    {statistic: value} for those that are the same in every module)."""
    keys = list(dict.fromkeys(k for rec in values.values() for k in rec))
    rows, constant = [], {}
    for key in keys:
        xs = [rec[key] for rec in values.values() if key in rec]
        lo, hi = min(xs), max(xs)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            constant[key] = lo
        else:
            rows.append({"statistic": key, "mean": sum(xs) / len(xs), "min": lo, "max": hi, "modules": len(xs)})
    return rows, constant


def map_statistic(rows: Sequence[Mapping]) -> str | None:
    """The statistic a baseline's per-module map shows: a preferred one that varies, else the first that varies."""
    varying = [r["statistic"] for r in rows]
    return next((k for k in PREFERRED_STATS if k in varying), varying[0] if varying else None)


def gate_figure(data) -> Any:
    """Graft: the gate maps (w_glob, mean w_b); another method: a map of its main per-module statistic."""
    from graft_ui.analysis.modules import parse_name
    from graft_ui.analysis.plots import gate_maps, sensitivity_heatmap

    if not data.gates:
        return None
    if data.recipe.method == "graft":
        try:
            return _sized(gate_maps(data.gates, title=f"Graft gates — {data.name}"))
        except ValueError:
            return None
    values = {m: v for m, v in module_values(data.gates, [e.name for e in data.experts]).items()
              if parse_name(m) is not None}
    key = map_statistic(statistics_table(values)[0]) if values else None
    if key is None:
        return None
    values = {m: v for m, v in values.items() if key in v}
    return _sized(sensitivity_heatmap(values, value=key, title=f"{data.recipe.method}: {key} per module — {data.name}"))


def analysis_figures(data) -> dict[str, Any]:
    """Compatibility bars (experts, pairs) and one sensitivity heatmap per expert, on the target data."""
    from graft_ui.analysis.plots import compatibility_bars, sensitivity_heatmap

    res = data.analysis
    if res is None:
        return {}
    figs = {"compatibility": _sized(compatibility_bars(
        res, res.threshold, title=f"Compatibility on {res.dataset} (K={res.k})"))}
    if res.pairs:
        figs["pairs"] = _sized(compatibility_bars({f"{p['a']} + {p['b']}": p["score"] for p in res.pairs},
                                                  res.threshold, title=f"Pair scores on {res.dataset}"))
    for e in res.experts.values():
        figs[f"heatmap-{e.name}"] = _sized(sensitivity_heatmap(e, title=f"Sensitivity ρ′ — {e.name} on {res.dataset}"))
    return figs


def leaderboard_figure(lb) -> Any:
    from graft_ui.arena.plots import rating_figure

    return _sized(rating_figure(lb)) if lb is not None and lb.standings else None


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no '<', '>' or '&' outside escapes)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def figure_html(fig, div_id: str) -> str:
    """A div and the script drawing `fig` into it (plotly.js must be loaded earlier in the page)."""
    spec = json.loads(fig.to_json())
    height = int(fig.layout.height or 450)
    return (f'<div class="plotwrap"><div class="plot" id="{div_id}" style="width:{FIG_WIDTH}px;height:{height}px">'
            f'</div></div>\n<script>Plotly.newPlot({_script_json(div_id)}, {_script_json(spec.get("data", []))}, '
            f'{_script_json(spec.get("layout", {}))}, {_script_json(CONFIG)});</script>')


def plotly_js() -> str:
    """The installed plotly package's plotly.min.js, to inline (the report never fetches anything)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()
