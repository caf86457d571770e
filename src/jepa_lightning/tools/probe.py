"""Offline probes of a frozen vision encoder: attentive (V-JEPA 2's evaluation), linear, k-NN.

``jepa-lightning probe ENCODER --train_shards ... --val_shards ...`` encodes every sample of
both shard sets once with the frozen encoder, then fits, per task (``meta["labels"][task]``),
on the training features and reports top-1 accuracy on the validation ones:

* ``attentive``: a learned query cross-attends to the patch tokens, then an MLP and a linear
  classifier (V-JEPA 2's attentive probe, one block): it can read where in the image things
  are, which a mean-pooled feature blurs;
* ``linear``: a linear classifier on the layer-normed mean-pooled features;
* ``knn``: weighted k-NN on the mean-pooled features (as the online
  :class:`~jepa_lightning.callbacks.KNNProbe`).

The encoder is a pretrained folder (an export of ``jepa-lightning export-encoder``, any
``transformers`` vision model) or a config dict (random init: the baseline of the same
architecture).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_lightning.callbacks.probes import Classes, knn_predict, label_indices, num_classes
from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.datamodule import WebDataModule
from jepa_lightning.encoders.hf import ModelSource
from jepa_lightning.encoders.vision import VisionEncoder
from jepa_lightning.tools.shapes import shapes_class_names

__all__ = ["AttentiveProbe", "encode_shards", "probe_encoder"]

ProbeKind = Literal["attentive", "linear", "knn"]


class AttentiveProbe(nn.Module):
    """A learned query cross-attends to frozen tokens, then an MLP and a linear classifier.

    One cross-attention block of V-JEPA 2's attentive probe (its query attends to the
    layer-normed tokens; the block has a residual MLP).

    Args:
        dim: Token width.
        num_classes: Classes.
        num_heads: Attention heads (must divide ``dim``).
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int = 4) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Class logits of ``(B, N, dim)`` tokens: ``(B, num_classes)``."""
        keys = self.norm(tokens)
        pooled, _ = self.attention(
            self.query.expand(len(tokens), -1, -1), keys, keys, need_weights=False
        )
        pooled = pooled + self.mlp(self.mlp_norm(pooled))
        return self.classifier(pooled[:, 0])


class _LinearOnPooled(nn.Module):
    """A linear classifier on the layer-normed mean of the tokens."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        pooled = tokens.mean(dim=1)
        return self.classifier(F.layer_norm(pooled, pooled.shape[-1:]))


