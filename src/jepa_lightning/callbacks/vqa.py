"""Discriminative VQA accuracy of the validation questions: the nearest candidate answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from jepa_lightning.callbacks.utils import require_vl_jepa
from jepa_lightning.metrics.vqa import VQAAccuracy, answer_targets, padded_candidates


class VQAEvaluator(Callback):
    """Logs ``val/vqa/accuracy`` (and ``val/vqa/chance``) of the validation questions.

    VL-JEPA's discriminative VQA: ``ŝ`` of (image, question), which the validation step
    returns as ``query_embeddings`` for batches with queries, is compared with the Y-encoder's
    ``s`` of each candidate answer; the nearest candidate is the answer. A question is a
    sample whose ``json`` has ``query``, ``answer`` and ``candidates`` (as the shapes
    generator writes with ``with_queries``). Validation data without questions is skipped
    with one warning.

    Args:
        question_types: Also log the accuracy of these values of the samples'
            ``question_type`` (``val/vqa/<type>/accuracy``); a fixed list, so that every
            rank syncs the same metrics.
    """

    def __init__(self, question_types: Sequence[str] = ()) -> None:
        self.question_types = tuple(question_types)
        self.metrics: dict[str, VQAAccuracy] = {}
        self._answers: dict[str, Tensor] = {}
        self._warned = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Checks that the module is a VLJEPA."""
        require_vl_jepa(pl_module, type(self).__name__)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forgets the candidate embeddings: the Y-encoder has changed since."""
        self._answers = {}
        names = ("", *self.question_types)
        self.metrics = {name: VQAAccuracy().to(pl_module.device) for name in names}

    @torch.no_grad()
    def _embed(self, pl_module: LightningModule, texts: Sequence[str]) -> Tensor:
        new = [text for text in dict.fromkeys(texts) if text not in self._answers]
        if new:
            model = require_vl_jepa(pl_module, type(self).__name__).model
            self._answers.update(zip(new, model.embed_texts(new).float(), strict=True))
        return torch.stack([self._answers[text] for text in texts])

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Answers the batch's questions by their nearest candidates."""
        metas = batch.valid_rows().meta  # the rows of the outputs
        rows, candidates, targets = answer_targets(metas)
        if not rows:
            return
        if not isinstance(outputs, Mapping) or "query_embeddings" not in outputs:
            raise TypeError(
                f"{type(self).__name__} reads the query_embeddings that VLJEPA.validation_step "
                "returns for batches with queries; these samples have answers but no query"
            )
        predicted = outputs["query_embeddings"].float()[rows]
        embedded, mask = padded_candidates(candidates, lambda texts: self._embed(pl_module, texts))
        target = torch.tensor(targets, device=predicted.device)
        groups = {"": list(range(len(rows)))}
        for position, row in enumerate(rows):
            kind = metas[row].get("question_type")
            if kind in self.metrics:
                groups.setdefault(kind, []).append(position)
        for kind, members in groups.items():
            index = torch.tensor(members, device=predicted.device)
            self.metrics[kind].update(predicted[index], embedded[index], target[index], mask[index])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs the accuracy and the chance level, overall and per question type."""
        values = {}
        for kind, metric in sorted(self.metrics.items()):
            try:
                scores = metric.compute()  # synced first: every rank sees the same total
            except ValueError:  # no question on any rank
                if kind == "" and not self._warned:
                    rank_zero_warn(
                        f"{type(self).__name__}: no validation sample has a question (json "
                        '{"query", "answer", "candidates"}); skipping VQA accuracy'
                    )
                    self._warned = True
                continue
            prefix = "val/vqa" if kind == "" else f"val/vqa/{kind}"
            values[f"{prefix}/accuracy"] = scores["accuracy"]
            values[f"{prefix}/chance"] = scores["chance"]
        pl_module.log_dict(values)
