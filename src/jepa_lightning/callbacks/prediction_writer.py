"""Writes what ``jepa-lightning predict`` computes: keys, captions, ``ŝ`` and ``s`` per sample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from jepa_lightning.embedding_table import SAMPLES_FILE, TablePartWriter, merge_parts

ARRAYS = ("image_embeddings", "text_embeddings")


class EmbeddingWriter(BasePredictionWriter):
    """Writes every predicted sample once into an embeddings folder.

    The folder (see :mod:`jepa_lightning.embedding_table`) holds ``samples.jsonl`` (``key``
    and ``caption``, null for an uncaptioned sample), ``image_embeddings.npy`` (``ŝ``, no
    query) and ``text_embeddings.npy`` (``s``; NaN rows for uncaptioned samples), row ``i``
    of each for the same sample. Each process streams its rows to its own part files; at the
    end of the pass rank 0 joins them (ranks in order), so that memory stays bounded by a
    batch. Under DDP the folder must be on a file system that every rank sees. Pass
    ``--return_predictions false`` to ``predict`` so that Lightning does not also keep them.

    Args:
        output_dir: The folder to write.
        overwrite: Replace the embeddings of an earlier pass in that folder.
    """

    def __init__(self, output_dir: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self._part: TablePartWriter | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuses a folder that holds earlier embeddings (every rank decides alike).

        Raises:
            FileExistsError: If the folder has a ``samples.jsonl`` and ``overwrite`` is off.
        """
        if stage == "predict" and (self.output_dir / SAMPLES_FILE).exists() and not self.overwrite:
            raise FileExistsError(
                f"{type(self).__name__}: {self.output_dir} already holds embeddings; choose "
                "another output_dir or set overwrite: true"
            )

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Opens this rank's part files."""
        self._part = TablePartWriter(self.output_dir, f"rank{trainer.global_rank}", ARRAYS)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Appends a batch's rows (what ``VLJEPA.predict_step`` returned).

        Raises:
            TypeError: If the step returned no keys and embeddings.
        """
        if not isinstance(prediction, Mapping) or "keys" not in prediction:
            raise TypeError(
                f"{type(self).__name__} writes what VLJEPA.predict_step returns (keys, captions, "
                f"embeddings), got {type(prediction).__name__}"
            )
        assert self._part is not None
        records = [
            {"key": key, "caption": caption}
            for key, caption in zip(prediction["keys"], prediction["captions"], strict=True)
        ]
        self._part.write(records, {name: prediction[name] for name in ARRAYS})

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Closes the parts; rank 0 joins them once every rank has finished."""
        assert self._part is not None
        self._part.close()
        self._part = None
        trainer.strategy.barrier("embedding_writer_parts")
        if trainer.is_global_zero:
            parts = [f"rank{rank}" for rank in range(trainer.world_size)]
            merge_parts(self.output_dir, parts, ARRAYS)
        trainer.strategy.barrier("embedding_writer_merged")
