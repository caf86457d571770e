"""Text-to-image search: build an index of image embeddings once, then query it with text.

``jepa-lightning search build MODEL IMAGES INDEX`` embeds every image (``ŝ``, no query) of a
folder or of shards with a checkpoint or an exported model and writes an embeddings folder
(:mod:`jepa_lightning.embedding_table`: ``image_embeddings.npy``, ``samples.jsonl``) plus
``search.json`` (the model and the images it was built from). The folder that
``jepa-lightning predict`` writes with the ``EmbeddingWriter`` is an index too.

``jepa-lightning search query INDEX --query "a red circle"`` embeds the text (``s``) and
returns the ``top_k`` most similar images, exactly: the index is scanned in chunks, so that
memory is ``O(queries x chunk)`` beyond the index itself (mapped from disk), as the recall
metric bounds its similarity blocks. ``--grid hits.png`` draws a contact sheet of the hits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from jepa_lightning.data.images import image_batches, is_shard_source
from jepa_lightning.embedding_table import (
    SAMPLES_FILE,
    TablePartWriter,
    load_table,
    merge_parts,
)
from jepa_lightning.encoders.vision import ImageCodec
from jepa_lightning.inference import PretrainedVLJEPA, load_model
from jepa_lightning.metrics.recall import _auto_chunk_size

log = logging.getLogger(__name__)

MANIFEST = "search.json"
GRID_TILE = 96
_LABEL_HEIGHT = 12


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        rank: 1 for the best match.
        key: The image's key.
        score: Cosine similarity of the image's ``ŝ`` to the query's ``s``.
        record: The image's row of ``samples.jsonl`` (``key``, ``caption``, ``path``...).
    """

    rank: int
    key: str
    score: float
    record: dict[str, Any]


def _source(path: str) -> str:
    """A local path made absolute (a hub id or a URL as it is)."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def build_index(
    model: str,
    images: str,
    output: str,
    batch_size: int = 64,
    device: str = "cpu",
    overwrite: bool = False,
) -> str:
    """Embeds every image of a folder or of shards into a search index.

    Args:
        model: A ``.ckpt`` checkpoint, an export folder or a hub repository id.
        images: A folder of image files (recursive; ``photo.txt`` captions ``photo.png``),
            or shards (a folder with ``index.json`` or ``*.tar``, a brace pattern...).
        output: The index folder to write.
        batch_size: Images per forward pass.
        device: Where to run the model.
        overwrite: Replace an index already in ``output``.

    Returns:
        The index folder.

    Raises:
        FileExistsError: If ``output`` holds an index and ``overwrite`` is off.
        ValueError: If no image could be read.
    """
    folder = Path(output)
    if (folder / SAMPLES_FILE).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds an index; pass --overwrite true")
    network = load_model(model, device=device, batch_size=batch_size)
    writer = TablePartWriter(folder, "build", ["image_embeddings"])
    skipped = 0
    for batch in image_batches(images, network._codec(), batch_size):
        embeddings = network.encode_images(batch.pixels)
        writer.write(batch.records, {"image_embeddings": embeddings})
        skipped += batch.skipped
    writer.close()
    rows = merge_parts(folder, ["build"], ["image_embeddings"])
    if rows == 0:
        raise ValueError(f"no readable image in {images}")
    manifest = {
        "model": _source(model),
        "images": _source(images),
        "shards": is_shard_source(images),
        "rows": rows,
        "skipped": skipped,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"indexed {rows} images into {folder}" + (f" ({skipped} unreadable)" if skipped else ""))
    return str(folder)


def top_k_matches(
    queries: Tensor, items: np.ndarray, k: int, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Exact top-k of ``queries @ items.T``, scanning ``items`` in chunks of rows.

    Args:
        queries: ``(Q, D)`` query embeddings.
        items: ``(N, D)`` item embeddings (a memory-mapped array is read chunk by chunk).
        k: How many matches per query (at most ``N``).
        chunk_size: Item rows per chunk; default ``max(32, 2**24 // Q)``, so that a
            similarity block holds about 16M entries, as in the recall metric.

    Returns:
        ``(Q, k)`` scores, best first, and the matching item rows.
    """
    k = min(k, items.shape[0])
    chunk = chunk_size or _auto_chunk_size(queries.shape[0])
    best_scores = queries.new_full((queries.shape[0], 0), float("-inf"))
    best_rows = torch.zeros(queries.shape[0], 0, dtype=torch.int64)
    for start in range(0, items.shape[0], chunk):
        block = torch.from_numpy(np.array(items[start : start + chunk], dtype=np.float32))
        scores = torch.cat([best_scores, queries @ block.to(queries.dtype).T], dim=1)
        rows = torch.cat(
            [best_rows, torch.arange(start, start + block.shape[0]).expand(len(queries), -1)], dim=1
        )
        best_scores, position = scores.topk(min(k, scores.shape[1]), dim=1)
        best_rows = rows.gather(1, position)
    return best_scores, best_rows


