"""Benchmark results in the JSON layout of LAION's CLIP_benchmark (to tabulate beside open_clip).

``jepa-lightning evaluate MODEL DATA --task zeroshot_retrieval`` writes::

    {"dataset": ..., "model": "vl-jepa", "pretrained": MODEL, "task": "zeroshot_retrieval",
     "metrics": {"image_retrieval_recall@1": ..., "text_retrieval_recall@1": ..., ...},
     "language": "en"}

As in CLIP_benchmark, ``image_retrieval_recall@k`` is text→image (a caption retrieves its
images) and ``text_retrieval_recall@k`` image→text, fractions in ``[0, 1]``; a hit is any
positive in the top k (samples with the same caption are positives; image→text ranks
distinct captions). ``zeroshot_classification`` gives ``acc1``, ``acc5`` and
``mean_per_class_recall``; ``vqa`` (this package's: discriminative VQA) ``vqa_accuracy`` and
``chance``, overall and per question type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torchmetrics.classification import MulticlassRecall

from jepa_lightning.classify import class_embeddings, class_prompts
from jepa_lightning.data.collate import caption_id
from jepa_lightning.data.images import ImageBatch, image_batches
from jepa_lightning.inference import PretrainedVLJEPA, load_model
from jepa_lightning.metrics import CrossModalRecall, ZeroShotAccuracy
from jepa_lightning.metrics.vqa import VQAAccuracy, answer_targets, padded_candidates

Task = Literal["zeroshot_retrieval", "zeroshot_classification", "vqa"]

BENCHMARK_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")
"""The top-level keys of a CLIP_benchmark result file."""


def _retrieval(
    network: PretrainedVLJEPA, batches: Iterator[ImageBatch], recall_k: list[int]
) -> dict[str, float]:
    recall = CrossModalRecall(top_k=tuple(recall_k), distinct_texts=True)
    for batch in batches:
        rows = [i for i, record in enumerate(batch.records) if record["caption"]]
        if not rows:
            continue
        captions = [batch.records[i]["caption"] for i in rows]
        images = network.encode_images(batch.pixels[rows])
        ids = torch.tensor([caption_id(caption) for caption in captions])
        recall.update(images, network.encode_texts(captions), ids)
    scores = recall.compute()
    metrics = {}
    for k in recall.top_k:
        metrics[f"image_retrieval_recall@{k}"] = float(scores[f"t2i/R@{k}"])
        metrics[f"text_retrieval_recall@{k}"] = float(scores[f"i2t/R@{k}"])
    return metrics


def _label(record: dict[str, Any], label: str) -> Any:
    """A record's class: ``meta["labels"][label]``, ``meta[label]``, or its folder's name."""
    meta = record.get("meta") or {}
    labels = meta.get("labels")
    if isinstance(labels, dict) and label in labels:
        return labels[label]
    if label in meta:
        return meta[label]
    if label == "folder" and "path" in record:
        return Path(record["path"]).parent.name
    return None


def _classification(
    network: PretrainedVLJEPA,
    batches: Iterator[ImageBatch],
    class_names: list[str] | dict[str, str],
    templates: list[str],
    label: str,
) -> dict[str, float]:
    names = list(class_prompts(class_names))
    if len(names) < 2:
        raise ValueError(f"zeroshot_classification needs at least 2 classes, got {names}")
    index = {name: i for i, name in enumerate(names)}
    classes = class_embeddings(network, class_names, templates)
    accuracy = ZeroShotAccuracy(classes, top_k=(1, 5))
    per_class = MulticlassRecall(num_classes=len(names), average="macro")
    for batch in batches:
        labels = [_label(record, label) for record in batch.records]
        rows = [i for i, value in enumerate(labels) if value is not None]
        unknown = {labels[i] for i in rows} - set(index)
        if unknown:
            raise ValueError(f"labels {sorted(map(str, unknown))} are not in class_names")
        if not rows:
            continue
        targets = torch.tensor([index[labels[i]] for i in rows])
        images = network.encode_images(batch.pixels[rows])
        accuracy.update(images, targets)
        per_class.update((images @ classes.T).argmax(dim=1), targets)
    scores = accuracy.compute()
    return {
        "acc1": float(scores["top1"]),
        "acc5": float(scores["top5"]),
        "mean_per_class_recall": float(per_class.compute()),
    }


def _vqa(network: PretrainedVLJEPA, batches: Iterator[ImageBatch]) -> dict[str, float]:
    metrics: dict[str, VQAAccuracy] = {"": VQAAccuracy()}
    for batch in batches:
        metas = [record.get("meta") or {} for record in batch.records]
        rows, candidates, targets = answer_targets(metas)
        if not rows:
            continue
        questions = [metas[i]["query"] for i in rows]
        predicted = network.encode_images(batch.pixels[rows], queries=questions)
        embedded, mask = padded_candidates(candidates, network.encode_texts)
        target = torch.tensor(targets)
        groups = {"": list(range(len(rows)))}
        for position, row in enumerate(rows):
            kind = metas[row].get("question_type")
            if kind is not None:
                groups.setdefault(f"_{kind}", []).append(position)
        for name, members in groups.items():
            index = torch.tensor(members)
            metric = metrics.setdefault(name, VQAAccuracy())
            metric.update(predicted[index], embedded[index], target[index], mask[index])
    if int(metrics[""].total) == 0:
        raise ValueError("no sample has a question (json query, answer and candidates)")
    result = {}
    for name, metric in sorted(metrics.items()):
        values = metric.compute()
        result[f"vqa_accuracy{name}"] = float(values["accuracy"])
        result[f"chance{name}"] = float(values["chance"])
    return result


def evaluate(
    model: str,
    data: str,
    task: Task = "zeroshot_retrieval",
    output: str | None = None,
    dataset: str | None = None,
    class_names: list[str] | dict[str, str] | None = None,
    templates: list[str] | None = None,
    label: str = "label",
    recall_k: list[int] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluates a model on a folder of images or on shards; writes CLIP_benchmark's JSON.

    Args:
        model: A ``.ckpt`` checkpoint, an export folder or a hub repository id.
        data: A folder of image files (captions from side-car ``.txt``, metadata from
            ``.json``) or shards (``txt`` captions, ``json`` labels and questions).
        task: ``zeroshot_retrieval`` (needs captions), ``zeroshot_classification`` (needs
            ``class_names`` and a label per image) or ``vqa`` (needs ``json`` ``query``,
            ``answer`` and ``candidates``).
        output: The JSON file; default ``<dataset>_<task>.json``.
        dataset: The data set's name in the results; default the data folder's name.
        class_names: Classification: the class names, or a mapping to their prompt texts.
        templates: Classification: prompt templates with one ``{}``; default ``["{}"]``.
        label: Classification: the label's name, looked up in ``json["labels"]`` then in
            ``json``; ``folder`` takes an image file's folder name (ImageFolder layout).
        recall_k: Retrieval: the k of recall@k; default 1, 5 and 10.
        batch_size: Images per forward pass.
        device: Where to run the model.

    Returns:
        The results, as written.

    Raises:
        ValueError: If the task's inputs are missing (no caption, label or question).
    """
    network = load_model(model, device=device, batch_size=batch_size)
    batches = image_batches(data, network._codec(), batch_size)
    if task == "zeroshot_retrieval":
        metrics = _retrieval(network, batches, recall_k or [1, 5, 10])
    elif task == "zeroshot_classification":
        if not class_names:
            raise ValueError("zeroshot_classification needs --class_names")
        metrics = _classification(network, batches, class_names, templates or ["{}"], label)
    else:
        metrics = _vqa(network, batches)
    name = dataset or Path(data.rstrip("/")).name
    results = {
        "dataset": name,
        "model": "vl-jepa",
        "pretrained": model,
        "task": task,
        "metrics": metrics,
        "language": "en",
    }
    path = Path(output or f"{name}_{task}.json")
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results["metrics"], indent=2))
    print(f"results: {path}")
    return results
