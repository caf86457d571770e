"""Online k-NN and linear probes on a pretraining run's frozen features.

"Is it learning, and which checkpoint is best?" without labels in the loss: the probes read
the features that each training and validation step of the pretraining module returns
(``outputs["features"]``, ``(B, D)``: for :class:`~jepa_lightning.modules.IJEPA`, the target
encoder's mean-pooled features, computed without gradient), and labels from each sample's
``json``: ``meta["labels"][task]``, a class name, or a class index for a task given as a
number of classes (the shapes set writes ``shape``, ``colour`` and ``position`` names; a
missing or None label leaves the sample out of that task).

Each probe logs ``probe/<kind>/<task>/top1`` over the whole validation set (synced across
ranks) and ``probe/<kind>/mean``, the mean over the tasks: a ``ModelCheckpoint`` can monitor it
(``monitor: probe/knn/mean``, ``mode: max``) to keep the checkpoints that the probe, not the
loss, ranks best. The training features are gathered from every rank, so the probe's state
(the k-NN bank, the linear heads) is the same on every rank.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

Classes = list[str] | int
"""A task's class names (labels are names), or its number of classes (labels are indices)."""


def label_indices(metas: Sequence[Any], task: str, classes: Classes) -> Tensor:
    """Class indices of a batch for one task, ``-1`` where a sample has no label.

    Args:
        metas: The samples' metadata dicts (``meta["labels"][task]`` is the label).
        task: The task.
        classes: The task's class names in index order, or its number of classes (then the
            labels are indices).

    Returns:
        ``(B,)`` int64 class indices.

    Raises:
        ValueError: If a label is not one of the task's classes.
    """
    names = range(classes) if isinstance(classes, int) else classes
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for meta in metas:
        label = meta.get("labels", {}).get(task) if isinstance(meta, dict) else None
        if label is not None and label not in index:
            shown = f"an index below {classes}" if isinstance(classes, int) else list(classes)
            raise ValueError(f"label {label!r} of task {task!r} is not in its class_names: {shown}")
        labels.append(-1 if label is None else index[label])
    return torch.tensor(labels, dtype=torch.int64)


def num_classes(classes: Classes) -> int:
    """The number of classes of a task given by names or by count."""
    return classes if isinstance(classes, int) else len(classes)


def step_tensor(outputs: Any, key: str, callback: str) -> Tensor:
    """``outputs[key]``, from what a training or validation step returned, detached.

    Args:
        outputs: The step's return value.
        key: The entry, e.g. ``"features"``.
        callback: The callback's name, for the error message.

    Returns:
        The tensor.

    Raises:
        TypeError: If the step returned no such entry.
    """
    if not isinstance(outputs, Mapping) or not isinstance(outputs.get(key), Tensor):
        raise TypeError(
            f"{callback} reads {key!r} from what the module's steps return (IJEPA returns "
            f"it), got {type(outputs).__name__}"
        )
    return outputs[key].detach()


