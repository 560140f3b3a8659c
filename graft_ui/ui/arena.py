"""Arena tab: blind battles between two variants of the pool, one vote per turn, names after the vote.

Flow: a prompt (text + optional image) goes to two variants drawn from the chosen pool
(`graft_ui.arena.start_battle`, random sides) and both answers stream in as "Model A" and
"Model B". The vote (A / B / tie / both bad, with an optional note and the voter's declared
expertise) is committed to the store first (`record_battle_vote` returns once the row is
durable); only then does `reveal` hand out the names and the buttons lock. A repeated vote
for the same turn (double click, retried request) returns the stored vote unchanged.
After a blind vote the next prompt starts a new battle (a new pair, names hidden again);
prompts sent before voting continue the same battle as a multi-turn conversation, and the
vote then judges the last turn. The named side-by-side mode shows the names from the start;
its votes are stored with blind=False and do not count for the leaderboard.

The battle (with the names) lives only in the server-side session state (`gr.State`); what
reaches the browser before the vote is the side labels and the answers. In blind mode a
failing side shows a neutral message (a load error would name the model).

Each client address may start only so many new battles and cast so many votes (ctx.limiter,
`--arena-rate`; loopback exempt by default): over the limit the send or vote is refused with a
sentence saying when to try again. A blind battle's pair is drawn by the adaptive pairing weights
of the counted votes unless the operator chose "uniform" (Leaderboard tab, ctx.pairing). The vote
carries the browser session (hashed in the store) and the time the voter had to read the answers.

API (gradio_client): `/arena_send` (prompt dict {"text", "files"}, mode, pool, named A, named B,
domain, max new tokens, temperature, greedy), `/arena_vote` (choice a|b|tie|both_bad, note,
expertise; returns the receipt as its last output), `/arena_new`. State is per client session.
"""

from __future__ import annotations

import logging
import time

import gradio as gr

from graft_ui.arena.session import (
    ArenaState,
    BLIND,
    MAX_NOTE_CHARS,
    MODES,
    NAMED,
    begin_turn,
    can_vote,
    cast_vote,
    default_pool,
    domain_choices,
    labels,
    pool_choices,
    stream_turn,
    views,
)
from graft_ui.arena.store import VOTE_CHOICES
from graft_ui.chat import MAX_NEW_TOKENS_CAP, GenerationSettings, StreamUpdate
from graft_ui.ui.admission import CLEAR_BOX_JS, wire_retry
from graft_ui.ui.common import choices_update, friendly, hint, ok, prompt_of, warn
from graft_ui.ui.context import AppContext

log = logging.getLogger(__name__)

TITLE = "⑤ Arena"
# plain symbols, not emoji: they render without an emoji font (headless browsers, minimal Linux desktops)
VOTE_BUTTONS = (("a", "◀  A is better"), ("b", "B is better  ▶"), ("tie", "=  Tie"),
                ("both_bad", "✗  Both are bad"))
MIN_INTERVAL_S = 0.15  # at most ~7 UI updates a second while streaming; the final state always goes out
CHATBOT_HEIGHT = 340


# ---- views -------------------------------------------------------------------------------


def client_of(request) -> str | None:
    return getattr(getattr(request, "client", None), "host", None) if request is not None else None



def side_md(label: str) -> str:
    return f"### {label}"


def reveal_md(state: ArenaState, repeated: bool = False) -> str:
    if state.phase != "voted" or state.receipt is None:
        if state.battle is not None and state.battle.blind and state.phase == "answered":
            return "Which answer is better? Names are shown once your vote is saved."
        return ""
    r = state.receipt
    verdict = {"a": f"you preferred **{r['variant_a']}** (A)", "b": f"you preferred **{r['variant_b']}** (B)",
               "tie": "you called it a **tie**", "both_bad": "you found **both bad**"}[r["vote"]]
    if r["blind"]:
        text = f"Model A was **{r['variant_a']}**, Model B was **{r['variant_b']}**: {verdict}."
        tail = " Send another prompt for a new battle."
    else:
        text = f"{verdict[0].upper()}{verdict[1:]}. Named comparisons are stored but not counted on the leaderboard."
        tail = ""
    saved = "Already recorded for this turn (counted once)." if repeated else f"Vote #{r['id']} saved."
    return ok(f"{text} {saved}{tail}")


