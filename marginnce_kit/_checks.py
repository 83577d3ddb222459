"""Argument checks of the kit, in the package's message style (``<name>: expected <what>, got <value>``).

The bool / int / finite / positive / choice checks are :mod:`marginnce_loss.validation`'s own,
re-exported; this module adds the kit's string, path and range checks.
"""

from __future__ import annotations

from marginnce_loss.validation import check_bool, check_choice, check_finite, check_int, check_positive


def check_str(name: str, value: object) -> str:
    """A ``str``.

    Raises:
        TypeError: anything else.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__} {value!r}")
    return value


def check_nonnegative(name: str, value: object) -> float:
    """A finite real number >= 0, as :func:`check_finite` reads it.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite or negative.
    """
    v = check_finite(name, value)
    if v < 0:
        raise ValueError(f"{name}: expected a finite float >= 0, got {value!r}")
    return v


def check_int_in(name: str, value: object, low: int, high: int | None = None) -> int:
    """An ``int`` (``bool`` refused) in ``[low, high]`` (``[low, inf)`` without ``high``).

    Raises:
        TypeError: not an ``int``.
        ValueError: out of range.
    """
    check_int(name, value)
    assert isinstance(value, int)
    if value < low or (high is not None and value > high):
        what = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an int {what}, got {value!r}")
    return value


def check_float_in(name: str, value: object, low: float, high: float, low_open: bool = False,
                   high_open: bool = False) -> float:
    """A finite real number in the interval from ``low`` to ``high`` (each end closed unless ``*_open``).

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite or out of range.
    """
    v = check_finite(name, value)
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected a finite float in {interval}, got {value!r}")
    return v


__all__ = ["check_bool", "check_int", "check_str", "check_finite", "check_positive", "check_nonnegative",
           "check_choice", "check_int_in", "check_float_in"]
