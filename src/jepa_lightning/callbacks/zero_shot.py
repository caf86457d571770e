"""Zero-shot classification of the validation images from class-name prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from jepa_lightning.callbacks.probes import label_indices
from jepa_lightning.callbacks.utils import require_vl_jepa, validation_embeddings
from jepa_lightning.metrics import ZeroShotAccuracy
from jepa_lightning.modules import VLJEPA


class ZeroShotEvaluator(Callback):
    """Classifies each validation image ``ŝ`` by its nearest class-prompt embedding.

    A class's embedding is the normalised mean of the Y-encoder embeddings ``s`` of its
    prompts: each template of its task with ``{}`` replaced by the class's prompt text
    (CLIP's prompt ensembling), recomputed at the start of every validation. A sample's label
    for a task is read from its metadata, ``batch.meta[i]["labels"][task]`` (a class name);
    samples without one (missing or None) are skipped for that task.

    Logs ``val/zero_shot/<task>/top<k>`` for each task and each ``k`` below the task's number
    of classes (a larger ``k`` is always a hit).

    Args:
        class_names: Per task, the class names: a list (each name is also its prompt text) or
            a mapping from class name to prompt text (e.g. ``{"top left": "in the top left
            corner"}``).
        templates: Per task, prompt templates with one ``{}``; ``["{}"]`` for a task not
            listed.
        top_k: The ``k`` values of the top-k accuracy.

    Raises:
        ValueError: If a task has no classes, a template lacks ``{}`` or names an unknown
            task.
    """

    def __init__(
        self,
        class_names: dict[str, list[str] | dict[str, str]],
        templates: dict[str, list[str]] | None = None,
        top_k: Sequence[int] = (1, 5),
    ) -> None:
        templates = templates or {}
        unknown = set(templates) - set(class_names)
        if unknown:
            raise ValueError(f"templates name tasks without class_names: {sorted(unknown)}")
        self.prompts: dict[str, dict[str, str]] = {}
        self.templates: dict[str, list[str]] = {}
        for task, names in class_names.items():
            prompts = dict(names) if isinstance(names, dict) else {name: name for name in names}
            if not prompts:
                raise ValueError(f"task {task!r} has no class names")
            task_templates = list(templates.get(task, ["{}"]))
            if not task_templates or any("{}" not in t for t in task_templates):
                raise ValueError(
                    f"task {task!r}: every template needs a '{{}}', got {task_templates}"
                )
            self.prompts[task] = prompts
            self.templates[task] = task_templates
        self.metrics = {task: ZeroShotAccuracy(top_k=tuple(top_k)) for task in self.prompts}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Checks the module and moves the metrics to its device."""
        require_vl_jepa(pl_module, type(self).__name__)
        for metric in self.metrics.values():
            metric.to(pl_module.device)

    @torch.no_grad()
    def class_embeddings(self, model: VLJEPA, task: str) -> Tensor:
        """Embeds a task's classes from their prompts with the model's Y-encoder.

        Args:
            model: The model.
            task: The task.

        Returns:
            ``(C, D)`` unit-norm class embeddings, in the order of the task's class names.
        """
        templates = self.templates[task]
        texts = [t.format(prompt) for prompt in self.prompts[task].values() for t in templates]
        embeddings = model.model.embed_texts(texts)
        mean = embeddings.float().view(-1, len(templates), embeddings.shape[-1]).mean(dim=1)
        return F.normalize(mean, dim=-1)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Embeds the class prompts with the current Y-encoder."""
        model = require_vl_jepa(pl_module, type(self).__name__)
        for task, metric in self.metrics.items():
            metric.set_class_embeddings(self.class_embeddings(model, task))

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Classifies the batch's images for every task."""
        images, _ = validation_embeddings(outputs, type(self).__name__)
        metas = batch.valid_rows().meta or [{}] * images.shape[0]  # the rows of the outputs
        for task, metric in self.metrics.items():
            metric.update(images, self.labels(metas, task).to(images.device))

    def labels(self, metas: Sequence[Any], task: str) -> Tensor:
        """Class indices of a batch for one task, ``-1`` where a sample has no label.

        Args:
            metas: The samples' metadata dicts.
            task: The task.

        Returns:
            ``(B,)`` int64 class indices.

        Raises:
            ValueError: If a label is not one of the task's class names.
        """
        return label_indices(metas, task, list(self.prompts[task]))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs the top-k accuracies over the whole validation set."""
        values = {}
        for task, metric in self.metrics.items():
            try:
                scores = metric.compute()  # synced first: every rank sees the same total
            except ValueError:  # no labelled sample on any rank
                rank_zero_warn(
                    f"{type(self).__name__}: no validation sample has a '{task}' label "
                    '(json {"labels": {...}}); skipping that task'
                )
                metric.reset()
                continue
            for k in metric.top_k:
                if k < len(self.prompts[task]):
                    values[f"val/zero_shot/{task}/top{k}"] = scores[f"top{k}"]
            metric.reset()
        pl_module.log_dict(values)
