"""The embeddings folder: what ``predict`` writes and what ``search`` reads.

A folder holds one row per sample, in the same order in every file:

* ``samples.jsonl``: one JSON object per row (``key``, ``caption`` or null, and whatever the
  writer adds, e.g. the image ``path``);
* ``<name>.npy``: a ``(rows, D)`` float32 array per embedding, e.g. ``image_embeddings.npy``
  (``ŝ``) and ``text_embeddings.npy`` (``s``; a row of NaN where a sample has no caption).

Each loads in one line: ``numpy.load(folder / "image_embeddings.npy", mmap_mode="r")``,
``pandas.read_json(folder / "samples.jsonl", lines=True)``, or :func:`load_table`.

Writers stream: each process appends its rows to its own part files
(:class:`TablePartWriter`), which :func:`merge_parts` then joins in part order, copying the
arrays in chunks, so that memory stays bounded by a batch whatever the number of rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES_FILE = "samples.jsonl"
_COPY_ROWS = 65536


def _part_samples(folder: Path, part: str) -> Path:
    return folder / f"samples.{part}.jsonl.part"


def _part_array(folder: Path, name: str, part: str) -> Path:
    return folder / f"{name}.{part}.f32.part"


class TablePartWriter:
    """Appends rows to one part of an embeddings folder (one process's rows).

    Args:
        folder: The embeddings folder (created).
        part: The part's name, e.g. ``rank0``; parts merge in the order given to
            :func:`merge_parts`.
        arrays: The names of the embedding arrays, e.g. ``("image_embeddings",)``.
    """

    def __init__(self, folder: str | Path, part: str, arrays: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.arrays = tuple(arrays)
        self.rows = 0
        self._samples = _part_samples(self.folder, part).open("w", encoding="utf-8")
        self._files = {name: _part_array(self.folder, name, part).open("wb") for name in arrays}

    def write(self, records: Sequence[Mapping[str, Any]], arrays: Mapping[str, Any]) -> None:
        """Appends rows.

        Args:
            records: One JSON-able dict per row.
            arrays: Per array name, ``(rows, D)`` values (numpy arrays or CPU tensors).

        Raises:
            ValueError: If an array is missing or has another number of rows.
        """
        for name in self.arrays:
            values = np.asarray(arrays[name], dtype=np.float32)
            if values.ndim != 2 or values.shape[0] != len(records):
                raise ValueError(f"{name}: expected ({len(records)}, D) values, got {values.shape}")
            self._files[name].write(np.ascontiguousarray(values).tobytes())
        for record in records:
            self._samples.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows += len(records)

    def close(self) -> None:
        """Flushes and closes the part's files."""
        self._samples.close()
        for handle in self._files.values():
            handle.close()


def merge_parts(folder: str | Path, parts: Sequence[str], arrays: Sequence[str]) -> int:
    """Joins parts, in order, into ``samples.jsonl`` and one ``.npy`` per array; removes them.

    Args:
        folder: The embeddings folder.
        parts: The part names, in row order.
        arrays: The array names.

    Returns:
        The number of rows.

    Raises:
        ValueError: If a part's array size does not fit its number of rows and the width.
    """
    root = Path(folder)
    counts = []
    with (root / SAMPLES_FILE).open("w", encoding="utf-8") as samples:
        for part in parts:
            lines = _part_samples(root, part).read_text(encoding="utf-8")
            samples.write(lines)
            counts.append(lines.count("\n"))
    total = sum(counts)
    for name in arrays:
        sizes = [_part_array(root, name, part).stat().st_size // 4 for part in parts]
        width = sum(sizes) // total if total else 0
        if any(size != count * width for size, count in zip(sizes, counts, strict=True)):
            raise ValueError(f"{name}: the parts' sizes {sizes} do not fit rows {counts}")
        merged = np.lib.format.open_memmap(
            root / f"{name}.npy", mode="w+", dtype=np.float32, shape=(total, width)
        )
        row = 0
        for part, count in zip(parts, counts, strict=True):
            if count:
                source = np.memmap(
                    _part_array(root, name, part), dtype=np.float32, mode="r", shape=(count, width)
                )
                for start in range(0, count, _COPY_ROWS):
                    chunk = source[start : start + _COPY_ROWS]
                    merged[row + start : row + start + len(chunk)] = chunk
                del source
            row += count
        merged.flush()
        del merged
    for part in parts:
        _part_samples(root, part).unlink()
        for name in arrays:
            _part_array(root, name, part).unlink()
    return total


def write_table(
    folder: str | Path, records: Sequence[Mapping[str, Any]], arrays: Mapping[str, Any]
) -> None:
    """Writes a whole embeddings folder from one process.

    Args:
        folder: The folder (created).
        records: One JSON-able dict per row.
        arrays: Per array name, ``(rows, D)`` values.
    """
    writer = TablePartWriter(folder, "all", list(arrays))
    writer.write(records, arrays)
    writer.close()
    merge_parts(folder, ["all"], list(arrays))


def load_table(
    folder: str | Path, mmap: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reads an embeddings folder.

    Args:
        folder: The folder.
        mmap: Map the arrays from disk instead of reading them into memory.

    Returns:
        The rows' records, and per array name its ``(rows, D)`` numpy array.

    Raises:
        FileNotFoundError: If the folder has no ``samples.jsonl``.
        ValueError: If an array's row count differs from the records'.
    """
    root = Path(folder)
    if not (root / SAMPLES_FILE).is_file():
        raise FileNotFoundError(f"{root} is not an embeddings folder (no {SAMPLES_FILE})")
    with (root / SAMPLES_FILE).open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    arrays = {}
    for path in sorted(root.glob("*.npy")):
        values = np.load(path, mmap_mode="r" if mmap else None)
        if values.shape[0] != len(records):
            raise ValueError(f"{path} has {values.shape[0]} rows for {len(records)} samples")
        arrays[path.stem] = values
    return records, arrays
