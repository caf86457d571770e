"""Zero-shot classification of images from class names and prompt templates.

``jepa-lightning classify MODEL IMAGES --class_names '[red, green, blue]' --templates
'["a {} circle", "a {} square"]'`` embeds each class as the normalised mean of its prompts'
``s`` (CLIP's prompt ensembling), each image as ``ŝ`` (no query), and gives every image the
class nearest to it: a table on the console and a CSV file.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.data.images import image_batches
from jepa_lightning.inference import PretrainedVLJEPA, load_model

ClassNames = Sequence[str] | Mapping[str, str]
"""Class names (each also its prompt text), or a mapping from class name to prompt text."""


def class_prompts(class_names: ClassNames) -> dict[str, str]:
    """Each class's prompt text.

    Args:
        class_names: A list of names, or a mapping from name to prompt text.

    Returns:
        The prompt text of each class, in order.

    Raises:
        ValueError: If there is no class.
    """
    if isinstance(class_names, str):
        raise ValueError("class_names must be a list of names, not one string")
    prompts = dict(class_names) if isinstance(class_names, Mapping) else {n: n for n in class_names}
    if not prompts:
        raise ValueError("class_names is empty")
    return prompts


def class_embeddings(
    model: PretrainedVLJEPA, class_names: ClassNames, templates: Sequence[str] = ("{}",)
) -> Tensor:
    """Each class's embedding: the normalised mean of ``s`` over its prompts.

    Args:
        model: The model.
        class_names: The classes (see :func:`class_prompts`).
        templates: Prompt templates, each with one ``{}`` for the class's prompt text.

    Returns:
        ``(C, D)`` unit-norm class embeddings, in the order of the classes.

    Raises:
        ValueError: If a template has no ``{}``.
    """
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f"every template needs a '{{}}', got {list(templates)}")
    prompts = class_prompts(class_names).values()
    texts = [template.format(prompt) for prompt in prompts for template in templates]
    embedded = model.encode_texts(texts).view(len(prompts), len(templates), -1)
    return F.normalize(embedded.mean(dim=1), dim=-1)


def classify(
    model: str,
    images: str,
    class_names: list[str] | dict[str, str] | None = None,
    templates: list[str] | None = None,
    output: str = "classes.csv",
    top_k: int = 1,
    batch_size: int = 64,
    device: str = "cpu",
    quiet: bool = False,
) -> list[dict[str, object]]:
    """Classifies each image of a folder or of shards by its nearest class prompt.

    Args:
        model: A ``.ckpt`` checkpoint, an export folder or a hub repository id.
        images: A folder of image files, or shards.
        class_names: The class names, or a mapping from class name to prompt text
            (required).
        templates: Prompt templates with one ``{}`` each (e.g. ``"a photo of a {}"``);
            default ``["{}"]``.
        output: The CSV file to write: ``key``, ``path``, ``class``, ``score`` and the next
            ``top_k - 1`` classes with their scores.
        top_k: Classes per image in the CSV.
        batch_size: Images per forward pass.
        device: Where to run the model.
        quiet: Do not print the table.

    Returns:
        One row per image, as written to the CSV.

    Raises:
        ValueError: If a class or template argument is invalid, or no image is readable.
    """
    if not class_names:
        raise ValueError("classify needs --class_names, e.g. --class_names '[cat, dog]'")
    network = load_model(model, device=device, batch_size=batch_size)
    names = list(class_prompts(class_names))
    classes = class_embeddings(network, class_names, templates or ["{}"])
    k = min(top_k, len(names))
    rows: list[dict[str, object]] = []
    for batch in image_batches(images, network._codec(), batch_size):
        scores, best = (network.encode_images(batch.pixels) @ classes.T).topk(k, dim=1)
        for record, top, found in zip(batch.records, scores.tolist(), best.tolist(), strict=True):
            row: dict[str, object] = {"key": record["key"], "path": record.get("path", "")}
            for rank, (score, index) in enumerate(zip(top, found, strict=True), start=1):
                suffix = "" if rank == 1 else f"_{rank}"
                row[f"class{suffix}"] = names[index]
                row[f"score{suffix}"] = round(score, 6)
            rows.append(row)
    if not rows:
        raise ValueError(f"no readable image in {images}")
    with open(output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not quiet:
        _print_table(rows, names, Path(output))
    return rows


def _print_table(rows: list[dict[str, object]], names: list[str], output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = Counter(str(row["class"]) for row in rows)
    table = Table("class", "images", "share", title=f"zero-shot classes of {len(rows)} images")
    for name in names:
        table.add_row(name, str(counts[name]), f"{counts[name] / len(rows):.1%}")
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"per image: {output}")
