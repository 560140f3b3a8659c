"""graft_ui/checks.py and the entry points that use it: numbers are finite, in range, and named."""

import pytest

from graft_ui.chat.settings import GenerationSettings
from graft_ui.checks import number, shorten

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("value, needle", [
    (NAN, "k=nan must be a finite number between 1 and 8"),
    (INF, "k=inf must be a finite number"),
    ("3", "k='3' must be an integer"),
    (True, "k=True must be an integer"),
    (None, "k=None must be an integer"),
    (2.5, "k=2.5 must be an integer"),
    (9, "k=9 is out of range"),
])
def test_number_names_the_field_and_the_value(value, needle):
    with pytest.raises(ValueError, match=needle):
        number("k", value, integer=True, low=1, high=8)


def test_number_accepts_integral_floats_and_returns_the_type():
    assert number("k", 3.0, integer=True, low=1) == 3 and isinstance(number("k", 3.0, integer=True), int)
    assert number("t", 1) == 1.0 and isinstance(number("t", 1), float)


def test_huge_values_are_shortened_in_messages():
    with pytest.raises(ValueError) as err:
        number("k", "x" * 1_000_000)
    assert len(str(err.value)) < 400 and "1000000 characters" in str(err.value)
    assert len(shorten(list(range(100_000)))) < 260


@pytest.mark.parametrize("kw, needle", [
    ({"max_new_tokens": NAN}, "max_new_tokens=nan"),
    ({"max_new_tokens": INF}, "max_new_tokens=inf"),
    ({"temperature": NAN}, "temperature=nan"),
    ({"top_p": INF}, "top_p=inf"),
])
def test_generation_settings_refuse_nan_by_name(kw, needle):
    with pytest.raises(ValueError, match=needle):
        GenerationSettings(**kw)
