"""Analyze tab: per-module sensitivity and compatibility of experts on a target dataset."""

from __future__ import annotations

import gradio as gr

from graft_ui.analysis.analyze import AnalysisResult
from graft_ui.analysis.scores import DEFAULT_THRESHOLD
from graft_ui.analysis.stats import DEFAULT_EPS
from graft_ui.checks import number
from graft_ui.ui import advise
from graft_ui.ui.common import choices_update, friendly, guarded, hint, ok, table
from graft_ui.ui.context import AppContext
from graft_ui.ui.study_hints import gain_cell, study_for

TITLE = "② Analyze"
UPLOAD = "uploaded JSONL"
EXPERT_COLUMNS = ["expert", "kind", "domain", "score", "pass", "accuracy on target", "forecast (best fusion)"]
PAIR_COLUMNS = ["pair", "score", "pass", "gain (study)"]
HEIGHT_EMPTY = 320


def _plots():
    from graft_ui.analysis import plots  # plotly loads on the first analysis, not at app startup

    return plots


def _result(state):
    if not state:
        raise ValueError("run the analysis first")
    return AnalysisResult.from_dict(state)


def bars(state, threshold, study=None, manifest=None):
    """Compatibility bars re-coloured for `threshold` from the stored result (no recomputation).

    `study`: the loaded zoo's fusion study; its measured (or predicted) Graft gain of each
    pair is shown beside the pair's score. Beside each expert's bar stand its accuracy on the
    target (the study's held-out scores) and its kept-fraction forecast, and a statement line
    says what the score has been measured to predict (advisor.explain): the bars never stand alone.
    """
    if not state:
        return None, None, None, ""
    threshold = number("threshold", threshold)
    res = _result(state)
    plots = _plots()
    ctx = _context(res, study, manifest)
    scores = {n: e.compatibility for n, e in res.experts.items()}
    hover = {n: f"accuracy on {res.dataset}: {_acc(ctx[n]['accuracy'])}<br>forecast: {ctx[n]['forecast']}" for n in scores}
    fig = plots.compatibility_bars(scores, float(threshold), title=f"Compatibility on {res.dataset} (K={res.k})", hover=hover)
    fig.data[0].text = [f"{v:.3f} · acc {_acc(ctx[n]['accuracy'])}" for n, v in scores.items()]
    # the threshold is named in the title: a label on the line collides with bar values near it
    fig.update_layout(annotations=[], title=f"Compatibility on {res.dataset} (K={res.k}) · threshold {float(threshold):g} (dashed)")
    rows = [{"expert": n, "kind": e.kind, "domain": e.domain or "—", "score": round(e.compatibility, 4),
             "pass": "yes" if e.compatibility >= threshold else "no", "accuracy on target": _acc(ctx[n]["accuracy"]),
             "forecast (best fusion)": ctx[n]["forecast"]} for n, e in res.experts.items()]
    pairs = [{"pair": f"{p['a']} + {p['b']}", "score": round(p["score"], 4),
              "pass": "yes" if p["score"] >= threshold else "no", "gain (study)": gain_cell(study, p["a"], p["b"])}
             for p in res.pairs]
    return fig, table(rows, EXPERT_COLUMNS), table(pairs, PAIR_COLUMNS), _statement()


def _acc(x) -> str:
    return "—" if x is None else f"{x:.0f}%"


def _domains(dataset: str, manifest) -> list[str]:
    parts = [p for p in str(dataset).split("+") if p]
    return parts if manifest is not None and parts and all(p in manifest.datasets for p in parts) else []


def _artifact():
    from graft_ui.advisor.kept import load_artifact

    try:
        return load_artifact()
    except (FileNotFoundError, ValueError):
        return None


def _context(res, study, manifest) -> dict:
    from graft_ui.advisor.explain import expert_context

    names = list(res.experts)
    if manifest is None:
        return {n: {"accuracy": None, "forecast": "—"} for n in names}
    return expert_context(manifest, names, _domains(res.dataset, manifest), art=_artifact(), study=study)


def _statement() -> str:
    from graft_ui.advisor.explain import score_statement

    return score_statement(_artifact())


def heatmap(state, which):
    if not state or not which:
        return None
    res = _result(state)
    plots = _plots()
    if " − " in which:
        a, b = which.split(" − ", 1)
        return plots.sensitivity_difference(res.experts[a], res.experts[b], names=(a, b))
    return plots.sensitivity_heatmap(res.experts[which], title=f"Sensitivity ρ′ — {which} on {res.dataset}")


def heatmap_choices(state) -> list[str]:
    if not state:
        return []
    names = list(state["experts"])
    return names + ([f"{names[0]} − {names[1]}"] if len(names) >= 2 else [])


def analysis_progress(progress):
    """One monotonic bar over all experts' samples (the library counts them across experts)."""
    def step(done: int, total: int) -> None:
        progress(done / max(1, total), desc=f"measuring activations: {done} of {total} samples (all experts)")

    return step