def hit_pictures(
    hits: Sequence[Sequence[Hit]], images: str | None, tile: int
) -> dict[str, Image.Image]:
    """The pictures of the hits, ``tile`` pixels square (centre-cropped), by key.

    Image files are opened by their path; samples of shards are found by reading the shards
    the index was built from (once, in order).

    Args:
        hits: The hits.
        images: The index's image source (its ``search.json``), for hits without a path.
        tile: Side of the pictures.

    Returns:
        The picture of each hit's key.

    Raises:
        ValueError: If a hit has no path and the index records no image source.
    """
    codec = ImageCodec(tile)
    pictures: dict[str, Image.Image] = {}
    wanted = set()
    for hit in (hit for row in hits for hit in row):
        if "path" in hit.record:
            with Image.open(hit.record["path"]) as opened:
                pixels = codec.transform(opened)
            pictures[hit.key] = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        else:
            wanted.add(hit.key)
    if wanted and images is None:
        raise ValueError("the index records no image source (search.json): no pictures")
    for batch in image_batches(images or "", codec) if wanted else ():
        for record, pixels in zip(batch.records, batch.pixels, strict=True):
            if record["key"] in wanted:
                pictures[record["key"]] = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return pictures


def contact_sheet(
    queries: Sequence[str],
    hits: Sequence[Sequence[Hit]],
    pictures: dict[str, Image.Image],
    tile: int = 96,
) -> Image.Image:
    """One row per query: its text, then its hits left to right with their scores.

    Args:
        queries: The query texts.
        hits: Each query's hits, best first.
        pictures: Each hit's picture by key, ``tile`` pixels square (:func:`hit_pictures`).
        tile: Side of each picture in pixels.

    Returns:
        The contact sheet.
    """
    columns = max((len(row) for row in hits), default=1)
    row_height = 2 * _LABEL_HEIGHT + tile + 4
    sheet = Image.new("RGB", (max(1, columns) * (tile + 4), len(queries) * row_height), "white")
    draw = ImageDraw.Draw(sheet)
    for q, (query, row) in enumerate(zip(queries, hits, strict=True)):
        top = q * row_height
        draw.text((2, top), query, fill=(0, 0, 0))
        for j, hit in enumerate(row):
            left = j * (tile + 4) + 2
            sheet.paste(pictures[hit.key], (left, top + _LABEL_HEIGHT))
            draw.text((left, top + _LABEL_HEIGHT + tile), f"{hit.score:.3f}", fill=(60, 60, 60))
    return sheet


def _queries(query: str | None, queries_file: str | None) -> list[str]:
    texts = [query] if query else []
    if queries_file is not None:
        lines = Path(queries_file).read_text(encoding="utf-8").splitlines()
        texts += [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError("give a --query or a --queries_file (one query per line)")
    return texts


def search(
    index: str,
    query: str | None = None,
    queries_file: str | None = None,
    top_k: int = 5,
    model: str | None = None,
    grid: str | None = None,
    output: str | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> list[list[Hit]]:
    """Answers text queries with the most similar images of an index.

    Args:
        index: The index folder (``search build``'s, or ``predict``'s embeddings folder).
        query: A query text.
        queries_file: A file of queries, one per line (after ``query``, if both are given).
        top_k: Hits per query.
        model: The model that embeds the queries; default the index's (``search.json``).
        grid: Write a contact sheet of the hits to this PNG file (for an index of shards,
            the shards are read once to find the hits' images).
        output: Write the hits as JSON lines (``query``, ``rank``, ``key``, ``score``,
            ``caption``) to this file.
        device: Where to run the model.
        quiet: Do not print the hits.

    Returns:
        Per query, its hits, best first.

    Raises:
        ValueError: If there is no query, or no model is given or recorded.
    """
    texts = _queries(query, queries_file)
    records, arrays = load_table(index)
    if "image_embeddings" not in arrays:
        raise ValueError(f"{index} has no image_embeddings.npy")
    manifest_path = Path(index) / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    source = model or manifest.get("model")
    if source is None:
        raise ValueError(f"{index} records no model (no {MANIFEST}): pass --model")
    network: PretrainedVLJEPA = load_model(source, device=device)
    scores, rows = top_k_matches(network.encode_texts(texts), arrays["image_embeddings"], top_k)
    hits = [
        [
            Hit(rank + 1, str(records[row]["key"]), float(score), records[row])
            for rank, (score, row) in enumerate(
                zip(line_scores.tolist(), line_rows.tolist(), strict=True)
            )
        ]
        for line_scores, line_rows in zip(scores, rows, strict=True)
    ]
    lines = [
        {
            "query": text,
            "rank": hit.rank,
            "key": hit.key,
            "score": hit.score,
            "caption": hit.record.get("caption"),
        }
        for text, row in zip(texts, hits, strict=True)
        for hit in row
    ]
    if output is not None:
        Path(output).write_text(
            "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8"
        )
    if grid is not None:
        pictures = hit_pictures(hits, manifest.get("images"), GRID_TILE)
        contact_sheet(texts, hits, pictures, GRID_TILE).save(grid)
    if not quiet:
        _print_hits(texts, hits)
    return hits


def _print_hits(texts: Sequence[str], hits: Sequence[Sequence[Hit]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("query", "rank", "key", "score", "caption", title="search")
    for text, row in zip(texts, hits, strict=True):
        for hit in row:
            caption = hit.record.get("caption") or ""
            table.add_row(
                text if hit.rank == 1 else "", str(hit.rank), hit.key, f"{hit.score:.3f}", caption
            )
    Console(soft_wrap=True).print(table)
