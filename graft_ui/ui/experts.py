"""Experts tab: choose a manifest (the zoo by default) or build a set from folders / hub ids."""

from __future__ import annotations

import gradio as gr

from graft_ui.ui.common import friendly, guarded, hint, ok, section, table
from graft_ui.ui.context import AppContext

TITLE = "① Experts"
COLUMNS = ["name", "role", "domain", "kind", "rank", "size", "base", "status"]


def models_table(ctx: AppContext):
    return table(ctx.studio.model_rows(), COLUMNS)


def render(ctx: AppContext) -> None:
    studio = ctx.studio
    hint("The base model and the domain experts fine-tuned from it. Analysis, fusion and chat use this set. "
         "Models load lazily: nothing is read into memory until a tab needs it.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            section("Loaded models")
            table_df = gr.Dataframe(value=models_table(ctx), headers=COLUMNS, interactive=False, wrap=True,
                                    elem_id="gs-models-table", show_label=False, max_height=420)
            with gr.Row():
                refresh_btn = gr.Button("↻ Refresh", size="sm", scale=0)
                status = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-experts-status")
        with gr.Column(scale=2, min_width=340):
            section("Model set")
            # empty at start: the page config must not show the server's absolute paths
            manifest_path = gr.Textbox(label="Manifest (YAML file or folder on the server)",
                                       value="", elem_id="gs-manifest-path",
                                       placeholder="examples/manifest-qwen2vl-2b.yaml")
            with gr.Row():
                load_btn = gr.Button("Load manifest", variant="primary", size="sm")
                zoo_btn = gr.Button("Back to the demo zoo", size="sm", visible=ctx.zoo_manifest is not None)
            with gr.Accordion("Add a base or an expert (local folder or hub id)", open=False):
                base_ref = gr.Textbox(label="Base model", placeholder="Qwen/Qwen2-VL-2B-Instruct or /models/qwen2-vl-2b")
                base_btn = gr.Button("Start a new set on this base", size="sm")
                expert_ref = gr.Textbox(label="Expert", placeholder="/adapters/math-lora or owner/adapter-id",
                                        elem_id="gs-expert-ref")
                with gr.Row():
                    expert_name = gr.Textbox(label="Name", placeholder="(folder name)", min_width=120)
                    expert_domain = gr.Textbox(label="Domain", placeholder="math", min_width=100)
                    expert_kind = gr.Radio(["auto", "lora", "full"], value="auto", label="Kind", min_width=180)
                allow_base = gr.Checkbox(False, label="allow a different base", elem_id="gs-allow-base",
                                         info="load an adapter trained on another base anyway (its answers may be "
                                              "garbage); it still cannot be fused")
                add_btn = gr.Button("Add expert", size="sm", elem_id="gs-add-expert")
            hint("Hub ids need the model in the local Hugging Face cache: the app runs with hub downloads off.")

    @friendly
    def list_models():
        return models_table(ctx)

    @guarded(3, status=1)
    def load(path):
        if not (path or "").strip():
            raise ValueError("give the path of a manifest YAML (or of a folder holding manifest.yaml)")
        m = studio.load_manifest(path.strip())
        return models_table(ctx), ok(f"Loaded **{m.name}**: base `{m.base.name}` and {len(m.experts)} experts."), ctx.bump()

    @guarded(4, status=1)
    def back_to_zoo():
        m = studio.load_manifest(ctx.zoo_manifest)
        return models_table(ctx), ok(f"Back on the demo zoo ({len(m.experts)} experts)."), ctx.bump(), ""

    @guarded(3, status=1)
    def new_base(ref):
        m = studio.set_base(ref)
        return models_table(ctx), ok(f"New set on base `{m.base.name}`; add its experts below."), ctx.bump()

    @guarded(5, status=1)
    def add(ref, name, domain, kind, allow_base_mismatch):
        e = studio.add_expert(ref, name=name or None, domain=domain or None, kind=kind,
                              allow_base_mismatch=bool(allow_base_mismatch))
        note = " Its recorded base may differ from this set's (allowed, as asked)." if e.name in studio.base_mismatch_allowed else ""
        return (models_table(ctx), ok(f"Added **{e.name}** ({e.kind}). It loads when first used.{note}"), ctx.bump(),
                "", "")

    refresh_btn.click(list_models, None, table_df, api_name="list_models", queue=False)
    load_btn.click(load, manifest_path, [table_df, status, ctx.models_changed], api_name="load_manifest")
    manifest_path.submit(load, manifest_path, [table_df, status, ctx.models_changed], api_visibility="private")
    zoo_btn.click(back_to_zoo, None, [table_df, status, ctx.models_changed, manifest_path], api_name="load_zoo")
    base_btn.click(new_base, base_ref, [table_df, status, ctx.models_changed], api_name="set_base")
    add_btn.click(add, [expert_ref, expert_name, expert_domain, expert_kind, allow_base],
                  [table_df, status, ctx.models_changed, expert_ref, expert_name], api_name="add_expert")
    ctx.on_models_changed(lambda: models_table(ctx), [table_df])
