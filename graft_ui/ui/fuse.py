"""Fuse tab: method and its parameters (from the registry), scope, expert order, run, keep, export."""

from __future__ import annotations

import math

from pathlib import Path

import gradio as gr

from graft_ui.merging.registry import base_unless, describe
from graft_ui.checks import number
from graft_ui.recipe import ALL_MODULES
from graft_ui.merging.schedule import varies
from graft_ui.ui import fuse_curve
from graft_ui.ui import tune as tune_ui
from graft_ui.ui.common import choices_update, guarded, hint, ok, section, table
from graft_ui.ui.context import AppContext
from graft_ui.ui.study_hints import fuse_warning

TITLE = "③ Fuse"
VARIANT_COLUMNS = ["name", "method", "experts", "kind", "modules", "seconds", "device"]
DEFAULT_METHOD = "graft"


# plain-language names shown next to the registry's symbols
PLAIN_NAMES = {
    "a": "global gate strength", "c": "global gate sharpness", "bins": "entropy bins", "gates": "gates used",
    "global_form": "global gate formula", "alpha": "φ slope", "beta": "φ offset", "scale": "delta strength",
    "lam": "task vector scale", "density": "fraction kept", "p": "drop probability", "lam_mask": "mask threshold",
    "k": "agreeing masks needed", "merge_step": "merge rule",
}


def param_label(name: str) -> str:
    plain = PLAIN_NAMES.get(name)
    return f"{name} · {plain}" if plain else name


def param_widget(p: dict):
    """A widget for one registry parameter: slider for small ranges, number otherwise."""
    kind, default = p.get("kind", "float"), p["default"]
    name = param_label(p["name"])
    info = p.get("help")
    low, high = p.get("low"), p.get("high")
    above = p.get("above") if low is None else None  # an exclusive lower bound: the widget starts a step above
    low = above if above is not None else low
    if kind == "choice":
        return gr.Radio(list(p["choices"]), value=default, label=name, info=info)
    if kind == "bool":
        return gr.Checkbox(value=bool(default), label=name, info=info)
    bounded = low is not None and high is not None
    if kind == "int":
        if bounded and high - low <= 128:
            return gr.Slider(low, high, value=default, step=1, label=name, info=info)
        return gr.Number(value=default, precision=0, minimum=low, maximum=high, label=name, info=info)
    if bounded and high - low <= 20:
        step = 0.01 if high - low <= 2 else 0.05
        start = low + step if above is not None else low
        # a default off the slider's grid (e.g. a tolerance of 1e-5) would be snapped or refused: a number box
        if start <= default <= high and abs(round((default - start) / step) * step - (default - start)) < 1e-9:
            return gr.Slider(start, high, value=default, step=step, label=name, info=info)
    return gr.Number(value=default, minimum=low, maximum=high, label=name, info=info)


def method_md(m: dict) -> str:
    return f"{m['summary']}. [paper]({m['paper']})" + ("" if m["needs_base"] else f" · needs no base{base_unless(m)}")


def warning_md(text: str) -> str:
    return f"⚠️ {text}" if text else ""


def device_md(studio) -> str:
    return f"Runs on **{studio.device_label}**"


def order_md(experts) -> str:
    if not experts:
        return "*Pick two or more experts; the order you pick them in is the fusion order.*"
    return "**Fusion order:** " + " → ".join(f"`{e}`" for e in experts)


def copied_md(summary: dict) -> str:
    """Modules (LoRA) or tensors (full) outside the fusion's scope, copied from the first expert."""
    n = summary.get("modules_copied")
    if n is None:
        return "—"
    return "0 (every module in scope was fused)" if n == 0 else f"{n} (outside the chosen scope)"


def summary_md(v) -> str:
    s = v.summary
    rows = [("method", v.recipe.method),
            ("experts", " → ".join(e.name or Path(e.path).name for e in v.recipe.experts)),
            ("device", s.get("device", "—")), ("time", f"{s.get('seconds', '—')} s"),
            ("modules fused", s.get("modules_fused", "—")), ("copied unchanged from expert 1", copied_md(s)),
            ("folder", f"`{v.out_dir}`")]
    cal = s.get("calibration")
    if cal:
        rows.append(("φ calibration", f"{cal['steps']} steps on {cal['samples']} samples: "
                                      f"loss {cal['loss_before']:.4f} → {cal['loss_after']:.4f}"))
    kind = "LoRA adapter" if v.kind == "lora" else "full checkpoint"
    lines = [f"| **{v.name}** | {kind} |", "|:--|:--|"] + [f"| {k} | {val} |" for k, val in rows]
    for note in s.get("notes", [])[:4]:
        lines.append(f"\n> {note}")
    if s.get("server"):
        lines.append(f"\n> server: {s['server']}")
    return "\n".join(lines)


