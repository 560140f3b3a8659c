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

API (gradio_client): `/arena_send` (prompt dict {"text", "files"}, mode, pool, named A, named B,
domain, max new tokens, temperature, greedy), `/arena_vote` (choice a|b|tie|both_bad, note,
expertise; returns the receipt as its last output), `/arena_new`. State is per client session.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import gradio as gr

from graft_ui.arena import Battle, Variant, named_battle, record_battle_vote, reveal, start_battle
from graft_ui.arena import Turn as BattleTurn
from graft_ui.arena.store import VOTE_CHOICES
from graft_ui.chat import MAX_NEW_TOKENS_CAP, GenerationSettings, SideBySide, StreamUpdate
from graft_ui.ui.common import choices_update, friendly, hint, ok, warn
from graft_ui.ui.context import AppContext

log = logging.getLogger(__name__)

TITLE = "⑤ Arena"
BLIND, NAMED = "Blind battle", "Named side by side"
MODES = (BLIND, NAMED)
# plain symbols, not emoji: they render without an emoji font (headless browsers, minimal Linux desktops)
VOTE_BUTTONS = (("a", "◀  A is better"), ("b", "B is better  ▶"), ("tie", "=  Tie"),
                ("both_bad", "✗  Both are bad"))
MIN_INTERVAL_S = 0.15  # at most ~7 UI updates a second while streaming; the final state always goes out
MAX_NOTE_CHARS = 2000
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9 _.+-]{0,31}$")
FAILED_BLIND = "⚠ this model could not answer (the reason is in the server log; it would reveal the model)"
CHATBOT_HEIGHT = 420


# ---- session state (plain data; one per browser session) ------------------------------


@dataclass
class ArenaState:
    """One browser session's battle. The names stay here, server-side."""

    battle: Battle | None = None
    chat: SideBySide = field(default_factory=SideBySide)
    turn: BattleTurn | None = None
    phase: str = "idle"  # idle | generating | answered | failed | voted
    domain: str | None = None
    settings: dict = field(default_factory=dict)
    receipt: dict | None = None  # the stored vote of the current turn
    errors: dict = field(default_factory=dict)  # side -> the real error (logged, never shown in blind mode)
    ui_votable: bool | None = None  # whether this session's vote buttons are shown enabled (None: unknown)
    epoch: int = 0  # bumped by reset(): a generation still running for the old battle stops writing here

    def reset(self) -> None:
        """Forget the battle in place (New battle); the session keeps this object."""
        epoch = self.epoch + 1
        self.__init__()
        self.epoch, self.ui_votable = epoch, False

    @property
    def names(self) -> tuple[str, str]:
        return (self.battle.variant_a.id, self.battle.variant_b.id) if self.battle else ("", "")

    @property
    def blind(self) -> bool:
        return self.battle is None or self.battle.blind

    @property
    def revealed(self) -> bool:
        return self.battle is not None and (not self.battle.blind or self.phase == "voted")


# ---- choices ---------------------------------------------------------------------------


def pool_choices(studio) -> list[str]:
    """Everything that can battle: base, experts, fused variants."""
    return list(studio.chat_names())


def default_pool(studio) -> list[str]:
    """Base, LoRA experts and fused variants: they share one loaded base, so battles are quick.
    Full fine-tunes are offered too but not ticked (each is a separate model in memory)."""
    names = pool_choices(studio)
    chosen = [studio.manifest.base.name] + studio.expert_names("lora") + list(studio.variants)
    chosen = [n for n in dict.fromkeys(chosen) if n in names]
    return chosen if len(chosen) >= 2 else names


def domain_choices(studio) -> list[str]:
    """The model set's domains (experts and datasets), then 'other': for the prompt domain and expertise."""
    found = [e.domain for e in studio.manifest.experts if e.domain] + list(studio.dataset_names())
    return sorted(dict.fromkeys(d.strip().lower() for d in found if d and d.strip())) + ["other"]


