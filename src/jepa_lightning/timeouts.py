"""Waits that end a run instead of hanging it, and errors that say who waited where.

Two waits have a limit:

* a collective (``all_gather``, ``all_reduce``, ``barrier``) that another rank never reaches
  fails after the process group's timeout: the DDP strategy's ``timeout``
  (``trainer.strategy.init_args.timeout``, ``"h:m:s"``);
* a data loader whose workers send no batch fails after the data module's
  ``worker_timeout`` seconds.

The error of either then names the rank that waited, the call that waited and the stage of
the run (:func:`explain_timeout`, called by the data module's ``on_exception``).
"""

from __future__ import annotations

import traceback
from pathlib import Path

__all__ = ["explain_timeout"]

_LOADER_TIMEOUT = "DataLoader timed out"
_COLLECTIVE_TIMEOUTS = (
    "Timed out waiting",  # gloo
    "Application timeout caused pair closure",  # gloo, once a pair's wait timed out
    "Watchdog caught collective operation timeout",  # NCCL
)


def _package(frame: traceback.FrameSummary) -> tuple[str, str]:
    """(top-level package, path from it) of a frame's file, for installed and source trees."""
    parts = Path(frame.filename).parts
    roots = [i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages", "src")]
    inside = parts[roots[-1] + 1 :] if roots else parts[-3:]
    return inside[0], "/".join(inside)


def _short(frame: traceback.FrameSummary) -> str:
    return f"{_package(frame)[1]}:{frame.lineno} {frame.name}"


def _collective_site(error: BaseException) -> str:
    """The call that waited and the nearest calls to it from outside torch."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "a collective"
    callers = [f for f in reversed(frames[:-1]) if _package(f)[0] != "torch"]
    site = f"a collective in {_short(frames[-1])}"
    return f"{site}, called from {' < '.join(map(_short, callers[:3]))}" if callers else site


def explain_timeout(error: BaseException, rank: int, world_size: int, during: str) -> bool:
    """Puts in front of a timeout's message which rank waited, where, and what it means.

    Other errors are left as they are.

    Args:
        error: The error that ends the run (changed in place).
        rank: This process's global rank.
        world_size: Number of ranks.
        during: The stage of the run, e.g. ``"validate (epoch 0, global step 4)"``.

    Returns:
        Whether ``error`` was a collective's or a data loader's timeout.
    """
    message = str(error)
    if _LOADER_TIMEOUT in message:
        explanation = (
            f"rank {rank} of {world_size} waited longer than data.worker_timeout for a batch "
            f"from its data loader workers during {during}: a worker is stuck (e.g. reading a "
            "shard that never arrives)"
        )
    elif isinstance(error, RuntimeError) and any(m in message for m in _COLLECTIVE_TIMEOUTS):
        explanation = (
            f"rank {rank} of {world_size} waited longer than the process group's timeout in "
            f"{_collective_site(error)} during {during}: another rank never reached this "
            "collective (it is stuck, e.g. waiting for its data, or it failed: see its log). "
            "The limit is the DDP strategy's timeout (trainer.strategy.init_args.timeout)"
        )
    else:
        return False
    error.args = (f"{explanation}\n{message}",)
    return True
