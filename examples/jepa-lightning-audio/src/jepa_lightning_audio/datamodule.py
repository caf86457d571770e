"""The tones set as a data module: shards written on first use, then streamed as usual."""

from __future__ import annotations

from typing import Any

from jepa_lightning.data import WebDataModule

from jepa_lightning_audio.tones import TonesSpec, ensure_tones_shards


class TonesDataModule(WebDataModule):
    """Generated audio-caption shards (see :mod:`jepa_lightning_audio.tones`), written on first use.

    ``prepare_data`` writes ``{root}/train`` and ``{root}/val`` unless they already hold
    exactly these samples; reading them is the package's ``WebDataModule``, whose collator
    (the model's ``batch_collator()``) decodes the ``flac`` clips with the audio codec.

    Args:
        root: Folder of the ``train`` and ``val`` shard folders.
        train_samples: Training clips.
        val_samples: Validation clips.
        sample_rate: Sample rate of the clips in Hz.
        max_events: Longest event sequence of a clip (1 to 3).
        data_seed: Generator seed (validation uses ``data_seed + 1``).
        samples_per_shard: Clips per shard.
        **kwargs: :class:`~jepa_lightning.data.WebDataModule` arguments (batch size,
            workers...).
    """

    def __init__(
        self,
        root: str = "data/tones",
        train_samples: int = 10000,
        val_samples: int = 1000,
        sample_rate: int = 16000,
        max_events: int = 2,
        data_seed: int = 0,
        samples_per_shard: int = 1000,
        **kwargs: Any,
    ) -> None:
        kwargs["train_shards"] = kwargs.get("train_shards") or f"{root}/train"
        kwargs["val_shards"] = kwargs.get("val_shards") or f"{root}/val"
        super().__init__(**kwargs)
        self.root = root
        self.spec = TonesSpec(sample_rate=sample_rate, max_events=max_events)
        self.samples_per_shard = samples_per_shard
        self.splits = {"train": (train_samples, data_seed), "val": (val_samples, data_seed + 1)}

    def prepare_data(self) -> None:
        """Writes the tones shards if they are missing or were made differently."""
        for split, (num_samples, seed) in self.splits.items():
            ensure_tones_shards(
                f"{self.root}/{split}",
                num_samples,
                self.spec,
                self.samples_per_shard,
                seed=seed,
                split=split,
            )
