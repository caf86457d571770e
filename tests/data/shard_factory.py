"""Small WebDataset shards of chosen sizes, optionally with broken samples, for data tests."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds
from PIL import Image

from jepa_lightning.data.index import INDEX_FILENAME, ShardIndex
from jepa_lightning.tools.shards import encode_jpeg

CORRUPT_IMAGE, NO_CAPTION, TRUNCATED = "corrupt_image", "no_caption", "truncated"
EMPTY_CAPTION, NO_IMAGE = "empty_caption", "no_image"


def image_bytes(number: int, size: int) -> bytes:
    rng = random.Random(number)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    return encode_jpeg(Image.new("RGB", (size + number % 5, size), colour))


def write_shards(
    folder: Path,
    sizes: Sequence[int],
    image_size: int = 16,
    bad: dict[int, str] | None = None,
    index: bool = True,
) -> list[str]:
    """Writes one shard per size (keys ``s00000``... numbered across shards) and an index.

    Args:
        folder: Output folder.
        sizes: Samples per shard.
        image_size: Height of the images (widths vary a little).
        bad: Global sample number -> ``CORRUPT_IMAGE``, ``NO_CAPTION``, ``EMPTY_CAPTION``,
            ``NO_IMAGE`` or ``TRUNCATED`` (the shard is cut in the middle of that sample's
            image: it and the shard's later samples are lost).
        index: Write ``index.json`` (with the planned sizes).

    Returns:
        The shard paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    paths: list[str] = []
    number = 0
    for shard_number, size in enumerate(sizes):
        path = folder / f"shard-{shard_number:04d}.tar"
        cut_key = None
        with wds.TarWriter(str(path)) as writer:
            for _ in range(size):
                key = f"s{number:05d}"
                sample = {"__key__": key, "jpg": image_bytes(number, image_size)}
                sample["txt"] = f"caption number {number}".encode()
                sample["json"] = json.dumps({"number": number}).encode()
                kind = bad.get(number)
                if kind == CORRUPT_IMAGE:
                    sample["jpg"] = sample["jpg"][:30]
                elif kind == NO_CAPTION:
                    del sample["txt"]
                elif kind == EMPTY_CAPTION:
                    sample["txt"] = b"  "
                elif kind == NO_IMAGE:
                    del sample["jpg"]
                elif kind == TRUNCATED:
                    cut_key = key
                writer.write(sample)
                number += 1
        if cut_key is not None:
            data = path.read_bytes()
            member = data.index(f"{cut_key}.jpg".encode())
            path.write_bytes(data[: member + 512 + 100])  # header + part of the image
        paths.append(str(path))
    if index:
        shards = [(Path(p).name, size) for p, size in zip(paths, sizes, strict=True)]
        document = ShardIndex(str(folder), shards, sum(sizes)).to_dict()
        (folder / INDEX_FILENAME).write_text(json.dumps(document))
    return paths
