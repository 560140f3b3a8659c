"""Blind battles: two variants drawn from a pool, random sides, names shown only after the vote.

A battle is one pair of variants over one or more turns (prompts); each turn takes one
vote. The pair and the sides come from an injectable RNG (`random.Random`, or a seed),
so a test or a replay gets the same draws. Battle and turn ids are random UUIDs, never
drawn from that RNG: two app instances seeded alike must not mint the same turn id,
since the store keeps only the first vote per turn id.

The names stay on the server (the UI holds the Battle in session state and shows only
`side_labels()`); `reveal()` hands them out only once the store confirms that the turn's
vote is committed. A named side-by-side mode (`named_battle`) records votes flagged
`blind=False`, which the leaderboard ignores.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from graft_ui.arena.store import Vote, VoteStore

log = logging.getLogger(__name__)

BLIND_LABELS = ("Model A", "Model B")


class VoteNotRecordedError(ValueError):
    """Names were asked for before the store confirmed a vote for that turn."""


@dataclass(frozen=True)
class Variant:
    """A battle contestant: its id (the variant name shown after the vote) and, for fused
    variants, the recipe (a Recipe, or its dict) recorded with each vote."""

    id: str
    recipe: Any = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"variant id {self.id!r} must be a non-empty string")


def as_pool(pool: Iterable[Any] | Mapping[str, Any]) -> tuple[Variant, ...]:
    """Normalise a pool: variant ids, `Variant`s, objects with `.name` (e.g. chat
    VariantSpec, with an optional `.recipe`), or a mapping {id: recipe or None}."""
    if isinstance(pool, Mapping):
        items = [Variant(str(k), v) for k, v in pool.items()]
    else:
        items = []
        for item in pool:
            if isinstance(item, Variant):
                items.append(item)
            elif isinstance(item, str):
                items.append(Variant(item))
            elif hasattr(item, "name"):
                items.append(Variant(str(item.name), getattr(item, "recipe", None)))
            else:
                raise ValueError(f"pool entry {item!r} is not a variant id, a Variant or an object with .name")
    ids = [v.id for v in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"variant pool lists {dupes} more than once")
    if len(items) < 2:
        raise ValueError(f"a battle needs a pool of at least two variants; got {ids}")
    return tuple(items)


def _rng(rng: random.Random | int | None) -> random.Random:
    if rng is None:
        return random.Random()
    if isinstance(rng, bool) or not isinstance(rng, (int, random.Random)):
        raise ValueError(f"rng={rng!r} must be a random.Random, an integer seed or None")
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def sample_pair(pool: Iterable[Any] | Mapping[str, Any], rng: random.Random | int | None = None) -> tuple[Variant, Variant]:
    """Two different variants, uniformly over unordered pairs, in random (side A, side B) order."""
    variants = as_pool(pool)
    a, b = _rng(rng).sample(variants, 2)  # sample() returns a random order: the sides
    return a, b


@dataclass(frozen=True)
class Turn:
    battle_id: str
    index: int

    @property
    def turn_id(self) -> str:
        return f"{self.battle_id}:{self.index}"


@dataclass
class Battle:
    """One pair of variants on fixed sides. Keep it server-side; show `side_labels()`."""

    battle_id: str
    variant_a: Variant
    variant_b: Variant
    blind: bool = True
    turns_started: int = field(default=0)

    def new_turn(self) -> Turn:
        turn = Turn(self.battle_id, self.turns_started)
        self.turns_started += 1
        return turn

    def side_labels(self) -> tuple[str, str]:
        """What the UI may show before the vote: 'Model A'/'Model B' when blind."""
        return BLIND_LABELS if self.blind else (self.variant_a.id, self.variant_b.id)

    def __repr__(self) -> str:  # keep names out of logs and tracebacks shown to voters
        names = "hidden" if self.blind else f"{self.variant_a.id} vs {self.variant_b.id}"
        return f"Battle({self.battle_id}, {names}, turns={self.turns_started})"


def weighted_pair(pool: Iterable[Any] | Mapping[str, Any], weights: Mapping[tuple[str, str], float],
                  rng: random.Random | int | None = None) -> tuple[Variant, Variant]:
    """Two variants drawn by pair weight ({(id, id): weight}, e.g. arena.pairing.pair_weights), random sides;
    pairs outside the pool are ignored."""
    variants = {v.id: v for v in as_pool(pool)}
    pairs = [(p, w) for p, w in weights.items() if p[0] in variants and p[1] in variants and w > 0]
    if not pairs:
        raise ValueError(f"no pair of the pool {sorted(variants)} has a positive pairing weight")
    r = _rng(rng)
    (i, j), = r.choices([p for p, _ in pairs], weights=[w for _, w in pairs], k=1)
    return (variants[i], variants[j]) if r.random() < 0.5 else (variants[j], variants[i])


def start_battle(pool: Iterable[Any] | Mapping[str, Any], rng: random.Random | int | None = None,
                 weights: Mapping[tuple[str, str], float] | None = None) -> Battle:
    """A new blind battle between two variants sampled from `pool` (uniformly, or by pair `weights`), sides randomised."""
    a, b = sample_pair(pool, rng) if weights is None else weighted_pair(pool, weights, rng)
    battle = Battle(uuid.uuid4().hex, a, b, blind=True)
    log.debug("started blind battle %s", battle.battle_id)
    return battle


def named_battle(variant_a: Any, variant_b: Any) -> Battle:
    """A side-by-side battle with names shown: its votes are stored with blind=False."""
    a, b = as_pool([variant_a, variant_b])
    return Battle(uuid.uuid4().hex, a, b, blind=False)


def record_battle_vote(
    store: VoteStore,
    battle: Battle,
    turn: Turn,
    vote: str,
    *,
    prompt: str,
    answer_a: str,
    answer_b: str,
    image: Any = None,
    settings: Any = None,
    note: str | None = "",
    expertise: str | None = None,
    domain: str | None = None,
    client_address: str | None = None,
    voter_id: str | None = None,
    read_s: float | None = None,
) -> Vote:
    """Commit the vote for one turn (ids, sides, recipes and blind flag from the battle).

    Idempotent: a second call for the same turn returns the first vote (`.new == False`).
    """
    if turn.battle_id != battle.battle_id:
        raise ValueError(f"turn {turn.turn_id!r} does not belong to battle {battle.battle_id!r}")
    if not 0 <= turn.index < battle.turns_started:
        raise ValueError(f"turn {turn.turn_id!r} was not started in battle {battle.battle_id!r}")
    return store.record_vote(
        turn_id=turn.turn_id,
        battle_id=battle.battle_id,
        turn_index=turn.index,
        variant_a=battle.variant_a.id,
        variant_b=battle.variant_b.id,
        vote=vote,
        blind=battle.blind,
        prompt=prompt,
        answer_a=answer_a,
        answer_b=answer_b,
        image=image,
        settings=settings,
        recipe_a=battle.variant_a.recipe,
        recipe_b=battle.variant_b.recipe,
        note=note,
        expertise=expertise,
        domain=domain,
        client_address=client_address,
        voter_id=voter_id,
        read_s=read_s,
    )


@dataclass(frozen=True)
class Reveal:
    """The names, as confirmed by the stored vote."""

    variant_a: str
    variant_b: str
    vote: str
    winner: str | None  # variant id, None for tie / both_bad
    stored: Vote

    def message(self) -> str:
        verdict = {"a": f"you preferred {self.variant_a}", "b": f"you preferred {self.variant_b}",
                   "tie": "you called it a tie", "both_bad": "you found both bad"}[self.vote]
        return f"Model A was {self.variant_a}, Model B was {self.variant_b}: {verdict}."


def reveal(store: VoteStore, battle: Battle, turn: Turn) -> Reveal:
    """The names of a turn's variants, only if the store holds a committed vote for it."""
    stored = store.get_vote(turn.turn_id)
    if stored is None:
        raise VoteNotRecordedError(f"turn {turn.turn_id!r} has no recorded vote; names stay hidden until the vote is stored")
    if (stored.variant_a, stored.variant_b) != (battle.variant_a.id, battle.variant_b.id):
        raise ValueError(f"stored vote for turn {turn.turn_id!r} names a different pair than battle {battle.battle_id!r}")
    return Reveal(stored.variant_a, stored.variant_b, stored.vote, stored.winner, stored)
