"""The generated video data: "moving shapes" clips with temporal captions, written on first use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from jepa_lightning.data.datamodule import EpochDataLoader, WebDataModule
from jepa_lightning.encoders.video import VideoCodec
from jepa_lightning.tools.moving_shapes import MovingShapesSpec, ensure_moving_shapes_shards


class MovingShapesDataModule(WebDataModule):
    """Clips of moving shapes with captions that need time, written as ``mp4`` shards.

    Captions such as "a red circle moves to the left" or "a square appears, then a circle",
    balanced so that no single frame answers them (see
    :mod:`jepa_lightning.tools.moving_shapes`). ``prepare_data`` writes the ``train`` and
    ``val`` shard folders under ``root`` once (again only when the parameters change). The
    X-encoder decides how clips are sampled (its ``num_frames``, ``frame_stride``...); the
    model's collator brings that codec.

    Args:
        root: Folder for the ``train`` and ``val`` shard folders.
        train_samples: Number of training clips to generate.
        val_samples: Number of validation clips to generate.
        image_size: Side of the generated frames.
        clip_frames: Frames per generated video.
        fps: Frame rate of the generated videos.
        order_fraction: Share of "appears, then" clips (the rest are motion clips).
        data_seed: Seed of the generator (validation uses ``data_seed + 1``).
        val_frames: Evaluate on clips of this many frames instead of the model's: ``1``
            feeds the middle frame alone (a single-frame baseline of the same model on the
            same clips). None (default): the model's clips.
        train_frames: Train on clips of this many frames instead of the model's: with
            ``val_frames`` too, ``1`` trains and evaluates a per-frame model (one random frame
            of each clip in training) with the same architecture. None (default): the
            model's clips.
        **kwargs: :class:`WebDataModule` arguments (batch size, workers...).
    """

    def __init__(
        self,
        root: str = "data/moving_shapes",
        train_samples: int = 8000,
        val_samples: int = 1000,
        image_size: int = 64,
        clip_frames: int = 20,
        fps: int = 10,
        order_fraction: float = 0.5,
        data_seed: int = 0,
        val_frames: int | None = None,
        train_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["train_shards"] = kwargs.get("train_shards") or f"{root}/train"
        kwargs["val_shards"] = kwargs.get("val_shards") or f"{root}/val"
        super().__init__(**kwargs)
        for name, frames in (("val_frames", val_frames), ("train_frames", train_frames)):
            if frames is not None and frames < 1:
                raise ValueError(f"data.{name} must be >= 1, got {frames}")
        self.root = root
        self.spec = MovingShapesSpec(
            image_size=image_size, num_frames=clip_frames, fps=fps, order_fraction=order_fraction
        )
        self.splits = {"train": (train_samples, data_seed), "val": (val_samples, data_seed + 1)}
        self.val_frames = val_frames
        self.train_frames = train_frames

    def prepare_data(self) -> None:
        """Writes the shards if they are missing or were made differently."""
        for split, (num_samples, seed) in self.splits.items():
            ensure_moving_shapes_shards(
                f"{self.root}/{split}",
                num_samples,
                self.spec,
                seed=seed,
                split=split,
                progress=True,
            )

    @contextmanager
    def _clips_of(self, frames: int | None, name: str) -> Iterator[None]:
        """Within it, the collator samples ``frames``-frame clips (when not None)."""
        if frames is None or self.collator is None:
            yield
            return
        model_collator, codec = self.collator, self.collator.x
        if not isinstance(codec, VideoCodec):
            raise ValueError(
                f"data.{name} needs a clip X-encoder (num_frames > 1); the model's codec "
                f"is {type(codec).__name__}"
            )
        self.collator = replace(model_collator, x=replace(codec, num_frames=frames))
        try:
            yield
        finally:
            self.collator = model_collator

    def train_dataloader(self) -> EpochDataLoader:
        """The training clips (of ``train_frames`` frames when set)."""
        with self._clips_of(self.train_frames, "train_frames"):
            return super().train_dataloader()

    def val_dataloader(self) -> EpochDataLoader:
        """The validation clips (of ``val_frames`` frames when set)."""
        with self._clips_of(self.val_frames, "val_frames"):
            return super().val_dataloader()

    def test_dataloader(self) -> EpochDataLoader:
        """The validation clips (of ``val_frames`` frames when set), as the held-out set."""
        with self._clips_of(self.val_frames, "val_frames"):
            return super().test_dataloader()