def render(ctx: AppContext) -> None:
    studio = ctx.studio
    hint("How strongly each expert's modules respond to a target dataset (ρ′ = normalised mean magnitude × "
         "(1 − sparsity) × √variance, paper §3.4), and a compatibility score per expert and pair. "
         "Move the threshold to re-colour the bars; nothing is recomputed.")
    state = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            datasets = studio.dataset_names()
            dataset = gr.Dropdown(datasets + [UPLOAD], value=(datasets[0] if datasets else UPLOAD), label="Target data",
                                  allow_custom_value=True, info="a domain's eval split, or your own JSONL",
                                  elem_id="gs-an-dataset")
            # any file is accepted here and checked by the app, which says what is wrong in a sentence
            upload = gr.File(label="JSONL + its images", file_count="multiple", visible=not datasets, height=120,
                             elem_id="gs-an-upload")
            experts = gr.Dropdown(studio.expert_names(), value=studio.expert_names(), multiselect=True,
                                  allow_custom_value=True, label="Experts", elem_id="gs-an-experts")
            run_btn = gr.Button("Run analysis", variant="primary", elem_id="gs-an-run")
            status = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-an-status")
            threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Acceptance threshold",
                                  info="re-colours the bars; nothing is recomputed", elem_id="gs-an-threshold")
            with gr.Accordion("Sampling (K samples, sparsity eps)", open=False):
                with gr.Row():
                    k = gr.Slider(1, 64, value=16, step=1, label="K samples", elem_id="gs-an-k")
                    eps = gr.Number(value=DEFAULT_EPS, label="eps (sparsity)", minimum=0, step=1e-4)
        with gr.Column(scale=3, min_width=300):
            bars_plot = gr.Plot(label="Compatibility", elem_id="gs-an-bars")
            statement = gr.Markdown("", elem_classes=["gs-hint"], elem_id="gs-an-statement")
            with gr.Row():
                expert_table = gr.Dataframe(headers=EXPERT_COLUMNS, interactive=False, label="Compatibility per expert",
                                            wrap=True, min_width=260)
                pair_table = gr.Dataframe(headers=PAIR_COLUMNS, interactive=False, label="Pair scores", wrap=True,
                                          min_width=260)
            which = gr.Dropdown([], label="Heatmap", allow_custom_value=True, info="one expert, or the difference of the first two",
                                elem_id="gs-an-which")
            heat_plot = gr.Plot(label="Sensitivity heatmap", elem_id="gs-an-heatmap")
    advise.render(ctx, state)

    @guarded(8, status=6)
    def run(dataset, files, experts, k, eps, threshold, progress=gr.Progress()):
        if dataset == UPLOAD:
            if not files:
                raise ValueError("upload a JSONL file (and the images it uses), or pick a domain")
            target = str(studio.import_dataset([getattr(f, "name", f) for f in files]))
        else:
            target = dataset
        if not experts:
            raise ValueError("choose at least one expert to analyse (none is selected)")
        progress(0, desc=f"loading the models to analyse {len(experts)} expert(s)")
        res = studio.analyze(target, experts, k=number("K", k, integer=True, low=1, high=512), eps=number("eps", eps),
                             threshold=number("threshold", threshold), progress=analysis_progress(progress))
        d = res.to_dict()
        fig, t1, t2, said = bars(d, threshold, study_for(studio), studio.manifest)
        choices = heatmap_choices(d)
        label = "your JSONL" if dataset == UPLOAD else dataset
        msg = ok(f"Analysed {len(res.experts)} expert(s) on **{label}**, K = {res.k}.")
        return d, fig, t1, t2, gr.update(choices=choices, value=choices[0]), heatmap(d, choices[0]), msg, said

    run_btn.click(run, [dataset, upload, experts, k, eps, threshold],
                  [state, bars_plot, expert_table, pair_table, which, heat_plot, status, statement],
                  api_name="run_analysis", show_progress_on=[status], **ctx.gpu)
    threshold.change(friendly(lambda d, t: bars(d, t, study_for(studio), studio.manifest)), [state, threshold],
                     [bars_plot, expert_table, pair_table, statement],
                     api_name="recolour", show_progress="hidden", queue=False)
    which.change(friendly(heatmap), [state, which], heat_plot, api_visibility="private", show_progress="hidden")
    dataset.change(lambda d: gr.update(visible=d == UPLOAD), dataset, upload, api_visibility="private", queue=False)

    def refresh(current_dataset, current_experts):
        names = studio.dataset_names()
        return (choices_update(names + [UPLOAD], value=names[0] if names else UPLOAD, keep=current_dataset),
                choices_update(studio.expert_names(), value=studio.expert_names(), keep=current_experts))

    ctx.on_models_changed(refresh, [dataset, experts], inputs=[dataset, experts])
