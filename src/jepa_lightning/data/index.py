"""Reading the shard-size index (``index.json``) of a shard folder.

A shard folder holds ``{prefix}-{index:06d}.tar`` WebDataset shards plus one ``index.json``
describing them::

    {
      "format": "jepa-lightning/shards-v1",
      "num_samples": 2500,
      "shards": [{"name": "train-000000.tar", "num_samples": 1000}, ...],
      "metadata": {...free-form, given by the writer's caller...}
    }

The index lets a data module know the exact number of samples (for epoch lengths and
progress bars) without opening the tars. It is written last (by
:class:`~jepa_lightning.tools.shards.ShardWriter`), so a folder with an index is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["INDEX_FILENAME", "INDEX_FORMAT", "ShardIndex", "read_shard_index"]

INDEX_FILENAME = "index.json"
"""File name of the shard-size index written next to the shards."""

INDEX_FORMAT = "jepa-lightning/shards-v1"
"""Value of the ``format`` field of the shard-size index."""


@dataclass
class ShardIndex:
    """The content of a shard folder's ``index.json``.

    Attributes:
        folder: Absolute path of the folder holding the shards and the index.
        shards: ``(file name, number of samples)`` for every shard, in order.
        num_samples: Total number of samples over all shards.
        metadata: Free-form metadata recorded by whoever wrote the shards.
        urls: Absolute paths of the shards, in order (derived from ``folder`` and ``shards``).
    """

    folder: str
    shards: list[tuple[str, int]]
    num_samples: int
    metadata: dict[str, Any] = field(default_factory=dict)
    urls: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.folder = str(Path(self.folder).absolute())
        self.shards = [(str(name), int(count)) for name, count in self.shards]
        self.urls = [str(Path(self.folder) / name) for name, _ in self.shards]

    @property
    def index_path(self) -> str:
        """Absolute path of the ``index.json`` file."""
        return str(Path(self.folder) / INDEX_FILENAME)

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return len(self.shards)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document written as ``index.json``."""
        return {
            "format": INDEX_FORMAT,
            "num_samples": self.num_samples,
            "shards": [{"name": name, "num_samples": count} for name, count in self.shards],
            "metadata": self.metadata,
        }


def _index_path(folder_or_index_path: str | os.PathLike[str]) -> Path:
    path = Path(folder_or_index_path)
    if path.is_dir():
        return path / INDEX_FILENAME
    return path


def read_shard_index(
    folder_or_index_path: str | os.PathLike[str], check_files: bool = True
) -> ShardIndex:
    """Read and validate a shard-size index.

    Args:
        folder_or_index_path: A shard folder (containing ``index.json``) or the path of the
            index file itself. Shard names are resolved relative to the index's folder.
        check_files: Also check that every shard listed in the index exists.

    Returns:
        The parsed index, with ``urls`` as absolute shard paths.

    Raises:
        FileNotFoundError: If the index (or, with ``check_files``, a shard) does not exist.
        ValueError: If the file is not valid JSON, not a ``jepa-lightning/shards-v1`` index, or
            inconsistent (per-shard counts not adding up to ``num_samples``).
    """
    path = _index_path(folder_or_index_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"shard index not found: {path} (expected a folder containing {INDEX_FILENAME}, "
            "written by jepa_lightning.tools.shards.ShardWriter)"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"shard index {path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(
            f"shard index {path} has format {found!r}, expected {INDEX_FORMAT!r}; "
            "is this a jepa-lightning shard folder?"
        )
    raw_shards = document.get("shards")
    if not isinstance(raw_shards, list):
        raise ValueError(f"shard index {path}: 'shards' must be a list")
    shards: list[tuple[str, int]] = []
    for position, entry in enumerate(raw_shards):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("num_samples"), int)
            or entry["num_samples"] < 0
        ):
            raise ValueError(
                f"shard index {path}: shard entry {position} must be "
                f'{{"name": str, "num_samples": int >= 0}}, got {entry!r}'
            )
        shards.append((entry["name"], entry["num_samples"]))
    num_samples = document.get("num_samples")
    if not isinstance(num_samples, int) or num_samples != sum(count for _, count in shards):
        raise ValueError(
            f"shard index {path}: num_samples={num_samples!r} does not equal the sum of the "
            f"shard counts ({sum(count for _, count in shards)})"
        )
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"shard index {path}: 'metadata' must be an object")
    index = ShardIndex(
        folder=str(path.parent), shards=shards, num_samples=num_samples, metadata=metadata
    )
    if check_files:
        missing = [url for url in index.urls if not os.path.isfile(url)]
        if missing:
            shown = ", ".join(missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            raise FileNotFoundError(f"shard index {path} lists missing shards: {shown}")
    return index