def knn_predict(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> Tensor:
    """Weighted k-nearest-neighbour classification by cosine similarity (Wu et al., 2018).

    Each query's ``k`` most similar labelled bank rows vote for their class with weight
    ``exp(similarity / temperature)``; the class with the largest total wins (the lowest
    index on a tie). Bank rows labelled ``-1`` take no part.

    Args:
        queries: ``(Q, D)`` features.
        bank: ``(M, D)`` features.
        bank_labels: ``(M,)`` class indices, ``-1`` for unlabelled rows.
        num_classes: Number of classes.
        k: Neighbours (fewer when the bank has fewer labelled rows).
        temperature: Temperature of the vote weights.

    Returns:
        ``(Q,)`` predicted class indices.

    Raises:
        ValueError: If no bank row is labelled.
    """
    labelled = bank_labels >= 0
    if not bool(labelled.any()):
        raise ValueError("k-NN needs at least one labelled bank row")
    bank, bank_labels = bank[labelled], bank_labels[labelled]
    similarity = F.normalize(queries.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T
    top = similarity.topk(min(k, bank.shape[0]), dim=1)
    weights = (top.values / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[top.indices], weights)
    return votes.argmax(dim=1)


def _gathered(pl_module: LightningModule, tensor: Tensor) -> Tensor:
    """Every rank's rows, concatenated; the rows as they are on one process."""
    gathered = pl_module.all_gather(tensor)
    assert isinstance(gathered, Tensor)  # a tensor in, a tensor out
    return gathered.reshape(-1, *tensor.shape[1:])


class _OnlineProbe(Callback, ABC):
    """Per-task validation accuracy of a probe's predictions, logged as ``probe/<kind>/...``.

    Subclasses train on the training steps' features and predict in :meth:`predict`.
    """

    kind: ClassVar[str]

    def __init__(self, tasks: dict[str, Classes]) -> None:
        if not tasks or any(num_classes(classes) < 2 for classes in tasks.values()):
            raise ValueError(f"tasks need at least one task of at least 2 classes, got {tasks}")
        self.tasks = dict(tasks)
        self.accuracy = {
            task: MulticlassAccuracy(num_classes(classes), average="micro", ignore_index=-1)
            for task, classes in self.tasks.items()
        }
        self.labelled = {task: SumMetric() for task in self.tasks}

    def labels(self, batch: Any) -> Tensor:
        """``(B, tasks)`` class indices of a batch (``-1``: no label), in task order."""
        metas = batch.meta or [{}] * len(batch)
        columns = [label_indices(metas, task, classes) for task, classes in self.tasks.items()]
        return torch.stack(columns, dim=1)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Moves the metrics to the module's device."""
        for metric in [*self.accuracy.values(), *self.labelled.values()]:
            metric.to(pl_module.device)

    @abstractmethod
    def predict(self, features: Tensor) -> dict[str, Tensor] | None:
        """``(B,)`` predicted classes per task, or None while the probe cannot predict yet."""

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Classifies the batch's features for every task."""
        predictions = self.predict(step_tensor(outputs, "features", type(self).__name__))
        if predictions is None:
            return
        labels = self.labels(batch.valid_rows()).to(pl_module.device)  # the outputs' rows
        for column, task in enumerate(self.tasks):
            self.accuracy[task].update(predictions[task], labels[:, column])
            self.labelled[task].update((labels[:, column] >= 0).sum())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs each task's top-1 accuracy and their mean, over the whole validation set."""
        values = {}
        for task in self.tasks:
            # update() ran on every rank or on none, so compute() syncs on all or none.
            if self.accuracy[task].update_count and self.labelled[task].compute() > 0:
                values[f"probe/{self.kind}/{task}/top1"] = self.accuracy[task].compute()
            elif self.accuracy[task].update_count:
                rank_zero_warn(f"{type(self).__name__}: no validation sample has a {task!r} label")
            self.accuracy[task].reset()
            self.labelled[task].reset()
        if values:
            values[f"probe/{self.kind}/mean"] = torch.stack(list(values.values())).mean()
            pl_module.log_dict(values)


class KNNProbe(_OnlineProbe):
    """Online weighted k-NN probe: a bank of recent training features, queried by validation.

    Every training step's features and labels (gathered from all ranks) enter a first-in
    first-out bank of ``bank_size`` rows; each validation sample is classified by
    :func:`knn_predict` against it. The bank holds features from the last
    ``bank_size / global batch`` steps, so it lags the encoder a little. Before the first
    training step (the sanity check) nothing is logged.

    Args:
        tasks: Per task, its class names or number of classes (see :func:`label_indices`).
        k: Neighbours.
        temperature: Temperature of the vote weights.
        bank_size: Training rows kept.

    Raises:
        ValueError: If a task has fewer than 2 classes, or ``k`` or ``bank_size`` is below 1.
    """

    kind = "knn"

    def __init__(
        self,
        tasks: dict[str, Classes],
        k: int = 20,
        temperature: float = 0.07,
        bank_size: int = 4096,
    ) -> None:
        super().__init__(tasks)
        if k < 1 or bank_size < 1:
            raise ValueError(f"k and bank_size must be >= 1, got {k} and {bank_size}")
        self.k = k
        self.temperature = temperature
        self.bank_size = bank_size
        self.bank: Tensor | None = None
        self.bank_labels: Tensor | None = None

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Adds the step's (gathered) features and labels to the bank."""
        features = F.normalize(step_tensor(outputs, "features", type(self).__name__).float())
        features = _gathered(pl_module, features)
        labels = _gathered(pl_module, self.labels(batch).to(pl_module.device))
        if self.bank is None or self.bank_labels is None:
            self.bank, self.bank_labels = features, labels
        else:
            self.bank = torch.cat([self.bank, features])
            self.bank_labels = torch.cat([self.bank_labels, labels])
        self.bank = self.bank[-self.bank_size :]
        self.bank_labels = self.bank_labels[-self.bank_size :]

    def predict(self, features: Tensor) -> dict[str, Tensor] | None:
        """k-NN classes per task (tasks without a labelled bank row predict class 0)."""
        if self.bank is None or self.bank_labels is None:
            return None
        predictions = {}
        for column, (task, classes) in enumerate(self.tasks.items()):
            labels = self.bank_labels[:, column]
            if bool((labels >= 0).any()):
                predictions[task] = knn_predict(
                    features, self.bank, labels, num_classes(classes), self.k, self.temperature
                )
            else:
                predictions[task] = torch.zeros(len(features), dtype=torch.long)
            predictions[task] = predictions[task].to(features.device)
        return predictions

    def state_dict(self) -> dict[str, Any]:
        """The bank (resumed runs keep it)."""
        return {"bank": self.bank, "bank_labels": self.bank_labels}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the bank."""
        self.bank, self.bank_labels = state_dict["bank"], state_dict["bank_labels"]


class LinearProbe(_OnlineProbe):
    """Online linear probe: one linear classifier per task, trained on every training step.

    The classifiers read the features layer-normed (no affine parameters, so their scale,
    which drifts in pretraining, does not matter), start at zero, and take one AdamW step per
    training step on the cross-entropy of the step's features (gathered from all ranks,
    detached: the encoder never sees the labels). Validation reports their accuracy.

    Args:
        tasks: Per task, its class names or number of classes (see :func:`label_indices`).
        lr: AdamW learning rate of the classifiers.
        weight_decay: AdamW weight decay.

    Raises:
        ValueError: If a task has fewer than 2 classes.
    """

    kind = "linear"

    def __init__(
        self, tasks: dict[str, Classes], lr: float = 1e-3, weight_decay: float = 0.0
    ) -> None:
        super().__init__(tasks)
        self.lr = lr
        self.weight_decay = weight_decay
        self.heads: nn.ModuleDict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def _build(self, dim: int, device: torch.device) -> tuple[nn.ModuleDict, torch.optim.Optimizer]:
        heads = nn.ModuleDict(
            {task: nn.Linear(dim, num_classes(c)) for task, c in self.tasks.items()}
        )
        for parameter in heads.parameters():
            nn.init.zeros_(parameter)  # the same start on every rank
        heads.to(device)
        optimizer = torch.optim.AdamW(
            heads.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        if self._pending_state is not None:
            heads.load_state_dict(self._pending_state["heads"])
            optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None
        return heads, optimizer

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """One optimizer step of every classifier on the step's (gathered) features."""
        features = step_tensor(outputs, "features", type(self).__name__).float()
        features = _gathered(pl_module, features)
        labels = _gathered(pl_module, self.labels(batch).to(pl_module.device))
        if self.heads is None or self.optimizer is None:
            self.heads, self.optimizer = self._build(features.shape[1], features.device)
        inputs = F.layer_norm(features, features.shape[-1:])
        with torch.enable_grad():
            losses = []
            for column, head in enumerate(self.heads.values()):
                if bool((labels[:, column] >= 0).any()):
                    losses.append(F.cross_entropy(head(inputs), labels[:, column], ignore_index=-1))
            if not losses:
                return
            self.optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            self.optimizer.step()

    @torch.no_grad()
    def predict(self, features: Tensor) -> dict[str, Tensor] | None:
        """The classifiers' classes per task; None before the first training step."""
        if self.heads is None:
            return None
        inputs = F.layer_norm(features.float(), features.shape[-1:])
        return {task: head(inputs).argmax(dim=1) for task, head in self.heads.items()}

    def state_dict(self) -> dict[str, Any]:
        """The classifiers and their optimizer state (resumed runs keep them)."""
        if self.heads is None or self.optimizer is None:
            return {}
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the classifiers when they are next built (their width comes from data)."""
        if state_dict:
            self._pending_state = state_dict
            self.heads = self.optimizer = None
