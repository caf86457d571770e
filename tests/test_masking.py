import pytest
import torch

from jepa_lightning.masking import MaskPair, MultiBlockMaskGenerator


def _is_sorted_rows(x: torch.Tensor) -> bool:
    return bool((x[..., 1:] > x[..., :-1]).all())


@pytest.mark.parametrize(("input_size", "frames"), [(14, 1), ((8, 12), 1), ((6, 6), 3)])
def test_multiblock_shapes_and_invariants(input_size, frames) -> None:
    gen = MultiBlockMaskGenerator(input_size, frames=frames)
    masks = gen(16, generator=torch.Generator().manual_seed(0), with_blocks=True)
    assert isinstance(masks, MaskPair)
    n = gen.num_tokens
    assert masks.context.dim() == 2 and masks.context.shape[0] == 16
    assert masks.targets.dim() == 2 and masks.targets.shape[0] == 16
    assert masks.target_blocks.shape[:2] == (16, 4)
    for t in masks:
        assert t.dtype == torch.long
        assert t.min() >= 0 and t.max() < n
        assert _is_sorted_rows(t)  # also: no duplicates within a row
    assert masks.context.shape[1] >= gen.min_keep
    for b in range(16):
        context = set(masks.context[b].tolist())
        targets = set(masks.targets[b].tolist())
        blocks = set(masks.target_blocks[b].flatten().tolist())
        assert not context & targets
        assert not context & blocks
        assert targets <= blocks  # union of blocks, possibly truncated


def test_blocks_are_rectangles_and_tubes() -> None:
    h, w, frames = 10, 12, 2
    gen = MultiBlockMaskGenerator((h, w), frames=frames)
    masks = gen(8, generator=torch.Generator().manual_seed(1), with_blocks=True)
    for block in masks.target_blocks.reshape(-1, masks.target_blocks.shape[-1]):
        frame, rem = block // (h * w), block % (h * w)
        rows, cols = rem // w, rem % w
        per_frame = block.numel() // frames
        assert (torch.bincount(frame, minlength=frames) == per_frame).all()
        # Same spatial footprint in every frame.
        footprint = rem[frame == 0]
        for f in range(1, frames):
            assert torch.equal(rem[frame == f], footprint)
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert height * width == per_frame  # a full rectangle


def test_block_scale_within_range() -> None:
    gen = MultiBlockMaskGenerator(16, target_scale=(0.15, 0.2), context_scale=(0.85, 1.0))
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        masks = gen(2, generator=g, with_blocks=True)
        scale = masks.target_blocks.shape[-1] / gen.num_tokens
        # Rounding of the block sides to integers moves the area by up to about a side length.
        assert 0.15 - 0.04 <= scale <= 0.2 + 0.04


def test_target_aspect_ratio_within_range() -> None:
    gen = MultiBlockMaskGenerator(32, target_aspect_ratio=(0.75, 1.5))
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        block = gen(1, generator=g, with_blocks=True).target_blocks[0, 0]
        rows, cols = block // 32, block % 32
        ratio = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
        assert 0.75 - 0.15 <= float(ratio) <= 1.5 + 0.15


def test_full_context_block_without_targets_covers_rest() -> None:
    # Context block = whole grid: the context is exactly the complement of the target union
    # (before truncation, which keeps at least min(count) tokens).
    gen = MultiBlockMaskGenerator(8, num_targets=1, context_scale=(1.0, 1.0))
    masks = gen(1, generator=torch.Generator().manual_seed(0), with_blocks=True)
    assert masks.context.shape[1] + masks.targets.shape[1] == 64


def test_deterministic_given_generator() -> None:
    gen = MultiBlockMaskGenerator(14)
    a = gen(8, generator=torch.Generator().manual_seed(42), with_blocks=True)
    b = gen(8, generator=torch.Generator().manual_seed(42), with_blocks=True)
    c = gen(8, generator=torch.Generator().manual_seed(43), with_blocks=True)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_truncation_is_not_spatially_biased() -> None:
    # A "first k" truncation would never keep the last token of a sample's largest set.
    gen = MultiBlockMaskGenerator(8, num_targets=4)
    g = torch.Generator().manual_seed(0)
    truncated_tail_kept = 0
    for _ in range(40):
        masks = gen(4, generator=g, with_blocks=True)
        for b in range(4):
            union = torch.unique(masks.target_blocks[b])
            if union.numel() > masks.targets.shape[1] and masks.targets[b, -1] == union[-1]:
                truncated_tail_kept += 1
    assert truncated_tail_kept > 0


