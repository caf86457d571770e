"""The moving-shapes generator: captions true to the pixels, no answer in the middle frame."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jepa_lightning.data.index import read_shard_index
from jepa_lightning.encoders.video import VideoCodec, encode_video
from jepa_lightning.tools.moving_shapes import (
    DIRECTIONS,
    MovingShapesSpec,
    ensure_moving_shapes_shards,
    generate_clip,
    moving_shapes_captions,
)
from jepa_lightning.tools.shapes import COLOURS

SPEC = MovingShapesSpec(image_size=32)
FOUR_FRAMES = MovingShapesSpec(image_size=32, num_frames=4, appear_frames=(1, 1))  # cheap


def colour_mask(frame: Image.Image, colour: str) -> np.ndarray:
    pixels = np.asarray(frame, dtype=np.int32)
    return np.abs(pixels - np.array(COLOURS[colour])).max(axis=-1) < 40


def centroid(frame: Image.Image, colour: str) -> np.ndarray:
    ys, xs = np.nonzero(colour_mask(frame, colour))
    return np.array([xs.mean(), ys.mean()])


def test_captions_count_and_balance() -> None:
    captions = moving_shapes_captions(SPEC)
    assert len(captions) == len(set(captions)) == 4 * 3 * 4 + 4 * 3 * 3 * 2
    # Half the clips of each kind; each kind cycles through its captions: 288 clips are 3
    # cycles of the 48 motion captions and 2 of the 72 order captions.
    seen = Counter(generate_clip(i, spec=FOUR_FRAMES)[1] for i in range(288))
    assert set(seen) == set(captions)
    assert {seen[c] for c in captions[:48]} == {3} and {seen[c] for c in captions[48:]} == {2}


def test_clips_are_deterministic_and_differ_by_split() -> None:
    frames, caption, meta = generate_clip(5, seed=3, spec=SPEC)
    again = generate_clip(5, seed=3, spec=SPEC)
    assert caption == again[1] and meta == again[2]
    assert all(np.array_equal(a, b) for a, b in zip(frames, again[0], strict=True))
    # The file is lossy and x264 does not promise the same bytes on every run: it must decode
    # back close to the generated frames.
    decoded = VideoCodec(SPEC.image_size, len(frames)).decode(encode_video(frames, SPEC.fps))
    source = np.stack([np.asarray(frame).transpose(2, 0, 1) for frame in frames])
    assert decoded.shape == source.shape
    assert np.abs(decoded.numpy().astype(np.int32) - source).mean() < 8  # of 255; crf 18 gives ~4
    other = generate_clip(5, seed=3, spec=SPEC, split="val")[0]
    assert not np.array_equal(frames[0], other[0])


def test_motion_captions_are_true_to_the_pixels_and_the_middle_frame_is_balanced() -> None:
    middles: dict[str, list[np.ndarray]] = {}
    for index in range(0, 160):
        frames, caption, meta = generate_clip(index, spec=SPEC)
        if meta["kind"] != "motion":
            continue
        colour, direction = meta["labels"]["colour"], meta["labels"]["direction"]
        assert f"{colour} {meta['labels']['shape']} moves" in caption
        step = centroid(frames[-1], colour) - centroid(frames[0], colour)
        expected = np.array(DIRECTIONS[direction][0])
        assert float(step @ expected) > 0.25 * SPEC.image_size  # it moved that way...
        assert abs(float(step @ expected[::-1])) < 2  # ...and only that way
        middle = (SPEC.num_frames - 1) // 2
        middles.setdefault(direction, []).append(centroid(frames[middle], colour))
    # Where the shape is in the middle frame does not tell the direction.
    means = {d: np.mean(points, axis=0) for d, points in middles.items()}
    assert len(means) == 4
    for mean in means.values():
        # 20 clips per direction, midpoints uniform over 30% of the side: 3.5 standard errors.
        assert np.abs(mean - SPEC.image_size / 2).max() < 0.07 * SPEC.image_size


def test_order_clips_show_the_second_shape_only_from_its_frame_before_the_middle() -> None:
    for index in range(0, 20):
        frames, caption, meta = generate_clip(index, spec=SPEC)
        if meta["kind"] != "order":
            continue
        first, second = caption.split(", then ")
        colour1, colour2 = first.split()[1], second.split()[1]
        appears = meta["appears_at"]
        assert SPEC.appear_frames[0] <= appears <= SPEC.appear_frames[1]
        assert appears <= (SPEC.num_frames - 1) // 2
        for number, frame in enumerate(frames):
            assert colour_mask(frame, colour1).sum() > 20
            assert (colour_mask(frame, colour2).sum() > 20) == (number >= appears)
        assert meta["labels"]["first"] == first.split()[2]


def test_shards_written_once_and_rewritten_when_the_spec_changes(tmp_path: Path) -> None:
    folder = str(tmp_path / "val")
    ensure_moving_shapes_shards(folder, 6, SPEC, samples_per_shard=4, split="val")
    index = read_shard_index(folder)
    assert index.num_samples == 6 and len(index.shards) == 2
    assert index.metadata["spec"]["image_size"] == 32
    stamp = (tmp_path / "val" / "val-000000.tar").stat().st_mtime_ns
    ensure_moving_shapes_shards(folder, 6, SPEC, samples_per_shard=4, split="val")
    assert (tmp_path / "val" / "val-000000.tar").stat().st_mtime_ns == stamp
    ensure_moving_shapes_shards(folder, 6, FOUR_FRAMES, 4, split="val")
    assert read_shard_index(folder).metadata["spec"]["num_frames"] == 4
    with pytest.raises(ValueError, match="one folder per split"):
        ensure_moving_shapes_shards(folder, 6, SPEC, samples_per_shard=4, split="train")


def test_spec_rejects_what_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match="directions"):
        MovingShapesSpec(directions=("sideways",))
    with pytest.raises(ValueError, match="appear_frames"):
        MovingShapesSpec(appear_frames=(6, 12))
    with pytest.raises(ValueError, match="even"):
        MovingShapesSpec(image_size=33)
