"""The host memory allocator: keep the memory a training step frees for the next step."""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's settings of the same parameters; a user who set one keeps their choice.
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_USER_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold")

MMAP_THRESHOLD = 32 << 20
"""Blocks above this size get their own mapping, handed back when freed: glibc's largest
threshold (the value its adaptive rule stops at on 64-bit systems)."""

TRIM_THRESHOLD = 256 << 20
"""Free memory the heap keeps at its top instead of handing it back to the system."""


def _glibc() -> ctypes.CDLL | None:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # not a glibc platform
        return None
    if not version or not version.startswith("glibc"):
        return None
    return ctypes.CDLL("libc.so.6")


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Makes glibc's ``malloc`` keep the memory a training step frees, for the next step.

    A CPU training step allocates and frees tens of MB of activations. With glibc's default
    rule, freeing them shrinks the heap back to the system, and the next step touches every
    page of it afresh: one page fault per 4 KiB, thousands a step in the default config (the
    ``page faults/step`` column of ``benchmarks/RESULTS.md``, "precision"). Keeping up to
    ``trim_threshold`` bytes free at the top of the heap (and serving blocks up to
    ``mmap_threshold`` from the heap) takes that to a few faults a step; the peak memory is
    the same, it is just not handed back between steps.

    The setting is the process's: :class:`jepa_lightning.trainer.Trainer` applies it when
    it is built. It is left alone where it does not apply or was chosen already: on a C
    library other than glibc (macOS, Windows, musl; a preloaded jemalloc or tcmalloc does
    not use it either) and when the environment sets ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_MMAP_THRESHOLD_`` or either in ``GLIBC_TUNABLES`` (set one of them to keep
    glibc's defaults).

    Args:
        mmap_threshold: Size in bytes from which a block gets its own mapping (at most
            :data:`MMAP_THRESHOLD`, glibc's limit).
        trim_threshold: Free bytes kept at the top of the heap.

    Returns:
        True if the thresholds were set.

    Raises:
        ValueError: If ``mmap_threshold`` is not in ``(0, MMAP_THRESHOLD]`` or
            ``trim_threshold`` is negative.
    """
    if not 0 < mmap_threshold <= MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in (0, {MMAP_THRESHOLD}], got {mmap_threshold}")
    if trim_threshold < 0:
        raise ValueError(f"trim_threshold must be >= 0, got {trim_threshold}")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in _USER_SETTINGS) or any(
        name in tunables for name in _USER_TUNABLES
    ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success. The mmap threshold first: setting either one ends glibc's
    # adaptive rule, which would otherwise leave the mmap threshold where it happens to be.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
