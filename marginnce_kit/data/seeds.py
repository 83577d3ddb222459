"""Seeds of the kit's random draws: each a function of its parts (run seed, purpose, epoch, rank, clip id) only,
never of what ran before, so that runs split over workers, ranks or resumptions draw alike."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (ints and strings), the same in every
    process and Python session (unlike ``hash()``, which is salted per process).

    ``seed = int.from_bytes(blake2b(repr(parts), digest_size=8)) mod 2**63``: independent-looking
    seeds for nearby tuples such as ``(0, "augment", 1, id)`` and ``(0, "augment", 2, id)``.
    """
    if not parts:
        raise ValueError("derive_seed: expected at least one int or str part, got none")
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise TypeError(f"derive_seed: expected int or str parts, got {type(p).__name__} {p!r}")
    digest = hashlib.blake2b(repr(tuple(parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
