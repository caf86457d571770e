"""The JEPA pretraining core (I-JEPA): context encoder, EMA target encoder, narrow predictor.

The context encoder sees only the visible (context) tokens of an input; the target encoder, an
exponential moving average of it, sees all of them; the predictor reads the context tokens and
a mask token at each position of one target block and predicts the target encoder's features
there. Nothing here depends on the grid's rank: a ``(height, width)`` grid gives I-JEPA's
multi-block masks, a ``(frames, height, width)`` grid V-JEPA's 3-D blocks, and the predictor's
positions are the flattened (frame-major) token indices.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.hf import ModelSource
from jepa_lightning.encoders.text import masked_mean
from jepa_lightning.encoders.vision import VisionEncoder
from jepa_lightning.masking import MaskPair, MultiBlockMaskGenerator, take_tokens
from jepa_lightning.predictor import Predictor

DEFAULT_IJEPA_PREDICTOR_LM: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 8,
    "max_position_embeddings": 512,
}
"""A narrow random Llama-style transformer: the predictor of small pretraining runs."""


@runtime_checkable
class VisibleTokenEncoder(Protocol):
    """An encoder that can encode only some of its tokens (the context of a mask).

    :class:`~jepa_lightning.encoders.VisionEncoder` over a ``transformers`` image backbone
    does this without implementing the method (see :func:`encode_visible`); another
    :class:`~jepa_lightning.encoders.ModalityEncoder` (a clip encoder, say) implements it.
    """

    def encode_visible(self, inputs: Any, visible: Tensor) -> Tensor:
        """Tokens at the grid indices ``visible``, computed from those tokens only.

        Args:
            inputs: The encoder's batch.
            visible: ``(B, Nv)`` token indices; the others never enter the transformer.

        Returns:
            ``(B, Nv, D)`` tokens in the order of ``visible``.
        """


@contextmanager
def _only_visible_embeddings(
    embeddings: nn.Module, visible: Tensor, num_tokens: int
) -> Iterator[None]:
    """Makes ``embeddings`` return its prefix tokens (CLS, registers) and the visible patches.

    The patch and position embeddings are computed for the whole grid, then the hidden patches
    are dropped before the first transformer layer, so they take no part in attention.
    """

    def keep_visible(module: nn.Module, inputs: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"{type(module).__name__} returned {type(output).__name__}")
        prefix = output.shape[1] - num_tokens
        patches = take_tokens(output[:, prefix:], visible)
        return torch.cat([output[:, :prefix], patches], dim=1)

    handle: RemovableHandle = embeddings.register_forward_hook(keep_visible)
    try:
        yield
    finally:
        handle.remove()


def encode_visible(encoder: ModalityEncoder, inputs: Any, visible: Tensor) -> Tensor:
    """The encoder's tokens at the visible positions, computed from the visible tokens only.

    A :class:`VisibleTokenEncoder` does it itself. For a
    :class:`~jepa_lightning.encoders.VisionEncoder`:

    * an image backbone's ``embeddings`` module (patch + position embeddings, as in
      ``transformers`` ViT, DINOv2, SigLIP and CLIP vision models) is made to pass on only the
      prefix tokens and the visible patches;
    * a V-JEPA 2 backbone (images, or clips in tubelets) embeds the patches, keeps the visible
      ones and runs its layers with ``position_mask`` set to their indices, from which its
      3-D rotary embeddings take each token's (frame, row, column).

    Args:
        encoder: The encoder (see :func:`check_maskable`).
        inputs: Its batch, as its codec collates it.
        visible: ``(B, Nv)`` token indices to keep.

    Returns:
        ``(B, Nv, D)`` tokens in the order of ``visible``.
    """
    if isinstance(encoder, VisibleTokenEncoder):
        return encoder.encode_visible(inputs, visible)
    assert isinstance(encoder, VisionEncoder)  # check_maskable ran at construction
    backbone: Any = encoder.backbone
    pixels = encoder.normalize(inputs)
    if encoder.is_video_model:
        clips = pixels.unsqueeze(1) if pixels.dim() == 4 else pixels
        hidden = take_tokens(backbone.embeddings(clips), visible)
        for layer in backbone.layer:
            hidden = layer(hidden, visible)[0]
        return backbone.layernorm(hidden)
    with _only_visible_embeddings(backbone.embeddings, visible, encoder.num_tokens):
        hidden = backbone(pixel_values=pixels).last_hidden_state
    return hidden[:, hidden.shape[1] - visible.shape[1] :]


def check_maskable(encoder: ModalityEncoder) -> tuple[int, ...]:
    """Checks that JEPA pretraining can drop the encoder's hidden tokens; returns its grid.

    Args:
        encoder: The context encoder.

    Returns:
        The token grid, ``(height, width)`` or ``(frames, height, width)``.

    Raises:
        ValueError: If the encoder is frozen, has no 2-D or 3-D token grid, or cannot encode
            only its visible tokens (an image backbone on clips, a backbone without an
            ``embeddings`` module).
    """
    name = type(encoder).__name__
    if encoder.frozen:
        raise ValueError(f"the JEPA context encoder trains: build {name} with frozen: false")
    grid = encoder.grid
    if grid is None or len(grid) not in (2, 3):
        raise ValueError(f"JEPA pretraining needs a 2-D or 3-D token grid; {name}.grid is {grid}")
    if isinstance(encoder, VisibleTokenEncoder):
        return grid
    if not isinstance(encoder, VisionEncoder):
        raise ValueError(f"{name} cannot encode only its visible tokens: give it encode_visible")
    if encoder.is_video_model:
        return grid
    if encoder.num_frames > 1:
        raise ValueError(
            "JEPA pretraining of an image backbone on clips (num_frames > 1) is not supported: "
            "it encodes the frames one by one; pretrain a V-JEPA 2 backbone on clips, or the "
            "image backbone on images (num_frames: 1)"
        )
    if not isinstance(getattr(encoder.backbone, "embeddings", None), nn.Module):
        raise ValueError(
            f"{type(encoder.backbone).__name__} has no 'embeddings' module to drop hidden "
            "tokens after (ViT, DINOv2, SigLIP and CLIP vision models have one)"
        )
    return grid


def _freeze_unused_parameters(encoder: ModalityEncoder, inputs: Any) -> list[str]:
    """Freezes the parameters that the tokens do not depend on (a pooler, a pooling head).

    They would get no gradient, which stops DDP with ``find_unused_parameters=False``.
    """
    encoder.zero_grad(set_to_none=True)
    encoder(inputs).tokens.float().sum().backward()
    unused = []
    for name, param in encoder.named_parameters():
        if param.requires_grad and param.grad is None:
            param.requires_grad_(False)
            unused.append(name)
    encoder.zero_grad(set_to_none=True)
    return unused


def momentum_at(step: int, total_steps: int, start: float, end: float) -> float:
    """The EMA momentum of the ``step``-th update (0-based): linear from ``start`` to ``end``.

    Args:
        step: Updates done before this one.
        total_steps: Updates in the whole run (``end`` is reached there and kept after).
        start: Momentum of the first update.
        end: Momentum at ``total_steps``.

    Returns:
        ``start + (end - start) * min(step / total_steps, 1)``.
    """
    return start + (end - start) * min(step / max(total_steps, 1), 1.0)


class IJEPAOutput(NamedTuple):
    """What one pretraining forward computes.

    Attributes:
        predictions: ``(B, T, Nb, D)`` predicted features of the ``T`` target blocks.
        targets: ``(B, T, Nb, D)`` the target encoder's features there (not normalised).
        features: ``(B, D)`` the target encoder's mean-pooled features of the whole input:
            what probes read.
    """

    predictions: Tensor
    targets: Tensor
    features: Tensor


class IJEPAModel(nn.Module):
    """I-JEPA as a plain module: context encoder, EMA target encoder and predictor.

    * ``forward(x, masks)``: predictions and targets at the target blocks of ``masks``
      (drawn by :attr:`mask_generator` over the encoder's grid, ``with_blocks=True``): the
      predictor runs once per block, on the context tokens plus that block's mask tokens;
    * ``update_target(momentum)``: the EMA step, after each optimizer step;
    * ``features(x)``: the target encoder's mean-pooled features (probes, export).

    The target encoder starts as a copy of the context encoder and is frozen (no gradient,
    eval mode, never in the optimizer). Parameters that the context encoder's tokens do not
    depend on (e.g. a ViT pooler) are frozen: they would get no gradient.

    Args:
        encoder: The context encoder, trainable (``frozen: false``), with a 2-D or 3-D grid;
            a :class:`~jepa_lightning.encoders.VisionEncoder` (ViT-style ``transformers``
            backbone) or a :class:`VisibleTokenEncoder`.
        predictor_lm: Source of the predictor's transformer (a Llama-style config dict, hub
            name or folder), normally narrower than the encoder.
        predictor_layers: Keep the LM's last this-many layers; default all.
        masking: Keyword arguments of :class:`~jepa_lightning.masking.MultiBlockMaskGenerator`
            (the grid comes from the encoder); default I-JEPA's: 4 target blocks of scale
            0.15-0.2 and aspect 0.75-1.5, a context block of scale 0.85-1.0.

    Raises:
        ValueError: See :func:`check_maskable`.
    """

    def __init__(
        self,
        encoder: ModalityEncoder,
        predictor_lm: ModelSource = DEFAULT_IJEPA_PREDICTOR_LM,
        predictor_layers: int | None = None,
        masking: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        grid = check_maskable(encoder)
        frames, height, width = (1, *grid) if len(grid) == 2 else grid
        self.mask_generator = MultiBlockMaskGenerator(
            (height, width), frames=frames, **dict(masking or {})
        )
        if isinstance(encoder, VisionEncoder):
            side = encoder.image_size
            _freeze_unused_parameters(encoder, torch.zeros(1, 3, side, side, dtype=torch.uint8))
        self.context_encoder = encoder
        self.target_encoder = copy.deepcopy(encoder)
        self.target_encoder.frozen = True
        self.target_encoder.requires_grad_(False)
        self.target_encoder.eval()
        dim = encoder.output_dim
        self.predictor = Predictor(
            visual_dim=dim,
            query_dim=1,  # no query: its (unused) projection stays tiny
            output_dim=dim,
            num_visual_tokens=self.mask_generator.num_tokens,
            lm=predictor_lm,
            num_layers=predictor_layers,
        )

    @property
    def num_tokens(self) -> int:
        """Tokens per input (the grid's size)."""
        return self.mask_generator.num_tokens

    def draw_masks(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> MaskPair:
        """Multi-block masks for a batch, with the target blocks, on ``device``.

        Args:
            batch_size: Rows.
            device: Where the model runs.
            generator: CPU generator; the global RNG if None.

        Returns:
            ``context`` ``(B, Nc)`` and ``target_blocks`` ``(B, T, Nb)`` (and ``targets``).
        """
        masks = self.mask_generator(batch_size, generator=generator, with_blocks=True)
        return MaskPair(*(m.to(device) for m in masks))  # type: ignore[union-attr]

    @torch.no_grad()
    def target_tokens(self, x: Any) -> Tensor:
        """The target encoder's tokens of all positions, ``(B, N, D)``, without gradient."""
        return self.target_encoder(x).tokens

    @torch.no_grad()
    def features(self, x: Any) -> Tensor:
        """The target encoder's mean-pooled features ``(B, D)``: what probes and users read."""
        output = self.target_encoder(x)
        return masked_mean(output.tokens, output.mask)

    def forward(self, x: Any, masks: MaskPair) -> IJEPAOutput:
        """Predicts the target encoder's features at each target block from the context.

        Args:
            x: The encoder's batch (images ``(B, 3, H, W)``).
            masks: ``context`` ``(B, Nc)`` and ``target_blocks`` ``(B, T, Nb)`` token indices.

        Returns:
            Predictions and targets ``(B, T, Nb, D)`` and the pooled target features.

        Raises:
            ValueError: If ``masks`` has no ``target_blocks``.
        """
        if masks.target_blocks is None:
            raise ValueError("IJEPAModel needs masks drawn with_blocks=True")
        blocks = masks.target_blocks
        batch, num_blocks, block_size = blocks.shape
        target_output = self.target_encoder(x)
        all_targets = target_output.tokens
        if all_targets.shape[1] != self.num_tokens:
            raise ValueError(
                f"the encoder gave {all_targets.shape[1]} tokens, not its grid's "
                f"{self.num_tokens}: JEPA pretraining on clips needs full clips (no images)"
            )
        dim = all_targets.shape[-1]
        targets = take_tokens(all_targets, blocks.flatten(1)).view(batch, num_blocks, -1, dim)
        context = encode_visible(self.context_encoder, x, masks.context)
        num_context = context.shape[1]
        # One predictor pass per block: each block's mask tokens see the context, not the
        # other blocks (I-JEPA); the blocks ride in the batch dimension.
        hidden, _ = self.predictor.encode(
            context.repeat_interleave(num_blocks, dim=0),
            visual_positions=masks.context.repeat_interleave(num_blocks, dim=0),
            mask_positions=blocks.flatten(0, 1),
        )
        predictions = self.predictor.output_proj(hidden[:, num_context:])
        return IJEPAOutput(
            predictions=predictions.view(batch, num_blocks, block_size, dim),
            targets=targets,
            features=masked_mean(all_targets, target_output.mask),
        )

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA step: ``target = momentum * target + (1 - momentum) * context``.

        Every parameter follows the rule (frozen ones of the context encoder never change, so
        neither do their copies); buffers are copied. The same arithmetic on every rank from
        the same weights keeps the target encoders identical under DDP.

        Args:
            momentum: In ``[0, 1]``; 1 leaves the target encoder unchanged.

        Raises:
            ValueError: If ``momentum`` is outside ``[0, 1]``.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        target: list[Tensor] = list(self.target_encoder.parameters())
        context: list[Tensor] = list(self.context_encoder.parameters())
        torch._foreach_lerp_(target, context, 1.0 - momentum)
        for target_buffer, buffer in zip(
            self.target_encoder.buffers(), self.context_encoder.buffers(), strict=True
        ):
            target_buffer.copy_(buffer)
