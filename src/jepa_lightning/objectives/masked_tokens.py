"""The masked objective: predict hidden X tokens from the visible ones and the caption."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from jepa_lightning.losses import MaskedTokenInfoNCELoss
from jepa_lightning.masking import MultiBlockMaskGenerator, take_tokens
from jepa_lightning.models.vl_jepa import BatchForward, VLJEPAModel
from jepa_lightning.objectives.base import Objective


class MaskedTokenPrediction(Objective):
    """The seed's objective: multi-block masks hide X tokens; the predictor fills them in.

    The predictor reads the visible tokens, a mask token at each hidden position and the
    caption's token embeddings; a linear head maps its outputs at the hidden positions to
    the X-encoder's width, and each must pick out the true (layer-normed, as in I-JEPA)
    token among every hidden token of the global batch (token-level InfoNCE).

    On a clip encoder's ``(frames, height, width)`` grid the masks are V-JEPA's 3-D blocks
    (``masking`` takes ``temporal_scale``). A batch with fewer frames than a full clip (images
    fed to a clip encoder) is masked on the grid of the frames it has.

    Args:
        weight: Weight of this loss in the total.
        masking: Keyword arguments of :class:`~jepa_lightning.masking.MultiBlockMaskGenerator`
            (its grid comes from the X-encoder).
        temperature: Fixed temperature of the token-level InfoNCE.

    Raises:
        ValueError: (at :meth:`bind`) If the X-encoder reports no 2-D or 3-D token grid.
    """

    name = "masked"

    def __init__(
        self, weight: float = 1.0, masking: dict[str, Any] | None = None, temperature: float = 0.1
    ) -> None:
        super().__init__(weight)
        self.masking = dict(masking or {})
        self.loss = MaskedTokenInfoNCELoss(temperature=temperature)
        self.mask_generator: MultiBlockMaskGenerator | None = None
        self.head: nn.Linear | None = None
        self.grid = (1, 1, 1)  # (frames, height, width), set by bind
        # Masks for clips of fewer frames than the grid's (e.g. images in a clip model).
        self._generators: dict[int, MultiBlockMaskGenerator] = {}

    def bind(self, model: VLJEPAModel) -> None:
        """Builds the mask generator over the X-encoder's grid and the output head.

        Args:
            model: The model core.

        Raises:
            ValueError: If the X-encoder reports no 2-D or 3-D token grid.
        """
        grid = model.x_encoder.grid
        if grid is None:
            raise ValueError(
                f"MaskedTokenPrediction needs an X-encoder with a token grid; "
                f"{type(model.x_encoder).__name__}.grid is None"
            )
        if len(grid) not in (2, 3):
            raise ValueError(f"MaskedTokenPrediction needs a 2-D or 3-D token grid, got {grid}")
        frames = grid[0] if len(grid) == 3 else 1
        self.grid = (frames, grid[-2], grid[-1])
        self.mask_generator = MultiBlockMaskGenerator((grid[-2], grid[-1]), frames, **self.masking)
        self._generators = {}
        self.head = nn.Linear(model.predictor.width, model.x_encoder.output_dim)

    def forward(self, step: BatchForward) -> Tensor:
        """Token-level InfoNCE at the hidden positions of fresh multi-block masks.

        Args:
            step: The batch and its shared forward pieces.

        Returns:
            The scalar loss.

        Raises:
            RuntimeError: If :meth:`bind` was not called.
        """
        if self.mask_generator is None or self.head is None:
            raise RuntimeError("MaskedTokenPrediction.bind(model) must run before the loss")
        model, visual = step.model, step.x.tokens
        masks = self._generator_for(visual.shape[1])(visual.shape[0])
        context = masks.context.to(visual.device)
        hidden_positions = masks.targets.to(visual.device)
        targets = F.layer_norm(take_tokens(visual, hidden_positions), visual.shape[-1:])
        caption_ids, caption_mask = step.batch.caption_tokens()
        hidden, _ = model.predictor.encode(
            take_tokens(visual, context),
            visual_positions=context,
            query_embeds=model.text_encoder.embed_tokens(caption_ids),
            query_mask=caption_mask,
            mask_positions=hidden_positions,
        )
        start = context.shape[1]
        predictions = self.head(hidden[:, start : start + hidden_positions.shape[1]])
        return self.loss(predictions, targets)

    def _generator_for(self, num_tokens: int) -> MultiBlockMaskGenerator:
        """The mask generator of a batch with ``num_tokens`` tokens (its first frames)."""
        assert self.mask_generator is not None
        all_frames, height, width = self.grid
        frames = num_tokens // (height * width)
        if num_tokens % (height * width) or not 1 <= frames <= all_frames:
            raise ValueError(
                f"MaskedTokenPrediction: {num_tokens} X tokens are no whole number of frames of "
                f"the {all_frames}x{height}x{width} grid"
            )
        if frames == all_frames:
            return self.mask_generator
        if frames not in self._generators:
            self._generators[frames] = MultiBlockMaskGenerator(
                (height, width), frames, **self.masking
            )
        return self._generators[frames]