def clean_label(value: Any, what: str) -> str | None:
    """An optional short label (domain, expertise): lower case, 1-32 plain characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what}={value!r} must be text")
    value = value.strip().lower()
    if not value:
        return None
    if not _LABEL_RE.match(value):
        raise ValueError(f"{what}={value[:40]!r} is not a short label (letters, digits, space, _ . + -; at most 32)")
    return value


def variant_of(studio, name: str) -> Variant:
    """A battle contestant; a fused variant carries its recipe into every vote."""
    fused = studio.variants.get(name)
    return Variant(name, fused.recipe if fused is not None else None)


def check_pool(studio, pool: Sequence[str] | None) -> list[str]:
    pool = list(dict.fromkeys(pool or []))
    unknown = [p for p in pool if p not in pool_choices(studio)]
    if unknown:
        raise ValueError(f"unknown model(s) in the pool: {unknown}; available: {pool_choices(studio)}")
    if len(pool) < 2:
        raise ValueError("tick at least two models in the pool: a battle needs two")
    return pool


# ---- the turn: start, stream, vote (gradio-free, so tests can drive them) ----------------


def begin_turn(
    studio,
    state: ArenaState,
    *,
    text: str,
    image: str | None,
    mode: str,
    pool: Sequence[str] | None,
    named_a: str | None,
    named_b: str | None,
    domain: str | None,
    settings: GenerationSettings,
    rng=None,
) -> ArenaState:
    """Add a prompt: continue the current battle, or start a new one (new pair, cleared chat) when
    the last blind turn was voted, the mode or the named pair changed, or the pool lost a side."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(MODES)}")
    domain = clean_label(domain, "prompt domain")
    if state.phase == "generating":
        raise ValueError("the answers to the last prompt are still streaming: wait, or press Stop")
    b = state.battle
    if mode == BLIND:
        pool = check_pool(studio, pool)
        fresh = b is None or not b.blind or state.phase == "voted" or not set(state.names) <= set(pool)
    else:
        if not named_a or not named_b:
            raise ValueError("choose the two models to compare (left = A, right = B)")
        if named_a == named_b:
            raise ValueError(f"choose two different models; both sides are {named_a!r}")
        check_pool(studio, [named_a, named_b])
        fresh = b is None or b.blind or state.names != (named_a, named_b)
    chat = SideBySide() if fresh else state.chat
    chat.ask(text, image)  # validates the prompt before anything changes
    if fresh:
        if mode == BLIND:
            battle = start_battle([variant_of(studio, n) for n in pool], rng)
        else:
            battle = named_battle(variant_of(studio, named_a), variant_of(studio, named_b))
        state.battle, state.chat = battle, chat
    state.turn = state.battle.new_turn()
    state.phase, state.domain, state.receipt, state.errors = "generating", domain, None, {}
    state.settings = {**asdict(settings), "mode": "blind" if state.battle.blind else "named"}
    return state


def scrub(update: StreamUpdate, state: ArenaState) -> StreamUpdate:
    """The update as the voter may see it: in a blind battle, errors say nothing about the model.
    Always a copy when blind: the pool keeps mutating its update object after yielding it."""
    if not state.blind:
        return update
    return StreamUpdate(list(update.names), list(update.texts), list(update.status),
                        [None if e is None else FAILED_BLIND for e in update.errors])


def stream_turn(studio, state: ArenaState, stop: threading.Event | None = None) -> Iterator[StreamUpdate]:
    """Answer the current turn with both sides; yields scrubbed live updates, ends with the phase set."""
    if state.battle is None or state.turn is None or state.phase != "generating":
        raise ValueError("send a prompt first")
    a, b = state.names
    last, epoch = None, state.epoch
    try:
        for update in state.chat.run(studio.pool, [a, b], GenerationSettings(**_gen_kwargs(state.settings)), stop):
            last = update
            yield scrub(update, state)
    finally:
        # also on a cancelled request (GeneratorExit), so the session is never stuck "generating";
        # unless "New battle" reset the session meanwhile: then this turn is gone
        if state.epoch == epoch:
            _finish_turn(state, last)


def _finish_turn(state: ArenaState, last: StreamUpdate | None) -> None:
    failed = last is None or not last.finished or any(s == "error" for s in last.status)
    if last is not None:
        state.errors = {side: err for side, err in zip("ab", last.errors) if err}
        for side, err in state.errors.items():
            log.warning("arena: side %s of battle %s failed: %s", side, state.battle.battle_id, err)
    if state.blind and state.chat.turns:
        turn = state.chat.turns[-1]
        turn.errors = {n: FAILED_BLIND for n in turn.errors}
    state.phase = "failed" if failed else "answered"


