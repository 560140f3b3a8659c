"""② Analyze's merge-advisor section: every pair's predicted gain as a heatmap, a one-line
recommendation, and a button sending the recommended pair to ③ Fuse (graft_ui.advisor does the work)."""

from __future__ import annotations

import gradio as gr

from graft_ui.ui.common import choices_update, guarded, hint, ok
from graft_ui.ui.context import AppContext

KINDS = ["lora", "full"]


def render(ctx: AppContext, analysis_state) -> None:
    studio = ctx.studio
    names = studio.dataset_names()
    with gr.Accordion("Merge advisor: which pair to fuse, predicted", open=True, elem_id="gs-advise"):
        hint("Predicted Graft gain over the better expert for every pair of one kind on the target domains, from "
             "the pair's compatibility, task-vector cosine and the stronger expert's score, by a model fitted on a "
             "fusion study and checked leave-one-pair-out (its held-out ρ and error are stated below). Uses the "
             "compatibility of the analysis above when it ran on the same target.")
        with gr.Row(equal_height=True):
            target = gr.Dropdown(names, value=names[:1], multiselect=True, label="Target domains",
                                 elem_id="gs-advise-target", scale=2)
            kind = gr.Radio(KINDS, value="lora", label="Experts", elem_id="gs-advise-kind", scale=1)
            go_btn = gr.Button("Forecast pairs", variant="primary", elem_id="gs-advise-run", scale=1)
        recommendation = gr.Markdown("", elem_id="gs-advise-rec")
        note = gr.Markdown("", elem_classes=["gs-hint"], elem_id="gs-advise-note")
        heat = gr.Plot(label="Predicted gain per pair (hover: compatibility)", elem_id="gs-advise-heatmap")
        send_btn = gr.Button("Send the recommended pair to ③ Fuse", interactive=False, elem_id="gs-advise-send")
        pair = gr.State(None)

    @guarded(5, status=1)
    def run(analysis, domains, kind_value):
        from graft_ui.advisor.forecast import forecast_from_analysis
        from graft_ui.advisor.plots import pair_heatmap

        fc = forecast_from_analysis(studio.manifest, kind_value, "+".join(domains or []), analysis,
                                   device=str(studio.device))
        top = [fc.rows[0].a, fc.rows[0].b]
        return pair_heatmap(fc), ok(fc.recommendation), fc.note, top, gr.update(interactive=True)

    go_btn.click(run, [analysis_state, target, kind], [heat, recommendation, note, pair, send_btn],
                 api_name="advise", **ctx.gpu)
    ctx.on_models_changed(lambda cur: choices_update(studio.dataset_names(), value=studio.dataset_names()[:1], keep=cur),
                          [target], inputs=[target])
    if ctx.handoff is not None:
        send_btn.click(lambda p: (p, gr.Tabs(selected="fuse")) if p else (gr.skip(), gr.skip()), pair,
                       [ctx.handoff, ctx.tabs], api_name="send_pair")  # queued: only queued events fire State.change
