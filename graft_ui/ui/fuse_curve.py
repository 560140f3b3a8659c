"""The Fuse form's per-layer curve: one numeric parameter given as a few knots, interpolated
over the fused layers as mergekit's gradients are (merging/schedule.py), optionally only on
tensors whose name contains a filter, previewed as a small plot."""

from __future__ import annotations

import gradio as gr

from graft_ui.merging.schedule import curve_setting, parse_knots, per_layer, varies

NONE = "(none)"


def numeric_params(method: dict) -> list[str]:
    return [p["name"] for p in method["params"] if p.get("kind", "float") in ("float", "int")]


def render(method: dict):
    """(parameter, knots, filter, plot) components."""
    with gr.Accordion("Per-layer curve", open=False, elem_id="gs-fuse-curve"):
        with gr.Row():
            # custom values: a loaded recipe sets its parameter before the method's choices follow
            param = gr.Dropdown([NONE] + numeric_params(method), value=NONE, label="parameter", min_width=120,
                                allow_custom_value=True, elem_id="gs-fuse-curve-param")
            knots = gr.Textbox("", label="knots", placeholder="0.2, 0.5, 0.8", elem_id="gs-fuse-curve-knots",
                               info="first fused layer → last, interpolated between")
            tfilter = gr.Textbox("", label="only tensors containing", placeholder="mlp (empty: every tensor)",
                                 elem_id="gs-fuse-curve-filter")
        plot = gr.Plot(label="value per layer", visible=False, elem_id="gs-fuse-curve-plot")
    return param, knots, tfilter, plot


def choices_for(method: dict, current: str):
    """The parameter dropdown for another method: its numeric parameters, the current one kept if it has it."""
    names = numeric_params(method)
    return gr.update(choices=[NONE] + names, value=current if current in names else NONE)


def apply(params: dict, param: str, knots: str, tfilter: str) -> dict:
    """`params` with the curve set on `param` (the form's plain value stays on unfiltered tensors)."""
    values = parse_knots(knots)
    if param in (None, "", NONE) or not values:
        return params
    if param not in params:
        raise ValueError(f"curve parameter {param!r} is not a parameter of this method; allowed: {sorted(params)}")
    return dict(params, **{param: curve_setting(values, (tfilter or "").strip(), params[param])})


def preview(param: str, knots: str, tfilter: str, lo, hi):
    from graft_ui.analysis.gate_plots import curve_figure  # plotly: on first use, not at app startup

    values = parse_knots(knots)
    if param in (None, "", NONE) or not values:
        return gr.update(visible=False)
    points = per_layer(curve_setting(values), int(lo), int(hi))
    return gr.update(value=curve_figure(points, param + (f" ({tfilter})" if tfilter else "")), visible=True)


def from_recipe(params: dict) -> list:
    """(parameter, knots, filter) of the first gradient in a loaded recipe; plain values: none."""
    for name, v in params.items():
        if not varies(v):
            continue
        first = v[0] if isinstance(v, list) and v and isinstance(v[0], dict) else {"value": v}
        if isinstance(first["value"], list):
            return [name, ", ".join(f"{x:g}" for x in first["value"]), first.get("filter") or ""]
    return [NONE, "", ""]
