"""② Analyze's merge-advisor section: the predicted kept fraction of every pair for a chosen method (a
heatmap with the held-out ±, the preview's agreement on hover), the recommended pair and method, a
button sending them to ③ Fuse, and "Preview merge" on the user's own target prompts (progress, Stop).
graft_ui.advisor does the work."""

from __future__ import annotations

import gradio as gr

from graft_ui.checks import number
from graft_ui.ui.common import choices_update, guarded, hint, ok, warn
from graft_ui.ui.context import AppContext

KINDS = ["lora", "full"]
SCOPE = "preview"


def _methods() -> list[str]:
    from graft_ui.advisor.signals import METHODS

    return list(METHODS)


def render(ctx: AppContext, analysis_state) -> None:
    from graft_ui.advisor.plots import BEST

    studio = ctx.studio
    names = studio.dataset_names()
    with gr.Accordion("Merge advisor: which pair, with which method, keeps how much", open=True, elem_id="gs-advise"):
        hint("Predicted fraction of each expert's skill the fusion keeps (kept_min: the weaker-kept of the two), per "
             "pair and method, from a label-free merge preview (does the fused model still answer as each expert on "
             "a few prompts of its domain?), by a model fitted on a fusion study and validated leave-one-expert-out; "
             "its ρ, interval and error are stated below, and a forecast below the targets is labelled weak.")
        with gr.Row(equal_height=True):
            target = gr.Dropdown(names, value=names[:1], multiselect=True, label="Target domains",
                                 elem_id="gs-advise-target", scale=2)
            kind = gr.Radio(KINDS, value="lora", label="Experts", elem_id="gs-advise-kind", scale=1)
            method = gr.Radio([BEST] + _methods(), value=BEST, label="Method", elem_id="gs-advise-method", scale=2)
            k = gr.Slider(2, 32, value=16, step=1, label="preview prompts K", elem_id="gs-advise-k", scale=1)
            go_btn = gr.Button("Forecast pairs", variant="primary", elem_id="gs-advise-run", scale=1)
        recommendation = gr.Markdown("", elem_id="gs-advise-rec")
        note = gr.Markdown("", elem_classes=["gs-hint"], elem_id="gs-advise-note")
        heat = gr.Plot(label="Predicted kept fraction per pair (hover: preview agreement)", elem_id="gs-advise-heatmap")
        send_btn = gr.Button("Send the recommended pair and method to ③ Fuse", interactive=False, elem_id="gs-advise-send")
        with gr.Row(equal_height=True):
            pv_pair = gr.Dropdown([], label="Pair to preview", allow_custom_value=True, elem_id="gs-preview-pair", scale=2)
            pv_method = gr.Dropdown(_methods(), value="ties", label="Method", elem_id="gs-preview-method", scale=1)
            pv_btn = gr.Button("Preview merge", elem_id="gs-preview-run", scale=1)
            pv_stop = gr.Button("■ Stop", variant="stop", elem_id="gs-preview-stop", scale=1)
        pv_out = gr.Markdown("", elem_id="gs-preview-result")
        pair = gr.State(None)
        plan_state = gr.State(None)

    @guarded(7, status=1)
    def run(analysis, domains, kind_value, method_value, k_value):
        from graft_ui.advisor.plots import kept_heatmap
        from graft_ui.advisor.session import kept_plan

        plan = kept_plan(studio.manifest, kind_value, "+".join(domains or []),
                         k=number("K", k_value, integer=True, low=1, high=32), device=str(studio.device))
        best = plan["best"]
        pairs = list(dict.fromkeys(" + ".join(r["experts"]) for r in plan["pairs"]))
        rec = warn(plan["recommendation"]) if plan["weak"] else ok(plan["recommendation"])
        note_text = f"{plan['validation_line']}. Signals: {plan['sources']['signals']}; expert scores: {plan['sources']['singles']}."
        return (kept_heatmap(plan, method_value), rec, note_text, [*best["experts"], best["method"]],
                gr.update(interactive=True), plan, gr.update(choices=pairs, value=pairs[0] if pairs else None))

    go_btn.click(run, [analysis_state, target, kind, method, k],
                 [heat, recommendation, note, pair, send_btn, plan_state, pv_pair], api_name="advise", **ctx.gpu)

    def redraw(plan, method_value):
        from graft_ui.advisor.plots import kept_heatmap

        return kept_heatmap(plan, method_value) if plan else gr.skip()

    method.change(redraw, [plan_state, method], heat, api_visibility="private", show_progress="hidden", queue=False)

    @guarded(1, status=0)
    def preview(pair_value, method_value, domains, k_value, request: gr.Request, progress=gr.Progress()):
        from graft_ui.advisor.preview import Stopped
        from graft_ui.advisor.session import preview_markdown, preview_pair

        stop_ev = ctx.new_stop(request, SCOPE)  # set already when Stop was pressed while this waited in the queue
        try:
            parts = [p.strip() for p in str(pair_value or "").split("+") if p.strip()]
            if len(parts) != 2:
                raise ValueError(f"choose a pair to preview as 'a + b' (got {pair_value!r}); run Forecast pairs first")
            if not domains:
                raise ValueError("choose the target domains whose prompts the preview runs on")
            res = preview_pair(studio.manifest, parts[0], parts[1], method_value, "+".join(domains),
                               k=number("K", k_value, integer=True, low=1, high=32), device=str(studio.device),
                               progress=lambda f, d: progress(f, desc=d), stop=stop_ev.is_set)
            return ok(preview_markdown(res))
        except Stopped:
            return warn("Preview stopped.")
        finally:
            ctx.finish(request, SCOPE, stop_ev)

    def stop(request: gr.Request):
        # the per-tab Stop protocol (ui/context.py): only a preview that is queued or running is stopped
        return warn("stopping the preview…") if ctx.stop(request, SCOPE) else gr.skip()

    def arm(request: gr.Request):  # beside the queued request: a Stop while it waits is seen when it starts
        ctx.arm(request, SCOPE)

    pv_btn.click(arm, None, None, api_visibility="private", queue=False, show_progress="hidden")
    pv_btn.click(preview, [pv_pair, pv_method, target, k], pv_out, api_name="preview_merge",
                 show_progress_on=[pv_out], **ctx.gpu)
    pv_stop.click(stop, None, pv_out, api_name="stop_preview", concurrency_limit=None, queue=False)
    ctx.on_models_changed(lambda cur: choices_update(studio.dataset_names(), value=studio.dataset_names()[:1], keep=cur),
                          [target], inputs=[target])
    if ctx.handoff is not None:
        send_btn.click(lambda p: (p, gr.Tabs(selected="fuse")) if p else (gr.skip(), gr.skip()), pair,
                       [ctx.handoff, ctx.tabs], api_name="send_pair")  # queued: only queued events fire State.change
