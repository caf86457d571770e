"""Token masks for JEPA training: I-JEPA multi-block masks, and V-JEPA's 3-D blocks for clips.

Tokens live on a grid of ``frames x height x width`` (``frames = 1`` for images) and are
numbered ``index = frame * height * width + row * width + col``, the order in which a patch
embedding flattens them. A :class:`MaskPair` holds, per sample, the *visible* (context) token
indices fed to the context encoder and the *hidden* (target) token indices to predict.

All index tensors are ``int64``, sorted ascending within each row, and rectangular over the
batch. Every random draw goes through the ``generator`` argument, so masks are reproducible.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MaskPair", "MultiBlockMaskGenerator", "take_tokens"]


class MaskPair(NamedTuple):
    """Visible and hidden token indices for a batch.

    A ``NamedTuple`` (not a frozen dataclass) so that collate functions and Lightning's
    batch-to-device transfer handle it like any tuple of tensors.

    Attributes:
        context: Visible token indices, ``(B, Nc)``.
        targets: Hidden token indices, ``(B, Nt)``: the union of the target blocks (truncated
            to a common length, see :class:`MultiBlockMaskGenerator`).
        target_blocks: Hidden token indices per target block, ``(B, num_targets, Nb)``, for
            I-JEPA-style per-block prediction; only when asked for (``with_blocks=True``).
    """

    context: Tensor
    targets: Tensor
    target_blocks: Tensor | None = None


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    out = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return out


def _check_range(value: tuple[float, float], name: str, upper: float | None = None) -> None:
    low, high = value
    if not 0 < low <= high or (upper is not None and high > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {value}")


def _span(start: Tensor, length: int, size: int) -> Tensor:
    """Boolean (..., size): ``True`` on ``[start, start + length)`` for each ``start`` (..., 1)."""
    positions = torch.arange(size)
    return (positions >= start) & (positions < start + length)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + float(torch.rand((), generator=generator)) * (high - low)


def _random_subset_sorted(mask: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Per row of the boolean ``mask`` (B, N), ``k`` of its True positions at random, sorted.

    Every row must have at least ``k`` True entries. The subset is uniform over the True
    positions (random keys, smallest ``k``), so truncation has no spatial bias.
    """
    keys = torch.rand(mask.shape, generator=generator)
    keys = keys.masked_fill(~mask, 2.0)  # True positions have keys in [0, 1): chosen first.
    chosen = keys.topk(k, dim=1, largest=False).indices
    return chosen.sort(dim=1).values


def _mask_to_sorted_indices(mask: Tensor) -> Tensor:
    """Indices of the True entries of ``mask`` (B, N), which has the same count in every row."""
    counts = mask.sum(dim=1)
    k = int(counts[0]) if mask.shape[0] else 0
    if not bool((counts == k).all()):
        raise AssertionError("rows have different numbers of True entries")
    return mask.nonzero()[:, 1].reshape(mask.shape[0], k)


