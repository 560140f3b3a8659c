"""Chat tab: one prompt (text + optional image) to base, experts and fused variants side by side."""

from __future__ import annotations

import time

import gradio as gr

from graft_ui.chat import GenerationSettings, MAX_NEW_TOKENS_CAP, SideBySide
from graft_ui.ui.admission import wire_retry
from graft_ui.ui.common import choices_update, guarded, hint, prompt_of
from graft_ui.ui.context import AppContext

TITLE = "④ Chat"
MAX_COLUMNS = 6
CHATBOT_HEIGHT = 360  # the prompt box below stays above the fold at 1440x900
MIN_INTERVAL_S = 0.08  # at most ~12 UI updates a second per request; the final state always goes out


def default_columns(studio) -> list[str]:
    """Base, the first two experts (LoRA first) and the newest fused variant."""
    names = studio.chat_names()
    experts = studio.expert_names("lora") or studio.expert_names()
    cols = [studio.manifest.base.name] + experts[:2] + list(studio.variants)[-1:]
    return [c for c in dict.fromkeys(cols) if c in names][:MAX_COLUMNS]


def column_title(studio, name: str, turns: int = 0) -> str:
    """Header of a chat column: the model name, what it is, and how many turns it remembers."""
    try:
        spec = studio.pool.spec(name)
    except KeyError:
        return f"**{name}**"
    what = {"base": "base model", "expert": "expert", "fused": "fused"}.get(spec.role, spec.role)
    kind = "" if spec.kind == "base" else (" · LoRA" if spec.kind == "lora" else " · full")
    if spec.remote is not None:
        kind += " · remote"
    memory = ("new conversation" if turns == 0 else "1 turn in context" if turns == 1
              else f"{turns} turns in context")
    return (f"**{name}** <span class='gs-col-kind'>{what}{kind}</span> "
            f"<span class='gs-col-turns'>{memory}</span>")


def titles(studio, columns, session: SideBySide | None = None) -> list[str]:
    """The header of every fixed chat slot (empty for unused ones), with each column's turn count."""
    columns = list(columns or [])[:MAX_COLUMNS]
    return [column_title(studio, columns[j], session.context_turns(columns[j]) if session else 0)
            if j < len(columns) else "" for j in range(MAX_COLUMNS)]


def slot_updates(studio, columns, session: SideBySide | None = None) -> tuple[list, list]:
    """Visibility of the fixed chat slots and their headers for the chosen columns."""
    columns = list(columns or [])[:MAX_COLUMNS]
    vis = [gr.update(visible=j < len(columns)) for j in range(MAX_COLUMNS)]
    return vis, titles(studio, columns, session)


def displays(session: SideBySide, columns, live=None) -> list:
    columns = list(columns or [])[:MAX_COLUMNS]
    return [session.display(columns[j], live) if j < len(columns) else [] for j in range(MAX_COLUMNS)]


