"""Deprecated aliases of keyword arguments (listed in the CHANGELOG when added)."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_keyword"]

_Function = TypeVar("_Function", bound=Callable[..., Any])


def renamed_keyword(old: str, new: str) -> Callable[[_Function], _Function]:
    """Keep ``old=`` working as a deprecated keyword alias of the parameter ``new``.

    The decorated function is called with ``new=value`` and a ``DeprecationWarning`` names both;
    its signature (``inspect.signature``, ``help``) shows ``new`` only.

    Raises (at call time):
        TypeError: both ``new`` (by keyword or position) and ``old`` given.
    """

    def decorate(func: _Function) -> _Function:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                value = kwargs.pop(old)
                try:
                    given = signature.bind_partial(*args, **kwargs).arguments
                except TypeError:  # another wrong call: let the function raise its own error
                    given = {}
                if new in given:
                    raise TypeError(
                        f"{old}: expected either {new} or its deprecated alias {old}, got both "
                        f"({new}={given[new]!r}, {old}={value!r})"
                    )
                warnings.warn(
                    f"{old}: deprecated alias of {new} (the same value); pass {new}={value!r}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = value
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
