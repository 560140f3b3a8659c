"""One browser session of the arena: the battle, its turns, the vote and the receipt (gradio-free).

The counterpart of chat/session.py for the Arena tab (ui/arena.py renders it). A prompt
goes to two variants drawn from the chosen pool (`battle.start_battle`, random sides), or
to a named pair; both answers stream in (`stream_turn`). The vote is committed to the store
first (`record_battle_vote` returns once the row is durable); only then does `reveal` hand
out the names. A repeated vote for the same turn returns the stored vote unchanged. After a
blind vote the next prompt starts a new battle; prompts sent before voting continue the same
battle as a multi-turn conversation, and the vote then judges the last turn. The battle
(with the names) lives only in this server-side state; in blind mode a failing side shows a
neutral message (a load error would name the model).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from graft_ui.arena.battle import Battle, Variant, named_battle, record_battle_vote, reveal, start_battle
from graft_ui.arena.battle import Turn as BattleTurn
from graft_ui.arena.store import VOTE_CHOICES
from graft_ui.chat import GenerationSettings, SideBySide, StreamUpdate

log = logging.getLogger(__name__)

BLIND, NAMED = "Blind battle", "Named side by side"
MODES = (BLIND, NAMED)
MAX_NOTE_CHARS = 2000
_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9 _.+-]{0,31}$")
FAILED_BLIND = "⚠ this model could not answer (the reason is in the server log; it would reveal the model)"


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
    answered_at: float | None = None  # time.monotonic() when both answers were complete (for read_s)

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
    pair_weights: Callable[[list[str]], dict] | None = None,
    admit_battle: Callable[[], None] | None = None,
) -> ArenaState:
    """Add a prompt: continue the current battle, or start a new one (new pair, cleared chat) when
    the last blind turn was voted, the mode or the named pair changed, or the pool lost a side.
    `pair_weights(pool)` gives the blind pair's draw weights (None: uniform); `admit_battle()` is called
    before a new battle starts and raises to refuse it (the rate limit)."""
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
        if admit_battle is not None:
            admit_battle()
        if mode == BLIND:
            weights = pair_weights(pool) if pair_weights is not None else None
            battle = start_battle([variant_of(studio, n) for n in pool], rng, weights)
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
    state.answered_at = None if failed else time.monotonic()


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
    voter_id: str | None = None,
):
    """Commit the vote of the current turn, then reveal. Returns (stored Vote, Reveal).
    `voter_id` names the browser session (stored hashed); the time since both answers were
    complete goes with the vote (`read_s`), so votes cast faster than one could read are marked.

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
        client_address=client_address, voter_id=voter_id,
        read_s=None if state.answered_at is None else round(time.monotonic() - state.answered_at, 3),
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


# ---- what the two sides show -------------------------------------------------------------


def labels(state: ArenaState) -> tuple[str, str]:
    if state.battle is None:
        return "Model A", "Model B"
    a, b = state.names
    if not state.battle.blind:
        return f"A · {a}", f"B · {b}"
    if state.phase == "voted":
        return f"Model A · {a}", f"Model B · {b}"
    return "Model A", "Model B"


def views(state: ArenaState, live: StreamUpdate | None = None) -> list:
    if state.battle is None:
        return [[], []]
    return [state.chat.display(n, live) for n in state.names]


def can_vote(state: ArenaState) -> bool:
    return state.phase == "answered"