def result_view(v) -> tuple:
    """(summary, gate-map plot update, reading guide) of a fused variant: Graft's gate maps, or a
    baseline's own statistics, never an empty frame."""
    from graft_ui.analysis.gate_plots import fusion_view  # plotly: on the first fusion, not at app startup

    experts = [e.name or Path(e.path).name for e in v.recipe.experts]
    fig, guide = fusion_view(v.gates_path, v.recipe.method, experts, title=f"{v.recipe.method} — {v.name}")
    return summary_md(v), gr.update(value=fig, visible=fig is not None), guide


def render(ctx: AppContext) -> None:
    studio = ctx.studio
    methods = describe()
    by_name = {m["name"]: m for m in methods}
    default_method = DEFAULT_METHOD if DEFAULT_METHOD in by_name else methods[0]["name"]
    n_layers = studio.num_layers()
    lora_experts = studio.expert_names("lora")
    first_two = (lora_experts or studio.expert_names())[:2]

    hint("Graft fuses experts pairwise with a per-channel local gate and an entropy-based global gate (paper §3); "
         "several experts fuse left to right. Baselines come from the same registry.")
    with gr.Row(equal_height=False, elem_id="gs-fuse-main"):
        # ---------------------------------------------------------------- the form: what to fuse, then Fuse
        with gr.Column(scale=2, min_width=300):
            with gr.Row(equal_height=False):
                method = gr.Dropdown([m["name"] for m in methods], value=default_method, label="Method",
                                     elem_id="gs-fuse-method", scale=1, min_width=140)
                experts = gr.Dropdown(studio.expert_names(), value=first_two, multiselect=True, label="Experts",
                                      allow_custom_value=True, elem_id="gs-fuse-experts", scale=3, min_width=200)
            method_info = gr.Markdown(method_md(by_name[default_method]), elem_classes=["gs-hint"])
            with gr.Row(equal_height=True):
                order = gr.Markdown(order_md(first_two))
                reverse_btn = gr.Button("⇅ Reverse", size="sm", scale=0, min_width=90)
            # a callable value is re-evaluated on every page load: a study written later is seen
            warning = gr.Markdown(lambda: warning_md(fuse_warning(studio, first_two)), elem_id="gs-fuse-warning",
                                  elem_classes=["gs-hint"])
            with gr.Row(equal_height=True):
                # a callable: a reloaded page proposes a name no variant has yet
                name = gr.Textbox(lambda: studio.next_variant_name(default_method), label="Variant name",
                                  elem_id="gs-fuse-name", scale=2, min_width=140)
                overwrite = gr.Checkbox(False, label="Overwrite", info="replace a variant of this name",
                                        elem_id="gs-fuse-overwrite", scale=1, min_width=120)
            fuse_btn = gr.Button("Fuse", variant="primary", elem_id="gs-fuse-run")
            with gr.Accordion("Method parameters", open=False, elem_id="gs-fuse-params"):
                param_boxes, param_inputs = {}, []  # method -> Group; [(method, name, component)]
                for m in methods:
                    with gr.Group(visible=m["name"] == default_method) as box:
                        params = list(m["params"])
                        for i in range(0, len(params), 2):
                            with gr.Row():
                                for p in params[i:i + 2]:
                                    param_inputs.append((m["name"], p["name"], param_widget(p)))
                        if not params:
                            gr.Markdown("*This method has no parameters.*", padding=True)
                    param_boxes[m["name"]] = box
                # calibration learns a method's per-module parameters (Graft's phi): offered where there are some
                with gr.Group(visible=bool(by_name[default_method]["module_params"])) as cal_box:
                    calibrate = gr.Checkbox(False, label="Calibrate φ on target data",
                                            info="learn α, β per module with a few Adam steps (off = fixed rule)")
                    with gr.Row():
                        cal_steps = gr.Slider(1, 200, value=20, step=1, label="steps")
                        cal_samples = gr.Slider(1, 64, value=16, step=1, label="samples")
                        cal_dataset = gr.Dropdown(["auto"] + studio.dataset_names(), allow_custom_value=True,
                                                  value="auto", label="data", info="auto: expert 1's domain")
            curve_param, curve_knots, curve_filter, curve_plot = fuse_curve.render(by_name[default_method])
            with gr.Accordion("Scope and output", open=False):
                modules = gr.CheckboxGroup(list(ALL_MODULES), value=list(ALL_MODULES), label="Module types",
                                           info="attention q, k, v, o · MLP gate, up, down")
                with gr.Row():
                    first_layer = gr.Slider(0, max(0, n_layers - 1), value=0, step=1, label="from layer")
                    last_layer = gr.Slider(0, max(0, n_layers - 1), value=n_layers - 1, step=1, label="to layer")
                with gr.Row(equal_height=True):
                    vision = gr.Checkbox(False, label="vision-tower blocks", info="fuse them too")
                    rank = gr.Number(0, precision=0, minimum=0, label="rank (0 = exact)", min_width=100)
                    seed = gr.Number(0, precision=0, label="seed", min_width=80)
                device = gr.Markdown(device_md(studio), elem_classes=["gs-hint"])
            with gr.Accordion("Recipe (YAML): copy it, or paste one and load it", open=False):
                recipe_code = gr.Code("", language="yaml", label="recipe.yaml", interactive=True,
                                      elem_id="gs-fuse-recipe", max_lines=30)
                with gr.Row():
                    compose_btn = gr.Button("Write from the form", size="sm")
                    load_btn = gr.Button("Load into the form", size="sm")
                    run_yaml_btn = gr.Button("Fuse this YAML", size="sm")
        # ---------------------------------------------------------------- the result, beside the form
        with gr.Column(scale=3, min_width=300):
            summary = gr.Markdown("*No fusion yet: choose the experts and press Fuse.*",
                                  elem_classes=["gs-summary", "gs-status-box"], elem_id="gs-fuse-summary")
            gates_guide = gr.Markdown("", elem_classes=["gs-hint"], elem_id="gs-fuse-guide")
            gates_plot = gr.Plot(label="Gate maps", elem_id="gs-fuse-gates", visible=False)
    section("Fused variants")
    variants_df = gr.Dataframe(table([], VARIANT_COLUMNS), headers=VARIANT_COLUMNS, interactive=False,
                               wrap=True, show_label=False, elem_id="gs-variants")
    with gr.Row(equal_height=False):
        chosen = gr.Dropdown([], label="Variant", scale=2, min_width=160, allow_custom_value=True,
                             elem_id="gs-fuse-chosen")
        show_btn = gr.Button("Show", size="sm", scale=1, min_width=70)
        export_btn = gr.Button("Export .zip", size="sm", scale=1, min_width=90)
        report_btn = gr.Button("Export report", size="sm", scale=1, min_width=110, elem_id="gs-fuse-report")
        remove_btn = gr.Button("Remove", size="sm", variant="stop", scale=1, min_width=80)
        export_file = gr.File(label="Download", interactive=False, visible=False, height=60, scale=2)

    flat_params = [c for _, _, c in param_inputs]
    form = [method, experts, modules, first_layer, last_layer, vision, rank, seed,
            calibrate, cal_steps, cal_samples, cal_dataset, curve_param, curve_knots, curve_filter] + flat_params

    # ---------------------------------------------------------------- callbacks
    def on_method(m, current_name, curve):
        auto = not current_name or any(current_name.startswith(f"{x}-") for x in by_name)
        return ([gr.update(visible=(k == m)) for k in param_boxes]
                + [gr.update(visible=bool(by_name[m]["module_params"])), method_md(by_name[m]),
                   gr.update(value=studio.next_variant_name(m)) if auto else gr.update(),
                   fuse_curve.choices_for(by_name[m], curve)])

    method.change(on_method, [method, name, curve_param], list(param_boxes.values()) + [cal_box, method_info, name, curve_param],
                  api_visibility="private", queue=False, show_progress="hidden")
    experts.change(order_md, experts, order, api_visibility="private", queue=False, show_progress="hidden")
    # the study's verdict on the chosen pair, before anyone spends a fusion on it
    experts.change(lambda e: warning_md(fuse_warning(studio, e)), experts, warning, api_name="fuse_warning",
                   queue=False, show_progress="hidden")
    reverse_btn.click(lambda e: list(reversed(e or [])), experts, experts, api_visibility="private", queue=False)
    if ctx.handoff is not None:  # ② Analyze's advisor sends its recommended pair, and method when it names one
        ctx.handoff.change(lambda p: (p[:2], p[2] if len(p) > 2 else "graft") if p else (gr.skip(), gr.skip()),
                           ctx.handoff, [experts, method],
                           api_visibility="private", queue=False, show_progress="hidden")

    def recipe_from_form(m, exps, mods, lo, hi, vis, rk, sd, cal, steps, samples, cal_ds, cp, ck, cf, *values):
        params = {pn: v for (mn, pn, _), v in zip(param_inputs, values) if mn == m}
        params = {k: (int(v) if isinstance(v, float) and math.isfinite(v) and v.is_integer() and _is_int(by_name[m], k)
                      else v)
                  for k, v in params.items()}
        params = fuse_curve.apply(params, cp, ck, cf)
        lo = number("from layer", lo, integer=True, low=0)
        hi = number("to layer", hi, integer=True, low=0)
        if lo > hi:
            raise ValueError(f"layer range {lo}..{hi} is empty: 'from layer' must not exceed 'to layer'")
        if not mods:
            raise ValueError("tick at least one module type to fuse")
        layers = "all" if (lo == 0 and hi >= studio.num_layers() - 1) else (lo, hi)
        calib = None
        if cal and by_name[m]["module_params"]:
            calib = {"steps": number("calibration steps", steps, integer=True, low=1),
                     "samples": number("calibration samples", samples, integer=True, low=1),
                     "dataset": None if cal_ds in ("auto", "", None) else cal_ds}
        return studio.build_recipe(m, exps or [], params, modules=mods, layers=layers, vision=bool(vis),
                                   rank=number("output rank", rk, integer=True, low=1) if rk else None,
                                   calibrate=calib, seed=number("seed", sd or 0, integer=True))

    def run_recipe_yaml(recipe_yaml, variant_name, replace, progress, note=""):
        recipe = studio.parse_recipe(recipe_yaml)
        progress(0, desc=f"fusing {len(recipe.experts)} experts with {recipe.method} on {studio.device_label}")
        v = studio.fuse(recipe, (variant_name or "").strip(), overwrite=bool(replace))
        return shown(v, (warning_md(note) + "\n\n" if note else "") + ok("Fused."))

    def shown(v, head: str):
        """Updates for `run_outputs` showing the new variant `v` under the message `head`."""
        names = list(studio.variants)
        return ((head + "\n\n" + summary_md(v),) + result_view(v)[1:] + (v.recipe.to_yaml(), variants_table(),
                gr.update(choices=names, value=v.name), ctx.bump(), studio.next_variant_name(v.recipe.method),
                False))

    run_outputs = [summary, gates_plot, gates_guide, recipe_code, variants_df, chosen, ctx.models_changed, name,
                   overwrite]
    # one progress display per fusion, on the result panel (not one per output)
    run_kwargs = dict(show_progress_on=[summary], **ctx.gpu)

    @guarded(len(run_outputs), status=0)
    def fuse_form(variant_name, replace, m, exps, mods, lo, hi, vis, rk, sd, cal, steps, samples, cal_ds,
                  progress=gr.Progress(track_tqdm=True), *values):
        recipe = recipe_from_form(m, exps, mods, lo, hi, vis, rk, sd, cal, steps, samples, cal_ds, *values)
        # the study's warning goes into this tab's result (the fusion still runs: the user asked for it)
        return run_recipe_yaml(recipe.to_yaml(), variant_name, replace, progress, note=fuse_warning(studio, exps))

    @guarded(len(run_outputs), status=0)
    def run(recipe_yaml, variant_name, replace=False, progress=gr.Progress(track_tqdm=True)):
        return run_recipe_yaml(recipe_yaml, variant_name, replace, progress)

    @guarded(2, status=1)
    def compose(*inputs):
        return recipe_from_form(*inputs).to_yaml(), ok("Recipe written from the form (not fused yet).")

    def variants_table():
        return table([v.row() for v in studio.variants.values()], VARIANT_COLUMNS)

    fuse_btn.click(fuse_form, [name, overwrite] + form, run_outputs, api_name="fuse", **run_kwargs)
    run_yaml_btn.click(run, [recipe_code, name, overwrite], run_outputs, api_name="run_fusion", **run_kwargs)
    compose_btn.click(compose, form, [recipe_code, summary], api_name="compose_recipe", queue=False)

    @guarded(len(form) + 1, status=len(form))
    def load_form(recipe_yaml):
        recipe = studio.parse_recipe(recipe_yaml)
        by_path = {e.path: e.name for e in studio.manifest.experts}
        names = []
        for x in recipe.experts:
            n = by_path.get(x.path) or (x.name if x.name in studio.expert_names() else None)
            if n is None:
                raise ValueError(f"recipe expert {x.name or x.path!r} is not in the loaded model set; add it in ① Experts")
            names.append(n)
        lo, hi = (0, studio.num_layers() - 1) if recipe.scope.layers == "all" else recipe.scope.layers
        cal = recipe.calibrate
        updates = [recipe.method, names, list(recipe.scope.modules), lo, hi, recipe.scope.vision,
                   recipe.output.rank or 0, recipe.seed, cal is not None,
                   cal.steps if cal else gr.update(), cal.samples if cal else gr.update(),
                   (cal.dataset or "auto") if cal else gr.update()] + fuse_curve.from_recipe(recipe.params)
        for mn, pn, _ in param_inputs:
            plain = mn == recipe.method and not varies(recipe.params[pn])
            updates.append(recipe.params[pn] if plain else gr.update())
        return updates + [ok(f"Loaded a **{recipe.method}** recipe over {len(names)} experts into the form.")]

    load_btn.click(load_form, recipe_code, form + [summary], api_name="load_recipe", queue=False)
    for c in (curve_param, curve_knots, curve_filter):
        c.change(guarded(1)(fuse_curve.preview), [curve_param, curve_knots, curve_filter, first_layer, last_layer],
                 curve_plot, api_visibility="private", queue=False, show_progress="hidden")

    @guarded(4, status=0)
    def show(variant):
        v = studio.variant(variant)
        return result_view(v) + (v.recipe.to_yaml(),)

    @guarded(2, status=1)
    def export(variant):
        if not variant:
            raise ValueError("choose a fused variant to export")
        path = studio.export_zip(variant)
        return gr.update(value=str(path), visible=True), ok(f"Exported **{variant}** as `{path.name}` (download below).")

    @guarded(2, status=1)
    def export_report(variant, progress=gr.Progress()):
        if not variant:
            raise ValueError("choose a fused variant to report on")
        from graft_ui.report import write_report  # plotly and the evaluation: on the first report only

        v = studio.variant(variant)
        out = write_report(studio.manifest, v.out_dir, studio.work_dir / "exports" / f"{v.name}-report.html",
                           name=v.name, votes=ctx.vote_store().votes(), device=str(studio.device),
                           progress=lambda done, what: progress(done, desc=what))
        return gr.update(value=str(out), visible=True), ok(f"Report of **{variant}** written as `{out.name}` "
                                                           "(download below; it opens offline and prints to PDF).")

    @guarded(4, status=3)
    def remove(variant):
        if not variant:
            raise ValueError("choose a fused variant to remove")
        studio.remove_variant(variant)
        names = list(studio.variants)
        return (variants_table(), gr.update(choices=names, value=names[-1] if names else None), ctx.bump(),
                ok(f"Removed **{variant}** from this session (its folder stays on disk)."))

    show_outputs = [summary, gates_plot, gates_guide, recipe_code]
    show_btn.click(show, chosen, show_outputs, api_name="show_variant", queue=False)
    chosen.select(show, chosen, show_outputs, api_visibility="private", queue=False)
    export_btn.click(export, chosen, [export_file, summary], api_name="export_variant")
    report_btn.click(export_report, chosen, [export_file, summary], api_name="export_report", **ctx.gpu)
    remove_btn.click(remove, chosen, [variants_df, chosen, ctx.models_changed, summary], api_name="remove_variant")

    def refresh(current_experts, lo, hi):
        names = studio.expert_names()
        default = (studio.expert_names("lora") or names)[:2]
        top = max(0, studio.num_layers() - 1)  # a shallower base: the range shrinks into it
        return (choices_update(names, value=default, keep=current_experts),
                gr.update(maximum=top, value=min(int(lo or 0), top)),
                gr.update(maximum=top, value=min(int(top if hi is None else hi), top)),
                choices_update(["auto"] + studio.dataset_names(), value="auto"),
                variants_table(), gr.update(choices=list(studio.variants)),
                gr.update(value=device_md(studio)))

    ctx.on_models_changed(refresh, [experts, first_layer, last_layer, cal_dataset, variants_df, chosen, device],
                          inputs=[experts, first_layer, last_layer])
    tune_ui.render(ctx, recipe_from_form, form, run_outputs, lambda v: shown(v, ok("Tuned.")))


def _is_int(method: dict, param: str) -> bool:
    return any(p["name"] == param and p.get("kind") == "int" for p in method["params"])