@torch.no_grad()
def encode_shards(
    encoder: VisionEncoder,
    shards: str,
    tasks: dict[str, Classes],
    max_samples: int | None = None,
    batch_size: int = 256,
    num_workers: int = 1,
) -> tuple[Tensor, Tensor]:
    """Every sample's tokens (in shard order) and labels.

    Args:
        encoder: The frozen encoder.
        shards: The shard source (folder, brace pattern...).
        tasks: Per task, its class names or number of classes.
        max_samples: Stop after this many samples.
        batch_size: Images per forward.
        num_workers: Data loader workers.

    Returns:
        ``(N, T, D)`` float32 tokens and ``(N, tasks)`` labels (``-1``: none).
    """
    data = WebDataModule(
        collator=PairCollator(encoder.codec()),
        val_shards=shards,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    tokens, labels, seen = [], [], 0
    for batch in data.val_dataloader():
        tokens.append(encoder(batch.x).tokens.float())
        metas = batch.meta
        labels.append(torch.stack([label_indices(metas, t, n) for t, n in tasks.items()], 1))
        seen += len(batch)
        if max_samples is not None and seen >= max_samples:
            break
    return torch.cat(tokens)[:max_samples], torch.cat(labels)[:max_samples]


def _fit_classifier(
    classifier: nn.Module,
    tokens: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """AdamW with a cosine schedule on the cross-entropy of the labelled rows."""
    rows = (labels >= 0).nonzero().flatten()
    steps_per_epoch = max(1, -(-len(rows) // batch_size))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    classifier.train()
    for _ in range(epochs):
        order = rows[torch.randperm(len(rows), generator=generator)]
        for chunk in order.split(batch_size):
            loss = F.cross_entropy(classifier(tokens[chunk]), labels[chunk])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()


def _accuracy(predicted: Tensor, labels: Tensor) -> float:
    labelled = labels >= 0
    return float((predicted[labelled] == labels[labelled]).float().mean())


def probe_encoder(
    encoder: ModelSource,
    train_shards: str,
    val_shards: str,
    tasks: dict[str, Classes] | None = None,
    kinds: Sequence[ProbeKind] = ("attentive", "linear", "knn"),
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    k: int = 20,
    num_heads: int = 4,
    num_workers: int = 1,
    output: str | None = None,
) -> dict[str, dict[str, float]]:
    """Probes a frozen encoder on labelled shards: top-1 per probe kind and task.

    Args:
        encoder: A folder or hub name (pretrained weights), or a config dict with
            ``model_type`` (random init, seeded by ``seed``): the baseline.
        train_shards: Shards the probes are fitted on.
        val_shards: Shards they are scored on.
        tasks: Per task, its class names, or its number of classes when the labels are
            indices (``meta["labels"][task]``); default the shapes set's shape, colour and
            position.
        kinds: Which probes to run.
        image_mean: Normalisation mean; default the folder's processor config, else
            ImageNet's (as :class:`~jepa_lightning.encoders.VisionEncoder`).
        image_std: Normalisation std, as ``image_mean``.
        seed: Seed of the random init, the probes' init and their batch order.
        max_train_samples: Fit on the first this-many training samples; default all.
        epochs: Training epochs of the attentive and linear probes.
        batch_size: Batch size of encoding and of probe training.
        lr: Peak AdamW learning rate of the probes (cosine decay).
        k: Neighbours of the k-NN probe.
        num_heads: Attention heads of the attentive probe (must divide the width).
        num_workers: Data loader workers.
        output: Also write the results here as JSON.

    Returns:
        ``{kind: {task: top1, ..., "mean": ...}}``.

    Raises:
        ValueError: If a kind is unknown or a task has no labelled training sample.
    """
    unknown = set(kinds) - {"attentive", "linear", "knn"}
    if unknown:
        raise ValueError(f"unknown probe kinds {sorted(unknown)}: use attentive, linear, knn")
    tasks = tasks or dict(shapes_class_names())
    torch.manual_seed(seed)
    vision = VisionEncoder(encoder, frozen=True, image_mean=image_mean, image_std=image_std)
    train_tokens, train_labels = encode_shards(
        vision, train_shards, tasks, max_train_samples, batch_size, num_workers
    )
    val_tokens, val_labels = encode_shards(vision, val_shards, tasks, None, batch_size, num_workers)
    results: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    dim = train_tokens.shape[-1]
    for column, (task, classes) in enumerate(tasks.items()):
        count = num_classes(classes)
        labels = train_labels[:, column]
        if not bool((labels >= 0).any()):
            raise ValueError(f"no training sample in {train_shards} has a {task!r} label")
        for kind in kinds:
            if kind == "knn":
                predicted = torch.cat(
                    [
                        knn_predict(chunk.mean(1), train_tokens.mean(1), labels, count, k)
                        for chunk in val_tokens.split(1024)
                    ]
                )
            else:
                generator = torch.Generator().manual_seed(seed)
                torch.manual_seed(seed)
                classifier: nn.Module = (
                    AttentiveProbe(dim, count, num_heads)
                    if kind == "attentive"
                    else _LinearOnPooled(dim, count)
                )
                _fit_classifier(classifier, train_tokens, labels, epochs, batch_size, lr, generator)
                with torch.no_grad():
                    predicted = torch.cat(
                        [classifier(chunk).argmax(1) for chunk in val_tokens.split(1024)]
                    )
            results[kind][task] = _accuracy(predicted, val_labels[:, column])
    for scores in results.values():
        scores["mean"] = sum(scores.values()) / len(scores)
    _print_table(results, encoder, len(train_tokens), len(val_tokens))
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "encoder": encoder,
            "train_samples": len(train_tokens),
            "val_samples": len(val_tokens),
            "results": results,
        }
        Path(output).write_text(json.dumps(record, indent=2) + "\n")
    return results


def _print_table(
    results: dict[str, dict[str, float]], encoder: ModelSource, train: int, val: int
) -> None:
    from rich.console import Console
    from rich.table import Table

    tasks = list(next(iter(results.values())))
    source = encoder if isinstance(encoder, str) else f"random init ({encoder.get('model_type')})"
    table = Table("probe", *tasks, title=f"top-1 of {source}: fit on {train}, scored on {val}")
    for kind, scores in results.items():
        table.add_row(kind, *(f"{scores[task]:.3f}" for task in tasks))
    Console(soft_wrap=True).print(table)
