"""TensorBoard pictures of the validation embeddings: a projector and a retrieval grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, ImageDraw
from torch import Tensor

from jepa_lightning.callbacks.utils import (
    require_vl_jepa,
    tensorboard_logger,
    validation_embeddings,
)

HIT_COLOUR = (40, 200, 60)
MISS_COLOUR = (220, 40, 40)
_TEXT_TILE_GREY = 0.5  # thumbnail of text points in the projector
_CHAR_WIDTH = 6  # pixels per character of PIL's default bitmap font
_ROW_TEXT_HEIGHT = 12


class TensorBoardImages(Callback):
    """Writes, after each validation, an embedding projector and a retrieval grid.

    Both use the first ``max_samples`` validation samples of rank 0 and the embeddings
    that the validation step returned for them (only rank 0 writes). Nothing is written
    without a ``TensorBoardLogger`` or in the sanity check. The pictures of the inputs are
    the X-encoder's :meth:`~jepa_lightning.encoders.ModalityEncoder.thumbnails` (the images;
    spectrograms for an audio encoder); for inputs without pictures (cached tokens, or a
    modality that has none) the projector has no thumbnails and the grid is skipped, with
    one info line.

    * Projector (``add_embedding``, tag ``val_embeddings``): the predicted image embeddings
      ``ŝ`` (thumbnails) and the caption embeddings ``s`` (grey tiles) in one space, with the
      metadata columns ``caption`` and ``modality`` (``image`` or ``text``).
    * Retrieval grid (``add_image``, tag ``val/retrieval``): ``num_queries`` distinct captions,
      one per row, each with its ``top_k`` nearest inputs among the samples; a green border
      marks a positive (an input with the same ``pair_ids``, i.e. caption), a red one a miss.

    Args:
        max_samples: Validation samples collected for both pictures.
        num_queries: Caption queries (rows) of the retrieval grid.
        top_k: Images per query in the retrieval grid.
        tile_size: Side in pixels of a thumbnail (grid and projector).

    Raises:
        ValueError: If an argument is below 1.
    """

    def __init__(
        self, max_samples: int = 200, num_queries: int = 4, top_k: int = 5, tile_size: int = 64
    ) -> None:
        for name, value in (
            ("max_samples", max_samples),
            ("num_queries", num_queries),
            ("top_k", top_k),
            ("tile_size", tile_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.max_samples = max_samples
        self.num_queries = num_queries
        self.top_k = top_k
        self.tile_size = tile_size
        self._active = False
        self._without_pictures_reported = False
        self._images: list[Tensor | None] = []
        self._predicted: list[Tensor] = []
        self._texts: list[Tensor] = []
        self._pair_ids: list[Tensor] = []
        self._captions: list[str] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Starts collecting unless in the sanity check or without a TensorBoard logger."""
        require_vl_jepa(pl_module, type(self).__name__)
        self._active = tensorboard_logger(trainer) is not None and not trainer.sanity_checking
        self._clear()

    def _clear(self) -> None:
        self._images, self._predicted, self._texts, self._pair_ids = [], [], [], []
        self._captions = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collects the batch's images, captions and embeddings, up to ``max_samples``."""
        take = self.max_samples - len(self._captions)
        if not self._active or take <= 0:
            return
        batch = batch.valid_rows()  # the rows of the outputs
        predicted, texts = validation_embeddings(outputs, type(self).__name__)
        x_encoder = require_vl_jepa(pl_module, type(self).__name__).model.x_encoder
        pictures = None if batch.cached else x_encoder.thumbnails(batch.x, self.tile_size)
        self._images.append(None if pictures is None else pictures[:take])
        self._pair_ids.append(batch.pair_ids[:take].cpu())
        self._predicted.append(predicted[:take].cpu())
        self._texts.append(texts[:take].cpu())
        self._captions.extend(batch.captions[:take])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Writes the projector and the retrieval grid (rank 0)."""
        if not self._active or not self._captions or not trainer.is_global_zero:
            return
        logger = tensorboard_logger(trainer)
        assert logger is not None
        writer = logger.experiment
        pictures = [batch for batch in self._images if batch is not None]
        images = torch.cat(pictures) if len(pictures) == len(self._images) else None
        predicted, texts = torch.cat(self._predicted), torch.cat(self._texts)
        label_img = None
        if images is not None:
            thumbnails = images.float() / 255
            label_img = torch.cat([thumbnails, torch.full_like(thumbnails, _TEXT_TILE_GREY)])
        writer.add_embedding(
            torch.cat([predicted, texts]),
            metadata=[[c, "image"] for c in self._captions] + [[c, "text"] for c in self._captions],
            metadata_header=["caption", "modality"],
            label_img=label_img,
            global_step=trainer.global_step,
            tag="val_embeddings",
        )
        if images is None:
            if not self._without_pictures_reported:
                rank_zero_info(
                    f"{type(self).__name__}: the validation inputs have no pictures (cached "
                    "tokens, or an X-encoder without thumbnails()); the projector has no "
                    "thumbnails and the retrieval grid is skipped"
                )
                self._without_pictures_reported = True
            self._clear()
            return
        queries = _distinct_queries(self._captions, self.num_queries)
        scores = texts[queries] @ predicted.T
        top = scores.topk(min(self.top_k, len(self._captions)), dim=1).indices
        pair_ids = torch.cat(self._pair_ids)
        hits = pair_ids[top] == pair_ids[queries, None]
        grid = retrieval_grid(
            [self._captions[q] for q in queries], images[top], hits, self.tile_size
        )
        writer.add_image("val/retrieval", grid, trainer.global_step, dataformats="CHW")
        self._clear()


def _distinct_queries(captions: list[str], count: int) -> list[int]:
    """Indices of up to ``count`` distinct captions, spread evenly over the list."""
    first: dict[str, int] = {}
    for index, caption in enumerate(captions):
        first.setdefault(caption, index)
    distinct = list(first.values())
    step = max(1, len(distinct) // count)
    return distinct[::step][:count]


def retrieval_grid(captions: list[str], images: Tensor, hits: Tensor, tile_size: int) -> Tensor:
    """Draws one row per query: its caption above its retrieved images, framed by hit or miss.

    Args:
        captions: The ``Q`` query captions.
        images: ``(Q, K, 3, H, W)`` uint8 retrieved images, best first.
        hits: ``(Q, K)`` bool, whether each image is a positive of its query.
        tile_size: Side in pixels of each image (resized, nearest neighbour).

    Returns:
        ``(3, height, width)`` uint8 picture.
    """
    num_queries, k = hits.shape
    border = max(2, tile_size // 16)
    cell = tile_size + 2 * border
    width = max(k * cell, _CHAR_WIDTH * max(len(c) for c in captions) + 4)
    row_height = _ROW_TEXT_HEIGHT + cell
    canvas = Image.new("RGB", (width, num_queries * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    tiles = F.interpolate(images.flatten(0, 1).float(), size=(tile_size, tile_size))
    tiles = tiles.round().clamp(0, 255).to(torch.uint8).view(num_queries, k, 3, tile_size, -1)
    for q in range(num_queries):
        top = q * row_height
        draw.text((2, top), captions[q], fill=(0, 0, 0))
        for j in range(k):
            left = j * cell
            colour = HIT_COLOUR if bool(hits[q, j]) else MISS_COLOUR
            y0 = top + _ROW_TEXT_HEIGHT
            draw.rectangle((left, y0, left + cell - 1, y0 + cell - 1), fill=colour)
            tile = Image.fromarray(tiles[q, j].permute(1, 2, 0).numpy())
            canvas.paste(tile, (left + border, y0 + border))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)
