"""The package's scalar argument checks, public for code built on it (the reproduction kit among others).

Each raises ``TypeError`` (wrong kind) or ``ValueError`` (wrong value) with a message that names the
argument, says what was expected and what was received (``<name>: expected <what>, got <value>``), and
never coerces: see :mod:`marginnce_loss._validation`, where they live with the tensor checks.
"""

from __future__ import annotations

from ._validation import check_bool, check_choice, check_finite, check_int, check_positive, check_temperature

__all__ = ["check_bool", "check_int", "check_finite", "check_positive", "check_choice", "check_temperature"]