def render(ctx: AppContext) -> None:
    studio = ctx.studio
    cols0 = default_columns(studio)
    hint("Every column gets the same prompt and remembers the earlier turns of this conversation (its header "
         "counts them); **New conversation** forgets them. LoRA experts and fused adapters share one loaded base "
         "and stream together; full models run after them.")
    session = gr.State(SideBySide())
    with gr.Row(equal_height=False):
        columns = gr.Dropdown(studio.chat_names(), value=cols0, multiselect=True, max_choices=MAX_COLUMNS, allow_custom_value=True,
                              label=f"Columns (up to {MAX_COLUMNS})", scale=4, elem_id="gs-chat-columns")
        with gr.Column(scale=3, min_width=280):
            with gr.Accordion("Generation settings", open=False):
                with gr.Row():
                    max_new = gr.Slider(8, MAX_NEW_TOKENS_CAP, value=128, step=8, label="max new tokens",
                                        min_width=200, elem_id="gs-chat-max-new")
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature", min_width=200)
                    greedy = gr.Checkbox(True, label="greedy", info="off = sample with the temperature")
        new_btn = gr.Button("✚ New conversation", scale=0, min_width=190, elem_id="gs-chat-clear")
    with gr.Row(elem_classes=["gs-chat-row"], equal_height=True):
        slots, heads, bots = [], [], []
        for j in range(MAX_COLUMNS):
            with gr.Column(visible=j < len(cols0), min_width=220, elem_classes=["gs-chat-slot"]) as slot:
                heads.append(gr.Markdown(column_title(studio, cols0[j]) if j < len(cols0) else "",
                                         elem_classes=["gs-col-head"], elem_id=f"gs-chat-head-{j}"))
                bots.append(gr.Chatbot(
                    [], show_label=False, height=CHATBOT_HEIGHT, elem_id=f"gs-chat-col-{j}", elem_classes=["gs-chat-col"],
                    buttons=["copy"], feedback_options=None, layout="bubble", placeholder="Answers stream here.",
                    allow_file_downloads=False,
                ))
            slots.append(slot)
    # any file is accepted by the box and checked by the app, which says in a sentence what is wrong
    box = gr.MultimodalTextbox(
        placeholder="Ask something; attach an image with the clip button", file_count="single",
        sources=["upload"], show_label=False, elem_id="gs-chat-input", max_plain_text_length=8000, submit_btn="Send",
    )
    with gr.Row(elem_classes=["gs-controls"]):
        stop_btn = gr.Button("■ Stop", variant="stop", size="sm", elem_id="gs-chat-stop")
        retry_btn = gr.Button("↻ Retry", size="sm", visible=False, variant="primary", elem_id="gs-chat-retry")
        regen_btn = gr.Button("↻ Regenerate", size="sm", elem_id="gs-chat-regen")
        status = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-chat-status")
    if ctx.examples:
        gr.Examples(
            examples=[[{"text": e["text"], "files": [e["image"]] if e["image"] else []}] for e in ctx.examples],
            example_labels=[e["label"] for e in ctx.examples], inputs=[box], label="Example prompts",
            examples_per_page=8,
        )

    def check_columns(cols) -> list[str]:
        cols = list(dict.fromkeys(cols or []))
        if not cols:
            raise ValueError("choose at least one column (model) to chat with")
        if len(cols) > MAX_COLUMNS:
            raise ValueError(f"{len(cols)} columns chosen; at most {MAX_COLUMNS} fit side by side")
        unknown = [c for c in cols if c not in studio.chat_names()]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; available: {studio.chat_names()}")
        return cols

    def settings_of(max_new, temperature, greedy) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=max_new, temperature=temperature, greedy=bool(greedy))

    def stream(sess: SideBySide, cols, settings, request):
        stop = ctx.new_stop(request, "chat")  # already set when Stop was pressed while this waited in the queue
        last = 0.0
        update = None
        t0 = time.perf_counter()
        try:
            for update in sess.run(studio.pool, cols, settings, stop):
                now = time.perf_counter()
                if now - last >= MIN_INTERVAL_S or update.finished:
                    last = now
                    yield [sess] + displays(sess, cols, update) + [_status(update, now - t0)] + titles(studio, cols, sess)
        finally:
            ctx.finish(request, "chat", stop)
        yield ([sess] + displays(sess, cols) + [_status(update, time.perf_counter() - t0) if update else ""]
               + titles(studio, cols, sess))

    @guarded(2 * MAX_COLUMNS + 3, status=MAX_COLUMNS + 1)
    def send(value, sess, cols, max_new, temperature, greedy, request: gr.Request):
        try:
            cols = check_columns(cols)
            text, image = prompt_of(value, ctx.check_image, per="message")
            settings = settings_of(max_new, temperature, greedy)
            sess.ask(text, image)
        except Exception:
            ctx.finish(request, "chat")  # nothing runs: a later Stop has nothing to stop
            raise
        yield [sess] + displays(sess, cols) + ["starting…"] + titles(studio, cols, sess) + [gr.update(value=None)]
        for item in stream(sess, cols, settings, request):
            yield item + [gr.update()]

    @guarded(2 * MAX_COLUMNS + 2, status=MAX_COLUMNS + 1)
    def regenerate(sess, cols, max_new, temperature, greedy, request: gr.Request):
        try:
            cols = check_columns(cols)
            sess.reopen_last()
        except Exception:
            ctx.finish(request, "chat")
            raise
        yield from stream(sess, cols, settings_of(max_new, temperature, greedy), request)

    def stop(request: gr.Request):
        # only a request still queued or answering is stopped; finished answers keep their status
        return "■ stopping…" if ctx.stop(request, "chat") else gr.skip()

    def clear(cols, request: gr.Request):
        ctx.stop(request, "chat")
        return [SideBySide()] + [[] for _ in range(MAX_COLUMNS)] + ["New conversation: no earlier turns."] + titles(studio, cols)

    # a request whose columns are all remote skips the GPU line (ui/admission.py)
    ctx.remote_routes["chat"] = lambda data: studio.pool.all_remote(data[2])
    ctx.remote_routes["regenerate"] = lambda data: studio.pool.all_remote(data[1])
    outs = [session] + bots + [status] + heads

    def arm(request: gr.Request):  # beside the queued request: a Stop while it waits is seen when it starts
        ctx.arm(request, "chat")

    private = dict(api_visibility="private", queue=False, show_progress="hidden")
    for trigger in (box.submit, retry_btn.click, regen_btn.click):
        trigger(arm, None, None, **private)
    send_inputs = [box, session, columns, max_new, temperature, greedy]
    sent = box.submit(send, send_inputs, outs + [box], api_name="chat", show_progress_on=[status], **ctx.gpu)
    retried = retry_btn.click(send, send_inputs, outs + [box], api_visibility="private", show_progress_on=[status],
                              **ctx.gpu)
    wire_retry(ctx, [sent, retried], box, status, retry_btn)
    regen_btn.click(regenerate, [session, columns, max_new, temperature, greedy], outs,
                    api_name="regenerate", show_progress_on=[status], **ctx.gpu)
    # Stop runs outside the GPU queue (its own group, no limit) so it is never stuck behind the work it stops
    stop_btn.click(stop, None, status, api_name="stop", concurrency_limit=None, queue=False)
    new_btn.click(clear, columns, outs, api_name="clear", concurrency_limit=None, queue=False)

    def on_columns(sess, cols):
        vis, heads_ = slot_updates(studio, cols, sess)
        return vis + heads_ + displays(sess, cols)

    columns.change(on_columns, [session, columns], slots + heads + bots,
                   api_visibility="private", queue=False, show_progress="hidden")

    def refresh(current):
        names = studio.chat_names()
        keep = [c for c in (current or []) if c in names]
        new_variants = [v for v in list(studio.variants)[-1:] if v not in keep]
        value = (keep + new_variants)[:MAX_COLUMNS] if keep else default_columns(studio)
        return choices_update(names, value=value)

    ctx.on_models_changed(refresh, [columns], inputs=[columns])


def _status(update, seconds: float) -> str:
    if update is None:
        return ""
    n = len(update.names)
    done = sum(s == "done" for s in update.status)
    errors = sum(s == "error" for s in update.status)
    stopped = sum(s == "stopped" for s in update.status)
    if update.finished:
        parts = [f"{done}/{n} answered in {seconds:.1f} s"]
        if stopped:
            parts.append(f"{stopped} stopped")
        if errors:
            parts.append(f"⚠ {errors} failed")
        return " · ".join(parts)
    loading = [nm for nm, s in zip(update.names, update.status) if s == "loading"]
    return f"loading {', '.join(loading)}…" if loading else f"generating… {seconds:.1f} s"

