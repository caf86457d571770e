"""Reading images for inference: a folder of image files, or WebDataset shards.

The ``search``, ``classify`` and ``evaluate`` commands read their images through
:func:`image_batches`, in a fixed order, each readable image once, with the X-encoder's own
transform (the image codec: resize of the shorter side, centre crop). Unreadable images are
skipped with a warning and counted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.index import INDEX_FILENAME
from jepa_lightning.data.pipeline import ShardStream, count_samples, resolve_shards
from jepa_lightning.encoders.vision import IMAGE_EXTENSIONS, ImageCodec
from jepa_lightning.tools.convert import key_from_path

log = logging.getLogger(__name__)


@dataclass
class ImageBatch:
    """Images and what is known about each.

    Attributes:
        pixels: ``(B, 3, S, S)`` ``uint8`` images, transformed for the X-encoder.
        records: Per image: ``key``, ``caption`` (None without one), ``meta`` (the sample's
            ``json``, or a side-car ``.json`` file's) and, for image files, ``path``.
        skipped: Unreadable images skipped since the previous batch.
    """

    pixels: Tensor
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def is_shard_source(source: str) -> bool:
    """Whether ``source`` names shards rather than a folder of image files.

    Args:
        source: A folder, a brace pattern, a ``pipe:`` URL or a shard path.

    Returns:
        False for a folder holding neither an ``index.json`` nor ``*.tar`` files.
    """
    if not os.path.isdir(source):
        return True
    return (Path(source) / INDEX_FILENAME).is_file() or any(Path(source).glob("*.tar"))


def image_files(folder: str) -> list[Path]:
    """The image files under a folder (recursive, sorted, hidden files left out).

    Args:
        folder: The folder.

    Returns:
        The paths.

    Raises:
        ValueError: If the folder has no image file.
    """
    root = Path(folder)
    found = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower().removeprefix(".") in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not found:
        raise ValueError(f"{folder} has no {'/'.join(IMAGE_EXTENSIONS)} image")
    return found


def _side_car(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The caption of ``photo.png`` from ``photo.txt`` and its metadata from ``photo.json``."""
    caption_file, meta_file = path.with_suffix(".txt"), path.with_suffix(".json")
    caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return caption or None, meta if isinstance(meta, dict) else {}


def _folder_batches(folder: str, codec: ImageCodec, batch_size: int) -> Iterator[ImageBatch]:
    root = Path(folder)
    batch = ImageBatch(torch.empty(0))
    pixels: list[Tensor] = []
    for path in image_files(folder):
        relative = path.relative_to(root).as_posix()
        try:
            with Image.open(path) as opened:
                pixels.append(codec.transform(opened))
        except (OSError, ValueError) as error:
            log.warning("skipping unreadable image %s: %s", path, error)
            batch.skipped += 1
            continue
        caption, meta = _side_car(path)
        record = {"key": key_from_path(relative), "caption": caption, "meta": meta}
        batch.records.append({**record, "path": str(path.resolve())})
        if len(pixels) == batch_size:
            yield replace(batch, pixels=torch.stack(pixels))
            batch, pixels = ImageBatch(torch.empty(0)), []
    if pixels:
        yield replace(batch, pixels=torch.stack(pixels))


def _shard_batches(source: str, codec: ImageCodec, batch_size: int) -> Iterator[ImageBatch]:
    shards = [
        shard
        if shard.num_samples is not None
        else replace(shard, num_samples=count_samples(shard.url))
        for shard in resolve_shards(source, "images")
    ]
    collator = PairCollator(codec, captions_required=False)
    for batch in ShardStream(shards, collator, batch_size, mode="eval"):
        rows = batch.valid_rows()
        records = [
            {"key": key, "caption": caption or None, "meta": meta}
            for key, caption, meta in zip(rows.keys, rows.captions, rows.meta, strict=True)
        ]
        yield ImageBatch(rows.x, records, batch.skipped)


def image_batches(source: str, codec: ImageCodec, batch_size: int = 64) -> Iterator[ImageBatch]:
    """Batches of a folder's image files, or of shards' samples, in order.

    A folder of image files is read recursively in path order; ``photo.png``'s caption is
    ``photo.txt`` and its metadata ``photo.json`` when they exist. Shards (a folder with an
    ``index.json`` or ``*.tar`` files, a brace pattern, a ``pipe:`` URL) are read in order,
    samples without a caption included.

    Args:
        source: The folder or the shards.
        codec: The X-encoder's image codec.
        batch_size: Images per batch.

    Yields:
        The batches.

    Raises:
        FileNotFoundError: If a local source does not exist.
        ValueError: If the source holds no image.
    """
    if "://" not in source and not source.startswith("pipe:") and not os.path.exists(source):
        if not any(char in source for char in "{*"):
            raise FileNotFoundError(f"no image folder or shards at {source!r}")
    if is_shard_source(source):
        yield from _shard_batches(source, codec, batch_size)
    else:
        yield from _folder_batches(source, codec, batch_size)
