"""One arena vote: the `Vote` record, its table's columns and their checks.

Schema (table `arena_votes`; sides: `a` is shown on the left as "Model A", `b` on the
right as "Model B"):

    id            integer primary key (insertion order)
    turn_id       text unique    -- one vote per battle turn
    battle_id     text           -- a battle is one pair of variants over 1+ turns
    turn_index    integer        -- 0, 1, ... within the battle
    created_at    text           -- ISO 8601, UTC, microseconds
    variant_a     text           -- id of the variant on side A (left)
    variant_b     text           -- id of the variant on side B (right)
    vote          text           -- a | b | tie | both_bad
    blind         integer        -- 1: names hidden until the vote (counts for ratings)
    prompt        text           -- the full prompt of this turn
    answer_a      text
    answer_b      text
    image_sha256  text null      -- sha256 of the stored PNG
    settings      text           -- generation settings, JSON object
    recipe_a      text null      -- fused variant's recipe, JSON object
    recipe_b      text null
    note          text           -- voter's free-text note ('' when none)
    expertise     text null      -- voter's declared expertise (e.g. math, none)
    domain        text null      -- the prompt's domain
    client_hash   text null      -- HMAC-SHA256(salt, client address), hex
    voter_hash    text null      -- HMAC-SHA256(salt, browser session id): one voter session (v2)
    read_s        real null      -- seconds from both answers complete to the vote (v2)

Version 2 added `voter_hash` and `read_s` (null in rows stored before) and the `arena_marks`
table (operator decisions: restored voters, fresh-vote confirmations); opening an older store
adds them in place (backends.py), every stored vote kept.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

VOTE_CHOICES = ("a", "b", "tie", "both_bad")
SCHEMA_VERSION = 2
TABLE = "arena_votes"
MARKS_TABLE = "arena_marks"  # (kind, key) -> value: operator decisions kept beside the votes

# column name -> (sqlite type, postgresql type); order is the table's and the exports'
COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    "turn_id": ("TEXT NOT NULL UNIQUE", "TEXT NOT NULL UNIQUE"),
    "battle_id": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "turn_index": ("INTEGER NOT NULL", "INTEGER NOT NULL"),
    "created_at": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "variant_a": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "variant_b": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "vote": ("TEXT NOT NULL CHECK (vote IN ('a','b','tie','both_bad'))",) * 2,
    "blind": ("INTEGER NOT NULL", "INTEGER NOT NULL"),
    "prompt": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "answer_a": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "answer_b": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "image_sha256": ("TEXT", "TEXT"),
    "settings": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "recipe_a": ("TEXT", "TEXT"),
    "recipe_b": ("TEXT", "TEXT"),
    "note": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "expertise": ("TEXT", "TEXT"),
    "domain": ("TEXT", "TEXT"),
    "client_hash": ("TEXT", "TEXT"),
    "voter_hash": ("TEXT", "TEXT"),
    "read_s": ("REAL", "DOUBLE PRECISION"),
}
JSON_COLUMNS = ("settings", "recipe_a", "recipe_b")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Vote:
    """One stored vote (one battle turn). `vote` names a side: a, b, tie or both_bad."""

    turn_id: str
    battle_id: str
    turn_index: int
    created_at: str
    variant_a: str
    variant_b: str
    vote: str
    prompt: str
    answer_a: str
    answer_b: str
    blind: bool = True
    image_sha256: str | None = None
    settings: dict = field(default_factory=dict)
    recipe_a: dict | None = None
    recipe_b: dict | None = None
    note: str = ""
    expertise: str | None = None
    domain: str | None = None
    client_hash: str | None = None
    voter_hash: str | None = None
    read_s: float | None = None
    id: int | None = None
    # False when record_vote found this turn already voted and returned the stored vote
    # (a double submit); not stored, not compared.
    new: bool = field(default=True, compare=False, repr=False)

    @property
    def voter(self) -> str | None:
        """Who cast it, as far as the store can tell: the browser session, else the client address hash."""
        return self.voter_hash or self.client_hash

    @property
    def winner(self) -> str | None:
        """The winning variant's id, or None for tie / both_bad."""
        return {"a": self.variant_a, "b": self.variant_b}.get(self.vote)

    def to_record(self) -> dict[str, Any]:
        """The stored columns as plain JSON-ready values (settings/recipes as dicts)."""
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "Vote":
        """From `to_record()`'s shape or a database row (JSON text, integer flags)."""
        data = {name: rec.get(name) for name in COLUMNS}
        missing = [n for n in ("turn_id", "battle_id", "variant_a", "variant_b", "vote") if data[n] in (None, "")]
        if missing:
            raise ValueError(f"vote record {rec.get('turn_id')!r} lacks {missing}")
        for name in JSON_COLUMNS:
            value = data[name]
            if isinstance(value, str):
                try:
                    data[name] = json.loads(value) if value else None
                except json.JSONDecodeError as exc:
                    raise ValueError(f"vote {data['turn_id']!r}: {name} is not JSON: {value[:80]!r} ({exc})") from None
        data["settings"] = data["settings"] or {}
        data["blind"] = as_bool(data["blind"], "blind")
        data["turn_index"] = int(data["turn_index"] or 0)
        data["id"] = None if data["id"] in (None, "") else int(data["id"])
        for name in ("prompt", "answer_a", "answer_b", "note"):
            data[name] = "" if data[name] is None else str(data[name])
        for name in ("image_sha256", "expertise", "domain", "client_hash", "voter_hash"):
            data[name] = data[name] or None
        data["read_s"] = None if data["read_s"] in (None, "") else float(data["read_s"])
        if data["vote"] not in VOTE_CHOICES:
            raise ValueError(f"vote {data['turn_id']!r}: vote={data['vote']!r} is not one of {list(VOTE_CHOICES)}")
        return cls(**data)


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.strip().lower() in ("1", "true", "yes")
    raise ValueError(f"{name}={value!r} is not a boolean")


def to_jsonable(value: Any, what: str) -> dict | None:
    """A recipe / settings object as a JSON object: Mapping, dataclass, or `.to_dict()`."""
    if value is None:
        return None
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping, a dataclass or have to_dict(); got {type(value).__name__}")
    try:
        # round trip through JSON so the returned vote equals what a later read gives back
        return json.loads(json.dumps(dict(value), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


def dumps_json(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def opt_label(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} must be a string or None")
    return value.strip() or None
