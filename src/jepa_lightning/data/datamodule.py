"""LightningDataModules that stream WebDataset shards."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.pipeline import ShardSource, ShardStream, resolve_shards
from jepa_lightning.data.shapes import ensure_shapes_shards


class EpochDataLoader(DataLoader):
    """A DataLoader that tells its :class:`ShardStream` the epoch before each pass.

    Args:
        dataset: The stream.
        epoch_of: Returns the current epoch (the trainer's).
        **kwargs: ``DataLoader`` arguments.
    """

    def __init__(self, dataset: ShardStream, epoch_of: Any, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_of = epoch_of

    def __iter__(self) -> Any:
        self.dataset.set_epoch(self.epoch_of())  # type: ignore[attr-defined]
        return super().__iter__()


class WebDataModule(LightningDataModule):
    """Streams (image, caption[, json]) samples from WebDataset shards.

    The model being trained supplies the collator (its encoders' codecs:
    image size, tokenizer) through ``batch_collator()``.

    Args:
        train_shards: Training shard source: a folder (with ``index.json`` or
            ``*.tar``), a brace pattern, a ``pipe:`` command, or a list.
        val_shards: Validation shard source, read once per validation, in order.
        batch_size: Samples per batch on each rank.
        val_batch_size: Validation batch size; default ``batch_size``.
        samples_per_epoch: Training samples per epoch over all ranks; default
            the training index's count (required when there is no index).
        num_workers: Data loader workers per rank.
        shuffle_buffer: Sample shuffle buffer size.
        seed: Base seed of shard and sample shuffling.
        pin_memory: Pin batches in page-locked memory (GPU training).
        persistent_workers: Keep workers alive between epochs.
    """

    def __init__(
        self,
        train_shards: ShardSource | None = None,
        val_shards: ShardSource | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        samples_per_epoch: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.samples_per_epoch = samples_per_epoch
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0

    def _collator(self) -> PairCollator:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or not hasattr(model, "batch_collator"):
            raise RuntimeError(
                "WebDataModule takes its collator from the model being trained "
                "(`batch_collator()`); attach both to a Trainer"
            )
        collator: PairCollator = model.batch_collator()  # type: ignore[operator]
        return collator

    def _loader(self, stream: ShardStream) -> EpochDataLoader:
        return EpochDataLoader(
            stream,
            epoch_of=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> EpochDataLoader:
        """The resampled training stream, equal batch counts on every rank."""
        if self.train_shards is None:
            raise ValueError("data.train_shards is not set")
        urls, indexed = resolve_shards(self.train_shards, "data.train_shards")
        samples = self.samples_per_epoch or indexed
        if samples is None:
            raise ValueError(
                "data.samples_per_epoch is required when data.train_shards has no index.json"
            )
        world = self.trainer.world_size if self.trainer is not None else 1
        batches_per_rank = samples // (self.batch_size * world)
        workers = max(1, self.num_workers)
        if batches_per_rank < 1:
            raise ValueError(
                f"an epoch of {samples} samples is less than one batch of {self.batch_size} "
                f"on each of {world} ranks; lower data.batch_size or raise data.samples_per_epoch"
            )
        stream = ShardStream(
            urls,
            self._collator(),
            self.batch_size,
            batches_per_worker=math.ceil(batches_per_rank / workers),
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
        )
        return self._loader(stream)

    def _eval_loader(self) -> EpochDataLoader:
        if self.val_shards is None:
            raise ValueError("data.val_shards is not set")
        urls, _ = resolve_shards(self.val_shards, "data.val_shards")
        return self._loader(ShardStream(urls, self._collator(), self.val_batch_size))

    def val_dataloader(self) -> EpochDataLoader:
        """The validation shards, read once, in order."""
        return self._eval_loader()

    def test_dataloader(self) -> EpochDataLoader:
        """The validation shards (the held-out set), read once, in order."""
        return self._eval_loader()

    def predict_dataloader(self) -> EpochDataLoader:
        """The validation shards, read once, in order."""
        return self._eval_loader()


class ShapesDataModule(WebDataModule):
    """The embedded default data: generated "shapes" shards, written on first use.

    Images of coloured shapes with compositional captions ("a small red circle
    on the left"), written as WebDataset shards under ``root`` by
    :func:`~jepa_lightning.data.shapes.ensure_shapes_shards` in
    ``prepare_data`` (once; rewritten only when the parameters change).

    Args:
        root: Folder for the ``train`` and ``val`` shard folders.
        train_samples: Number of training samples to generate.
        val_samples: Number of validation samples to generate.
        image_size: Side of the generated images.
        two_shape_fraction: Fraction of samples with two shapes and a relation.
        with_queries: Add a question as the query of each sample.
        data_seed: Seed of the generator (validation uses ``data_seed + 1``).
        **kwargs: :class:`WebDataModule` arguments (batch size, workers...).
    """

    def __init__(
        self,
        root: str = "data/shapes",
        train_samples: int = 20000,
        val_samples: int = 1000,
        image_size: int = 64,
        two_shape_fraction: float = 0.3,
        with_queries: bool = False,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs["train_shards"] = kwargs.get("train_shards") or f"{root}/train"
        kwargs["val_shards"] = kwargs.get("val_shards") or f"{root}/val"
        super().__init__(**kwargs)
        self.root = root
        self.generator_args: dict[str, Any] = {
            "image_size": image_size,
            "two_shape_fraction": two_shape_fraction,
            "with_queries": with_queries,
        }
        self.splits = {"train": (train_samples, data_seed), "val": (val_samples, data_seed + 1)}

    def prepare_data(self) -> None:
        """Writes the shapes shards if they are missing or were made differently."""
        for split, (num_samples, seed) in self.splits.items():
            ensure_shapes_shards(
                f"{self.root}/{split}",
                num_samples=num_samples,
                seed=seed,
                split=split,
                progress=True,
                **self.generator_args,
            )