def test_min_keep_error() -> None:
    gen = MultiBlockMaskGenerator(
        4, num_targets=1, target_scale=(0.2, 0.2), context_scale=(0.1, 0.1), min_keep=4
    )
    with pytest.raises(RuntimeError, match="min_keep"):
        gen(2, generator=torch.Generator().manual_seed(0), with_blocks=True)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMaskGenerator(4, min_keep=17)
    with pytest.raises(ValueError, match="target_scale"):
        MultiBlockMaskGenerator(4, target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="frames"):
        MultiBlockMaskGenerator(4, frames=0)
    with pytest.raises(ValueError, match="input_size"):
        MultiBlockMaskGenerator((4, 0))


def test_blocks_only_on_request() -> None:
    gen = MultiBlockMaskGenerator(8)
    plain = gen(4, generator=torch.Generator().manual_seed(0))
    blocks = gen(4, generator=torch.Generator().manual_seed(0), with_blocks=True)
    assert plain.target_blocks is None and blocks.target_blocks is not None
    assert torch.equal(plain.context, blocks.context) and torch.equal(plain.targets, blocks.targets)


def _box_extent(block: torch.Tensor, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """(frames, rows, cols) spanned by a block's frame-major token indices."""
    _, h, w = grid
    frame, rem = block // (h * w), block % (h * w)
    rows, cols = rem // w, rem % w
    return tuple(int(v.max() - v.min() + 1) for v in (frame, rows, cols))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("input_size", "frames", "temporal_scale"),
    [((4, 4), 1, (1.0, 1.0)), ((5, 7), 1, (1.0, 1.0)), ((4, 6), 4, (0.25, 0.5))],
)
def test_every_position_is_reachable(input_size, frames, temporal_scale) -> None:
    # I-JEPA's sampler draws block corners with an exclusive bound one too small, so no block
    # ever touches the last row or column; here every token is a target and a context token.
    gen = MultiBlockMaskGenerator(
        input_size, frames=frames, temporal_scale=temporal_scale, min_keep=1
    )
    g = torch.Generator().manual_seed(0)
    in_target = torch.zeros(gen.num_tokens, dtype=torch.bool)
    in_context = torch.zeros(gen.num_tokens, dtype=torch.bool)
    for _ in range(40):
        masks = gen(16, generator=g, with_blocks=True)
        in_target[masks.target_blocks.flatten()] = True
        in_context[masks.context.flatten()] = True
    grid = in_target.view(frames, gen.height, gen.width)
    assert grid[:, -1, :].all() and grid[:, :, -1].all() and grid[-1].all()
    assert in_target.all() and in_context.all()


def test_3d_blocks_are_boxes_through_part_of_the_clip() -> None:
    frames, h, w = 8, 6, 6
    gen = MultiBlockMaskGenerator((h, w), frames=frames, temporal_scale=(0.25, 0.5), min_keep=1)
    g = torch.Generator().manual_seed(4)
    lengths = set()
    for _ in range(20):
        masks = gen(4, generator=g, with_blocks=True)
        for b in range(4):
            context = set(masks.context[b].tolist())
            assert not context & set(masks.target_blocks[b].flatten().tolist())
            assert not context & set(masks.targets[b].tolist())
            for block in masks.target_blocks[b]:
                t, rows, cols = _box_extent(block, (frames, h, w))
                assert t * rows * cols == block.numel()  # a full box, no holes
                lengths.add(t)
    assert lengths <= {2, 3, 4} and len(lengths) > 1  # round(0.25..0.5 x 8), drawn per batch


def test_context_block_spans_every_frame() -> None:
    gen = MultiBlockMaskGenerator((6, 6), frames=4, num_targets=1, temporal_scale=(0.25, 0.25))
    masks = gen(8, generator=torch.Generator().manual_seed(5), with_blocks=True)
    frames = masks.context // 36
    # The one target block covers a single frame: the context keeps tokens in all four.
    for row in frames:
        assert set(row.tolist()) == {0, 1, 2, 3}


def test_temporal_scale_is_checked() -> None:
    with pytest.raises(ValueError, match="temporal_scale"):
        MultiBlockMaskGenerator(4, frames=2, temporal_scale=(0.5, 1.5))