def _gen_kwargs(settings: dict) -> dict:
    keys = ("max_new_tokens", "temperature", "greedy", "top_p", "seed", "ignore_eos")
    return {k: settings[k] for k in keys if k in settings}


def cast_vote(
    store,
    state: ArenaState,
    choice: str,
    *,
    note: str | None = "",
    expertise: str | None = None,
    client_address: str | None = None,
):
    """Commit the vote of the current turn, then reveal. Returns (stored Vote, Reveal).

    Idempotent: once the turn is voted, another call records nothing and returns the stored vote.
    """
    if choice not in VOTE_CHOICES:
        raise ValueError(f"vote={choice!r} is not one of {list(VOTE_CHOICES)}")
    note = (note or "").strip()
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"the note has {len(note)} characters; the limit is {MAX_NOTE_CHARS}")
    expertise = clean_label(expertise, "expertise")
    if state.battle is None or state.turn is None:
        raise ValueError("there is nothing to vote on yet: send a prompt first")
    if state.phase == "generating":
        raise ValueError("wait until both answers are complete before voting")
    if state.phase == "failed":
        raise ValueError("one side could not answer, so this turn cannot be voted: start a new battle")
    last = state.chat.turns[-1]
    a, b = state.names
    vote = record_battle_vote(
        store, state.battle, state.turn, choice,
        prompt=last.text, answer_a=last.answers.get(a, ""), answer_b=last.answers.get(b, ""),
        image=last.image, settings=state.settings, note=note, expertise=expertise, domain=state.domain,
        client_address=client_address,
    )
    shown = reveal(store, state.battle, state.turn)  # raises unless the store holds the committed vote
    state.phase = "voted"
    # the names that reach the browser are the ones read back from the store
    state.receipt = {**receipt_of(shown.stored), "new": vote.new}
    return vote, shown


def receipt_of(vote) -> dict:
    return {"turn_id": vote.turn_id, "battle_id": vote.battle_id, "turn_index": vote.turn_index, "vote": vote.vote,
            "variant_a": vote.variant_a, "variant_b": vote.variant_b, "winner": vote.winner, "blind": vote.blind,
            "new": vote.new, "id": vote.id}


# ---- views -------------------------------------------------------------------------------


def labels(state: ArenaState) -> tuple[str, str]:
    if state.battle is None:
        return "Model A", "Model B"
    a, b = state.names
    if not state.battle.blind:
        return f"A · {a}", f"B · {b}"
    if state.phase == "voted":
        return f"Model A · {a}", f"Model B · {b}"
    return "Model A", "Model B"


def side_md(label: str) -> str:
    return f"### {label}"


def views(state: ArenaState, live: StreamUpdate | None = None) -> list:
    if state.battle is None:
        return [[], []]
    return [state.chat.display(n, live) for n in state.names]


