"""Checked numbers at the boundaries (recipe fields, API and UI inputs): finite, in range, named.

NaN compares false with everything, so a bare `value < low` lets it through to fail much later
("cannot convert float NaN to integer", "the fused LoRA B contains NaN") without naming the
field. Every entry point converts its numbers here first. No imports from the package: any
layer may use it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

MAX_SHOWN = 200  # characters of a bad value quoted back in a message or a log line


def shorten(value: Any, limit: int = MAX_SHOWN) -> str:
    """repr(value), cut to about `limit` characters (a 1 MB input must not be echoed whole)."""
    text = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, (str, bytes)) else type(value).__name__
    return f"{text[:limit]}… ({size})"


def number(field: str, value: Any, *, integer: bool = False, low: float | None = None,
           high: float | None = None) -> int | float:
    """`value` as a finite float (or an int when `integer`) within [low, high], or a ValueError
    that names `field`, quotes the value and says what is allowed. Integral floats (3.0, from
    sliders and JSON) count as integers; booleans and strings are refused."""
    span = _span(low, high)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field}={shorten(value)} must be {kind}{span}")
    if not math.isfinite(value):
        raise ValueError(f"{field}={value!r} must be a finite number{span}")
    if integer:
        if int(value) != value:
            raise ValueError(f"{field}={value!r} must be {kind}{span}")
        value = int(value)
    else:
        value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{field}={value!r} is out of range: it must be {kind}{span}")
    return value


def _span(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" between {low:g} and {high:g}"
    if low is not None:
        return f" of at least {low:g}"
    if high is not None:
        return f" of at most {high:g}"
    return ""