def status_md(state: ArenaState, seconds: float | None = None) -> str:
    if state.phase == "generating":
        return f"generating… {seconds:.1f} s" if seconds is not None else "generating…"
    if state.phase == "failed":
        sides = " and ".join(f"Model {s.upper()}" for s in state.errors) or "a model"
        return warn(f"{sides} could not answer (or the answers were cut off): start a new battle")
    if state.phase == "answered":
        return f"answered in {seconds:.1f} s" if seconds is not None else "answered"
    return ""


# ---- the tab -------------------------------------------------------------------------------


def render(ctx: AppContext) -> None:
    studio = ctx.studio
    hint("Two models answer the same prompt. In a **blind battle** they are drawn from the pool below and shown as "
         "Model A and Model B; their names appear once your vote is saved, and only blind votes count for the "
         "leaderboard. **Named side by side** compares two chosen models openly.")
    state = gr.State(ArenaState())
    domains = domain_choices(studio)
    with gr.Row(equal_height=False):
        mode = gr.Radio(list(MODES), value=BLIND, label="Mode", elem_id="gs-arena-mode", scale=2, min_width=260)
        domain = gr.Dropdown(domains, value=None, label="Prompt domain (optional)", allow_custom_value=True,
                             info="filled in by the examples; lets the leaderboard filter by domain",
                             elem_id="gs-arena-domain", scale=2, min_width=220)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=260):
            with gr.Accordion("Pool for blind battles", open=False) as pool_box:
                pool = gr.CheckboxGroup(pool_choices(studio), value=default_pool(studio), show_label=False,
                                        info="two different models are drawn per battle, sides at random",
                                        elem_id="gs-arena-pool")
            with gr.Row(visible=False) as named_row:
                names0 = pool_choices(studio)
                named_a = gr.Dropdown(names0, value=names0[0] if names0 else None, label="Left (A)",
                                      elem_id="gs-arena-named-a")
                named_b = gr.Dropdown(names0, value=names0[1] if len(names0) > 1 else None, label="Right (B)",
                                      elem_id="gs-arena-named-b")
        with gr.Column(scale=2, min_width=260):
            with gr.Accordion("Generation settings (same for both sides)", open=False):
                with gr.Row():
                    max_new = gr.Slider(1, MAX_NEW_TOKENS_CAP, value=128, step=1, label="max new tokens",
                                        elem_id="gs-arena-max-new", min_width=200)
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature", min_width=200)
                    greedy = gr.Checkbox(True, label="greedy", info="off = sample with the temperature")
    # The side names are Markdown headers, not Chatbot labels: changing a label is a component update,
    # which gradio 6 serves by rebuilding the Chatbot for the session; a Markdown value is cheap.
    heads, bots_ = [], []
    with gr.Row(equal_height=True, elem_classes=["gs-chat-row"]):
        for side in ("a", "b"):
            with gr.Column(scale=1, min_width=260):
                heads.append(gr.Markdown(side_md(f"Model {side.upper()}"), elem_id=f"gs-arena-head-{side}",
                                         elem_classes=["gs-section-title"]))
                bots_.append(gr.Chatbot([], show_label=False, height=CHATBOT_HEIGHT, elem_id=f"gs-arena-{side}",
                                        elem_classes=["gs-chat-col"], buttons=["copy"], feedback_options=None,
                                        layout="bubble", placeholder=f"Model {side.upper()} answers here."))
    head_a, head_b = heads
    bot_a, bot_b = bots_
    # any file is accepted by the box and checked by the app, which says in a sentence what is wrong
    box = gr.MultimodalTextbox(
        placeholder="Ask both models something; attach an image with the clip button",
        file_count="single", sources=["upload"], show_label=False, elem_id="gs-arena-input", max_plain_text_length=8000,
        submit_btn="Send",
    )
    with gr.Group(elem_id="gs-arena-vote"):
        with gr.Row(equal_height=True):
            buttons = [gr.Button(text, interactive=False, elem_id=f"gs-arena-vote-{key}", min_width=120,
                                 variant="primary" if key in ("a", "b") else "secondary")
                       for key, text in VOTE_BUTTONS]
        with gr.Row(equal_height=True):
            expertise = gr.Dropdown(domains, value=None, label="Your expertise (optional)", scale=1, min_width=200,
                                    info="lets the leaderboard filter by voter",
                                    elem_id="gs-arena-expertise")
            note = gr.Textbox(label="Note (optional, saved with your vote)", lines=1, max_lines=3, scale=3,
                              max_length=MAX_NOTE_CHARS, placeholder="why one answer is better…",
                              elem_id="gs-arena-note")
    reveal_box = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-arena-reveal")
    with gr.Row(elem_classes=["gs-controls"]):
        stop_btn = gr.Button("■ Stop", variant="stop", size="sm", elem_id="gs-arena-stop", scale=0, min_width=90)
        retry_btn = gr.Button("↻ Retry", size="sm", visible=False, variant="primary", elem_id="gs-arena-retry",
                              scale=0, min_width=90)
        new_btn = gr.Button("↻ New battle", size="sm", elem_id="gs-arena-new", scale=0, min_width=130)
        status = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-arena-status")
    if ctx.examples:
        gr.Examples(
            examples=[[{"text": e["text"], "files": [e["image"]] if e["image"] else []}, e.get("domain")]
                      for e in ctx.examples],
            example_labels=[e["label"] for e in ctx.examples], inputs=[box, domain], label="Example prompts",
            examples_per_page=8,
        )
    # the API's vote input (the four buttons each send their own choice)
    api_choice = gr.Radio(list(VOTE_CHOICES), value="a", visible=False, label="vote")
    api_vote_btn = gr.Button("vote", visible=False)
    receipt = gr.JSON(None, visible=False, label="receipt")

    same_buttons = [text for _, text in VOTE_BUTTONS]

    def vote_buttons(st: ArenaState, enabled: bool | None) -> list:
        """Lock/unlock the buttons only when that changes what the session shows: any update dict
        (even gr.skip()) makes gradio 6 rebuild the component; a plain value (the same text) does not."""
        if enabled is None or st.ui_votable is enabled:
            return list(same_buttons)
        st.ui_votable = enabled
        return [gr.update(interactive=enabled) for _ in buttons]

    def sides(st: ArenaState, live: StreamUpdate | None = None) -> list:
        """Headers and answers as plain values (cheap to send, see vote_buttons)."""
        la, lb = labels(st)
        return [side_md(la), side_md(lb)] + views(st, live)

    # ---- send --------------------------------------------------------------------------

    @friendly
    def send(value, st, mode_, pool_, a_, b_, domain_, max_new_, temperature_, greedy_, request: gr.Request):
        st = st if isinstance(st, ArenaState) else ArenaState()
        try:
            text, image = prompt_of(value, ctx.check_image, per="prompt")
            settings = GenerationSettings(max_new_tokens=max_new_, temperature=temperature_, greedy=bool(greedy_))
            begin_turn(studio, st, text=text, image=image, mode=mode_, pool=pool_, named_a=a_, named_b=b_,
                       domain=domain_, settings=settings, pair_weights=_weights,
                       admit_battle=lambda: _limit("battles", request))
        except Exception:
            ctx.finish(request, "arena")  # nothing runs: a later Stop has nothing to stop
            raise
        stop = ctx.new_stop(request, "arena")  # already set when Stop was pressed while this waited in the queue
        try:
            yield from _stream(st, stop)
        finally:
            ctx.finish(request, "arena", stop)

    def _weights(pool_):
        from graft_ui.arena.board import counted_votes  # numpy/scipy load with the first blind battle
        from graft_ui.arena.pairing import UNIFORM, pair_weights

        if ctx.pairing == UNIFORM:
            return None  # the plain uniform draw (battle.sample_pair)
        store = ctx.vote_store()
        return pair_weights(counted_votes(store.votes(blind=True), store.marks("voter")), pool_)

    def _limit(kind: str, request) -> None:
        if ctx.limiter is not None:
            ctx.limiter.check(kind, client_of(request))

    def _stream(st, stop):
        t0 = time.perf_counter()
        yield [st] + sides(st) + vote_buttons(st, False) + ["", status_md(st, 0.0), None]
        last, epoch = 0.0, st.epoch
        for update in stream_turn(studio, st, stop):
            if st.epoch != epoch:
                return  # "New battle" was pressed: its frame stands, this turn is dropped
            now = time.perf_counter()
            if now - last >= MIN_INTERVAL_S and not update.finished:
                last = now
                yield [st] + sides(st, update) + vote_buttons(st, None) + ["", status_md(st, now - t0), None]
        if st.epoch != epoch:
            return
        yield ([st] + sides(st) + vote_buttons(st, can_vote(st)) +
               [reveal_md(st), status_md(st, time.perf_counter() - t0), None])

    send_outputs = [state, head_a, head_b, bot_a, bot_b] + buttons + [reveal_box, status, receipt]
    send_inputs = [box, state, mode, pool, named_a, named_b, domain, max_new, temperature, greedy]
    def arm(request: gr.Request):  # beside the queued request: a Stop while it waits is seen when it starts
        ctx.arm(request, "arena")

    private = dict(api_visibility="private", queue=False, show_progress="hidden")
    for trigger in (box.submit, retry_btn.click):
        trigger(arm, None, None, **private)
    sent = box.submit(send, send_inputs, send_outputs, api_name="arena_send", show_progress_on=[status], **ctx.gpu)
    retried = retry_btn.click(send, send_inputs, send_outputs, api_visibility="private", show_progress_on=[status],
                              **ctx.gpu)
    # battles whose possible sides are all remote skip the GPU line (ui/admission.py)
    ctx.remote_routes["arena_send"] = lambda data: studio.pool.all_remote(data[3] if data[2] == BLIND else data[4:6])
    # the prompt box empties at once, in the browser (its value was already taken by the send above); a
    # send refused for capacity puts it back (wire_retry), always after this since it needs a round trip
    for trigger in (box.submit, retry_btn.click):
        trigger(None, None, box, js=CLEAR_BOX_JS, **private)
    wire_retry(ctx, [sent, retried], box, status, retry_btn)

    # ---- vote ----------------------------------------------------------------------------

    @friendly
    def vote(choice, note_, expertise_, st, request: gr.Request):
        st = st if isinstance(st, ArenaState) else ArenaState()
        if st.phase == "answered":  # a repeated submit of a voted turn is answered, never counted again
            _limit("votes", request)
        stored, _ = cast_vote(ctx.vote_store(), st, choice, note=note_, expertise=expertise_,
                              client_address=client_of(request), voter_id=getattr(request, "session_hash", None))
        return ([st] + sides(st) + vote_buttons(st, False) +
                [reveal_md(st, repeated=not stored.new), "", st.receipt])

    vote_outputs = [state, head_a, head_b, bot_a, bot_b] + buttons + [reveal_box, status, receipt]

    def vote_for(choice: str):
        def on_click(note_, expertise_, st, request: gr.Request):
            return vote(choice, note_, expertise_, st, request)

        return on_click

    for (key, _), btn in zip(VOTE_BUTTONS, buttons):
        # queue=False: a vote never waits behind generations in the queue (the store serialises writes)
        btn.click(vote_for(key), [note, expertise, state], vote_outputs, api_visibility="private", queue=False,
                  show_progress="minimal")
    # queue=False like the buttons: an API vote is never refused for capacity
    api_vote_btn.click(vote, [api_choice, note, expertise, state], vote_outputs, api_name="arena_vote",
                       queue=False, show_progress="hidden")

    # ---- new battle, stop, mode ---------------------------------------------------------------

    def new_battle(st, request: gr.Request):
        ctx.stop(request, "arena")
        st = st if isinstance(st, ArenaState) else ArenaState()
        st.reset()  # in place: a send still streaming sees the new epoch and stops writing
        return [st] + sides(st) + [gr.update(interactive=False) for _ in buttons] + ["", "", None, ""]

    new_btn.click(new_battle, state, vote_outputs + [note], api_name="arena_new", queue=False)

    def stop(request: gr.Request):
        # only a battle still queued or answering is stopped; finished answers keep their status
        return "■ stopping…" if ctx.stop(request, "arena") else gr.skip()

    stop_btn.click(stop, None, status, api_visibility="private", queue=False, concurrency_limit=None)

    def on_mode(m):
        return gr.update(visible=m == BLIND), gr.update(visible=m == NAMED)

    mode.change(on_mode, mode, [pool_box, named_row], api_visibility="private", queue=False, show_progress="hidden")

    def refresh(current_pool, a_, b_):
        names = pool_choices(studio)
        keep = [p for p in (current_pool or []) if p in names]
        new_fused = [v for v in studio.variants if v in names and v not in keep]
        value = keep + new_fused if len(keep) >= 2 else default_pool(studio)
        return (choices_update(names, value=value),
                choices_update(names, value=names[0] if names else None, keep=a_),
                choices_update(names, value=names[1] if len(names) > 1 else None, keep=b_))

    ctx.on_models_changed(refresh, [pool, named_a, named_b], inputs=[pool, named_a, named_b])
