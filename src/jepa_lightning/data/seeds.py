"""Seeds derived from named parts, the same in every process and Python run."""

from __future__ import annotations

import hashlib

__all__ = ["seed_from"]


def seed_from(*parts: object) -> int:
    """A 64-bit seed that is a stable function of ``parts``.

    Python's ``hash()`` is salted per process, so data loader workers and ranks could not
    agree on it; a digest of the parts' text is the same everywhere.

    Args:
        *parts: Values whose ``str()`` identifies the random stream (a base seed, an epoch,
            a rank, a name...).

    Returns:
        An unsigned 64-bit integer.
    """
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