class MultiBlockMaskGenerator:
    """I-JEPA multi-block masks: several target blocks and one context block per sample.

    For each batch, one target block size (``h x w``) is drawn from ``target_scale`` (fraction
    of the ``height x width`` grid) and ``target_aspect_ratio`` (``h / w``), and one context
    block size from ``context_scale`` / ``context_aspect_ratio``; sizes are shared across the
    batch (as in I-JEPA, so ``target_blocks`` is rectangular) while positions are drawn per
    sample. Each sample gets ``num_targets`` target blocks (which may overlap) and one context
    block; the context is the context block minus all target blocks, so context and targets
    are disjoint. For video (``frames > 1``) blocks are 3-D, as in V-JEPA: a target block spans
    a ``temporal_scale`` fraction of the frames (default all: a tube through the clip; its
    length is drawn per batch, its start frame per block), the context block spans all frames.
    ``target_scale`` and ``context_scale`` are fractions of the spatial grid, so a target
    block covers ``scale x temporal fraction`` of all tokens.

    Block sides are ``round(sqrt(area * ratio))`` and ``round(sqrt(area / ratio))`` with
    ``area = scale * height * width``, clipped to ``[1, height]`` / ``[1, width]`` (and the
    temporal length ``round(fraction * frames)`` to ``[1, frames]``); the realised scale is
    therefore close to, not exactly within, the requested range. A block's corner is drawn
    uniformly from every position where the block fits, so every token (the last row, column
    and frame included) can be in a block.

    Rectangular batches: the union of a sample's target blocks and its context vary in size
    across samples. Like I-JEPA, each is truncated to the smallest size in the batch, but by
    keeping a uniformly random subset of the tokens (I-JEPA keeps the first ``k``, which drops
    the bottom-right of blocks). Dropped tokens are then neither context nor target.

    If a sample keeps fewer than ``min_keep`` context tokens, its blocks are redrawn (block
    sizes stay fixed for the batch), at most ``max_tries`` times, then :class:`RuntimeError`.

    Args:
        input_size: Token grid ``(height, width)``, or one int for a square grid.
        frames: Number of frames (temporal tokens).
        num_targets: Target blocks per sample.
        target_scale: Range of the target block area as a fraction of ``height * width``.
        target_aspect_ratio: Range of the target block aspect ratio ``h / w``.
        context_scale: Range of the context block area as a fraction of ``height * width``.
        context_aspect_ratio: Range of the context block aspect ratio.
        temporal_scale: Range of the fraction of the frames that a target block spans
            (``frames > 1``).
        min_keep: Minimum number of context tokens per sample.
        max_tries: Redraws per batch before giving up on ``min_keep``.

    Raises:
        ValueError: On invalid sizes or ranges, or ``min_keep`` larger than the grid.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        frames: int = 1,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect_ratio: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        context_aspect_ratio: tuple[float, float] = (1.0, 1.0),
        temporal_scale: tuple[float, float] = (1.0, 1.0),
        min_keep: int = 4,
        max_tries: int = 20,
    ) -> None:
        self.height, self.width = _pair(input_size, "input_size")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        _check_range(target_scale, "target_scale", upper=1.0)
        _check_range(context_scale, "context_scale", upper=1.0)
        _check_range(target_aspect_ratio, "target_aspect_ratio")
        _check_range(context_aspect_ratio, "context_aspect_ratio")
        _check_range(temporal_scale, "temporal_scale", upper=1.0)
        if not 1 <= min_keep <= frames * self.height * self.width:
            raise ValueError(
                f"min_keep must be in [1, {frames * self.height * self.width}], got {min_keep}"
            )
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.frames = frames
        self.num_targets = num_targets
        self.target_scale = target_scale
        self.target_aspect_ratio = target_aspect_ratio
        self.context_scale = context_scale
        self.context_aspect_ratio = context_aspect_ratio
        self.temporal_scale = temporal_scale
        self.min_keep = min_keep
        self.max_tries = max_tries

    @property
    def num_tokens(self) -> int:
        """Total number of tokens, ``frames * height * width``."""
        return self.frames * self.height * self.width

    def _block_size(
        self,
        scale: tuple[float, float],
        aspect_ratio: tuple[float, float],
        generator: torch.Generator | None,
    ) -> tuple[int, int]:
        area = _uniform(*scale, generator) * self.height * self.width
        ratio = _uniform(*aspect_ratio, generator)
        h = min(max(round(math.sqrt(area * ratio)), 1), self.height)
        w = min(max(round(math.sqrt(area / ratio)), 1), self.width)
        return h, w

    def _temporal_length(self, generator: torch.Generator | None) -> int:
        if self.frames == 1:  # no draw: image masks do not depend on temporal_scale
            return 1
        length = round(_uniform(*self.temporal_scale, generator) * self.frames)
        return min(max(length, 1), self.frames)

    def _place_blocks(
        self, n: int, count: int, size: tuple[int, int, int], generator: torch.Generator | None
    ) -> Tensor:
        """Boolean masks (n, count, frames, height, width) of ``count`` blocks per sample."""
        t, h, w = size
        # randint's upper bound is exclusive: + 1 lets a block touch the last row/column/frame.
        top = torch.randint(0, self.height - h + 1, (n, count, 1), generator=generator)
        left = torch.randint(0, self.width - w + 1, (n, count, 1), generator=generator)
        start = torch.zeros(n, count, 1, dtype=torch.long)
        if t < self.frames:
            start = torch.randint(0, self.frames - t + 1, (n, count, 1), generator=generator)
        in_frames = _span(start, t, self.frames)  # (n, count, frames)
        in_rows = _span(top, h, self.height)  # (n, count, height)
        in_cols = _span(left, w, self.width)  # (n, count, width)
        return (
            in_frames[..., None, None] & in_rows[..., None, :, None] & in_cols[..., None, None, :]
        )

    def __call__(
        self, batch_size: int, generator: torch.Generator | None = None, with_blocks: bool = False
    ) -> MaskPair:
        """Draw masks for a batch.

        Args:
            batch_size: Number of samples.
            generator: CPU random generator; the global RNG if ``None``.
            with_blocks: Also return each target block's indices.

        Returns:
            :class:`MaskPair` with ``context`` (B, Nc), ``targets`` (B, Nt) and, with
            ``with_blocks``, ``target_blocks`` (B, num_targets, Nb), ``Nb = t * h * w``.

        Raises:
            ValueError: If ``batch_size`` is not positive.
            RuntimeError: If some sample keeps fewer than ``min_keep`` context tokens after
                ``max_tries`` draws.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        target_size = (
            self._temporal_length(generator),
            *self._block_size(self.target_scale, self.target_aspect_ratio, generator),
        )
        context_size = (
            self.frames,
            *self._block_size(self.context_scale, self.context_aspect_ratio, generator),
        )
        grid = (self.frames, self.height, self.width)
        blocks = torch.zeros(batch_size, self.num_targets, *grid, dtype=torch.bool)
        context = torch.zeros(batch_size, *grid, dtype=torch.bool)
        todo = torch.arange(batch_size)
        for _ in range(self.max_tries):
            n = todo.numel()
            new_blocks = self._place_blocks(n, self.num_targets, target_size, generator)
            new_context = self._place_blocks(n, 1, context_size, generator)[:, 0]
            new_context &= ~new_blocks.any(dim=1)
            blocks[todo] = new_blocks
            context[todo] = new_context
            ok = new_context.flatten(1).sum(dim=1) >= self.min_keep
            todo = todo[~ok]
            if todo.numel() == 0:
                break
        else:
            raise RuntimeError(
                f"MultiBlockMaskGenerator: {todo.numel()} of {batch_size} samples kept fewer "
                f"than min_keep={self.min_keep} context tokens after {self.max_tries} tries "
                f"(target blocks {target_size} x {self.num_targets}, context block "
                f"{context_size} on a {self.frames}x{self.height}x{self.width} grid); lower "
                "num_targets or target_scale, or raise context_scale"
            )

        # Frame-major token numbering: flattening (frames, height, width) gives the index.
        block_tokens = blocks.flatten(-3)  # (B, T, N)
        target_tokens = block_tokens.any(dim=1)  # (B, N)
        context_tokens = context.flatten(-3)  # (B, N)
        num_targets_kept = int(target_tokens.sum(dim=1).min())
        num_context_kept = int(context_tokens.sum(dim=1).min())
        pair = MaskPair(
            context=_random_subset_sorted(context_tokens, num_context_kept, generator),
            targets=_random_subset_sorted(target_tokens, num_targets_kept, generator),
        )
        if not with_blocks:
            return pair
        blocks_flat = _mask_to_sorted_indices(block_tokens.flatten(0, 1))
        return pair._replace(target_blocks=blocks_flat.reshape(batch_size, self.num_targets, -1))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size=({self.height}, {self.width}), "
            f"frames={self.frames}, num_targets={self.num_targets}, "
            f"target_scale={self.target_scale}, target_aspect_ratio={self.target_aspect_ratio}, "
            f"context_scale={self.context_scale}, "
            f"context_aspect_ratio={self.context_aspect_ratio}, "
            f"temporal_scale={self.temporal_scale}, min_keep={self.min_keep})"
        )


def take_tokens(tokens: Tensor, indices: Tensor) -> Tensor:
    """Gathers ``tokens[b, indices[b]]`` for each row ``b`` (e.g. the context of a mask).

    Args:
        tokens: ``(B, N, D)`` tokens.
        indices: ``(B, M)`` token indices.

    Returns:
        ``(B, M, D)`` tokens.
    """
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
