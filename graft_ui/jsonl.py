"""Reading JSONL written by people: one object per line, errors that name the file and line."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator


def iter_jsonl(lines: Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; anything else raises ValueError naming `source` and the line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} line {lineno} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{source} line {lineno} is a {type(value).__name__}, not an object")
        yield lineno, value


def conversation(record: dict[str, Any], source: str, lineno: int) -> list:
    """The record's non-empty `messages` list (docs/CONTRACTS.md), or a ValueError naming the line."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{source} line {lineno} needs a non-empty 'messages' list (see docs/CONTRACTS.md)")
    return messages
