"""Captioning images: ``ŝ`` of each image, written out as text by the export's Y-decoder.

``jepa-lightning caption MODEL IMAGES`` reads a folder of image files or shards, embeds each
image as ``ŝ`` (no query, no caption given) and decodes it with the model's Y-decoder
(:meth:`~jepa_lightning.inference.PretrainedVLJEPA.decode`): a JSONL file (``key``, ``path``,
``caption``, and the true ``truth`` where the image has one) and a short table. Where the
images carry captions (a ``photo.txt`` beside ``photo.png``; the shards' ``txt``), it also
prints the exact-match rate and ROUGE-L against them.
"""

from __future__ import annotations

import json
from pathlib import Path

from jepa_lightning.data.images import image_batches
from jepa_lightning.inference import load_model
from jepa_lightning.metrics.captions import CaptionQuality


def caption(
    model: str,
    images: str,
    output: str = "captions.jsonl",
    num_beams: int = 1,
    batch_size: int = 64,
    device: str = "cpu",
    quiet: bool = False,
) -> dict[str, float]:
    """Captions every image of a folder or of shards.

    Args:
        model: An export folder holding a Y-decoder (``jepa-lightning export-decoder``), or a
            hub repository id of one.
        images: A folder of image files, or shards.
        output: The JSONL file to write, one row per image.
        num_beams: Beams of the decoder (1: greedy decoding).
        batch_size: Images per forward pass.
        device: Where to run the model.
        quiet: Do not print the table.

    Returns:
        ``images`` (how many were captioned) and, where the images have true captions,
        ``exact_match`` and ``rougeL`` over those.

    Raises:
        ValueError: If the model has no Y-decoder or no image is readable.
    """
    network = load_model(model, device=device, batch_size=batch_size)
    network._decoder()  # fail before reading images
    quality = CaptionQuality()
    rows: list[dict[str, object]] = []
    for batch in image_batches(images, network._codec(), batch_size):
        texts = network.caption(batch.pixels, num_beams=num_beams)
        for record, text in zip(batch.records, texts, strict=True):
            row: dict[str, object] = {"key": record["key"], "path": record.get("path", "")}
            row["caption"] = text
            if record.get("caption"):
                row["truth"] = record["caption"]
                quality.update([text], [record["caption"]])
            rows.append(row)
    if not rows:
        raise ValueError(f"no readable image in {images}")
    Path(output).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    summary: dict[str, float] = {"images": float(len(rows))}
    if int(quality.total) > 0:
        summary.update({key: float(value) for key, value in quality.compute().items()})
    if not quiet:
        _print_table(rows, summary, int(quality.total), Path(output))
    return summary


def _print_table(
    rows: list[dict[str, object]], summary: dict[str, float], scored: int, output: Path
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "caption", "truth", title=f"captions of {len(rows)} images (first 10)")
    for row in rows[:10]:
        table.add_row(str(row["key"]), str(row["caption"]), str(row.get("truth", "")))
    console = Console(soft_wrap=True)
    console.print(table)
    if scored:
        console.print(
            f"against the {scored} true captions: exact match {summary['exact_match']:.3f}, "
            f"ROUGE-L {summary['rougeL']:.3f}"
        )
    console.print(f"per image: {output}")