def can_vote(state: ArenaState) -> bool:
    return state.phase == "answered"


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
        with gr.Column(scale=3, min_width=420):
            mode = gr.Radio(list(MODES), value=BLIND, label="Mode", elem_id="gs-arena-mode")
            pool = gr.CheckboxGroup(pool_choices(studio), value=default_pool(studio), label="Pool for blind battles",
                                    info="two different models are drawn per battle, sides at random",
                                    elem_id="gs-arena-pool")
            with gr.Row(visible=False) as named_row:
                names0 = pool_choices(studio)
                named_a = gr.Dropdown(names0, value=names0[0] if names0 else None, label="Left (A)",
                                      elem_id="gs-arena-named-a")
                named_b = gr.Dropdown(names0, value=names0[1] if len(names0) > 1 else None, label="Right (B)",
                                      elem_id="gs-arena-named-b")
        with gr.Column(scale=2, min_width=320):
            domain = gr.Dropdown(domains, value=None, label="Prompt domain (optional)", allow_custom_value=True,
                                 info="filled in by the examples; lets the leaderboard filter by domain",
                                 elem_id="gs-arena-domain")
            with gr.Accordion("Generation settings (same for both sides)", open=False):
                with gr.Row():
                    max_new = gr.Slider(1, MAX_NEW_TOKENS_CAP, value=128, step=1, label="max new tokens",
                                        elem_id="gs-arena-max-new")
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature")
                    greedy = gr.Checkbox(True, label="greedy", info="off = sample with the temperature")
    # The side names are Markdown headers, not Chatbot labels: changing a label is a component update,
    # which gradio 6 serves by rebuilding the Chatbot for the session; a Markdown value is cheap.
    heads, bots_ = [], []
    with gr.Row(equal_height=True, elem_classes=["gs-chat-row"]):
        for side in ("a", "b"):
            with gr.Column(scale=1, min_width=280):
                heads.append(gr.Markdown(side_md(f"Model {side.upper()}"), elem_id=f"gs-arena-head-{side}",
                                         elem_classes=["gs-section-title"]))
                bots_.append(gr.Chatbot([], show_label=False, height=CHATBOT_HEIGHT, elem_id=f"gs-arena-{side}",
                                        elem_classes=["gs-chat-col"], buttons=["copy"], feedback_options=None,
                                        layout="bubble", placeholder=f"Model {side.upper()} answers here."))
    head_a, head_b = heads
    bot_a, bot_b = bots_
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
    box = gr.MultimodalTextbox(
        placeholder="Ask both models something; attach an image with the clip button", file_types=["image"],
        file_count="single", sources=["upload"], show_label=False, elem_id="gs-arena-input", max_plain_text_length=8000,
        submit_btn="Send",
    )
    with gr.Row(elem_classes=["gs-controls"]):
        stop_btn = gr.Button("■ Stop", variant="stop", size="sm", elem_id="gs-arena-stop", scale=0, min_width=90)
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
        value = value or {}
        text, files = (value.get("text") or ""), list(value.get("files") or [])
        if len(files) > 1:
            raise ValueError("attach at most one image per prompt")
        image = None
        if files:
            f = files[0]
            image = ctx.check_image(f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else f.path))
        settings = GenerationSettings(max_new_tokens=int(max_new_), temperature=float(temperature_),
                                      greedy=bool(greedy_))
        st = st if isinstance(st, ArenaState) else ArenaState()
        begin_turn(studio, st, text=text, image=image, mode=mode_, pool=pool_, named_a=a_, named_b=b_,
                   domain=domain_, settings=settings)
        stop = ctx.new_stop(request)
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
    box.submit(send, send_inputs, send_outputs, api_name="arena_send", **ctx.gpu)
    # the prompt box empties at once (its value was already taken by the send above)
    box.submit(lambda: None, None, box, api_visibility="private", queue=False, show_progress="hidden")

    # ---- vote ----------------------------------------------------------------------------

    @friendly
    def vote(choice, note_, expertise_, st, request: gr.Request):
        st = st if isinstance(st, ArenaState) else ArenaState()
        address = getattr(getattr(request, "client", None), "host", None) if request is not None else None
        stored, _ = cast_vote(ctx.vote_store(), st, choice, note=note_, expertise=expertise_,
                              client_address=address)
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
    api_vote_btn.click(vote, [api_choice, note, expertise, state], vote_outputs, api_name="arena_vote",
                       concurrency_limit=None, concurrency_id="arena_vote", show_progress="hidden")

    # ---- new battle, stop, mode ---------------------------------------------------------------

    def new_battle(st, request: gr.Request):
        ctx.stop(request)
        st = st if isinstance(st, ArenaState) else ArenaState()
        st.reset()  # in place: a send still streaming sees the new epoch and stops writing
        return [st] + sides(st) + [gr.update(interactive=False) for _ in buttons] + ["", "", None, ""]

    new_btn.click(new_battle, state, vote_outputs + [note], api_name="arena_new", queue=False)

    def stop(request: gr.Request):
        ctx.stop(request)
        return "■ stopped"

    stop_btn.click(stop, None, status, api_visibility="private", queue=False, concurrency_limit=None)

    def on_mode(m):
        return gr.update(visible=m == BLIND), gr.update(visible=m == NAMED)

    mode.change(on_mode, mode, [pool, named_row], api_visibility="private", queue=False, show_progress="hidden")

    def refresh(current_pool, a_, b_):
        names = pool_choices(studio)
        keep = [p for p in (current_pool or []) if p in names]
        new_fused = [v for v in studio.variants if v in names and v not in keep]
        value = keep + new_fused if len(keep) >= 2 else default_pool(studio)
        return (choices_update(names, value=value),
                choices_update(names, value=names[0] if names else None, keep=a_),
                choices_update(names, value=names[1] if len(names) > 1 else None, keep=b_))

    ctx.on_models_changed(refresh, [pool, named_a, named_b], inputs=[pool, named_a, named_b])
