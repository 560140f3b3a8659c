"""Per-client rate limits on arena votes and new battles (sliding windows, in memory, thread-safe).

A spec string configures them (app flag `--arena-rate`, env `GRAFT_ARENA_RATE`):

    "votes=30/min,battles=20/min,votes=500/day"   several windows per kind are allowed
    "off"                                           no limits
    "...,loopback"                                  also limit 127.0.0.1 / ::1 (exempt by default,
                                                    so local tests and a demo on one machine run freely)

A client is its address; a refusal raises RateLimitError with a sentence for the voter.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

KINDS = ("votes", "battles")
WINDOWS = {"s": 1.0, "sec": 1.0, "min": 60.0, "hour": 3600.0, "day": 86400.0}
DEFAULT_SPEC = "votes=30/min,battles=20/min,votes=1000/day"
_NOUN = {"votes": "votes", "battles": "new battles"}


class RateLimitError(ValueError):
    """A client went over a limit; the message says which and when to try again."""


@dataclass(frozen=True)
class Rule:
    kind: str
    count: int
    window_s: float
    unit: str


def parse_spec(spec: str | None) -> tuple[list[Rule], bool]:
    """(rules, limit_loopback) from a spec string; None or '' means DEFAULT_SPEC."""
    spec = DEFAULT_SPEC if spec is None or not str(spec).strip() else str(spec).strip()
    if spec.lower() == "off":
        return [], False
    rules, loopback = [], False
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part.lower() == "loopback":
            loopback = True
            continue
        kind, _, rate = part.partition("=")
        count, _, unit = rate.partition("/")
        kind, unit = kind.strip().lower(), unit.strip().lower()
        if kind not in KINDS or unit not in WINDOWS or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"arena rate limit {part!r} is not KIND=N/UNIT with KIND in {list(KINDS)}, N >= 1 and "
                             f"UNIT in {list(WINDOWS)} (e.g. votes=30/min); the whole spec may also be 'off'")
        rules.append(Rule(kind, int(count), WINDOWS[unit], unit))
    return rules, loopback


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.strip()).is_loopback
    except ValueError:
        return address in ("localhost",)


class RateLimiter:
    """`check(kind, client)` counts one event or raises RateLimitError; `clock` is injectable for tests."""

    def __init__(self, spec: str | None = None, clock=time.monotonic):
        self.rules, self.limit_loopback = parse_spec(spec)
        self._clock = clock
        self._events: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def check(self, kind: str, client: str | None) -> None:
        if kind not in KINDS:
            raise ValueError(f"rate-limit kind {kind!r} is not one of {list(KINDS)}")
        rules = [r for r in self.rules if r.kind == kind]
        if not rules or client is None or (is_loopback(client) and not self.limit_loopback):
            return
        now = self._clock()
        with self._lock:
            events = self._events[(kind, client)]
            longest = max(r.window_s for r in rules)
            while events and events[0] <= now - longest:
                events.popleft()
            for r in rules:
                recent = [t for t in events if t > now - r.window_s]
                if len(recent) >= r.count:
                    wait = max(1, round(recent[-r.count] + r.window_s - now))
                    raise RateLimitError(f"Too many {_NOUN[kind]} from your address: at most {r.count} per "
                                         f"{r.unit}. Please try again in {wait} s.")
            events.append(now)
