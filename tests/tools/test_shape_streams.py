"""Generated shape streams: scenes of moving shapes with the true caption of every frame."""

from __future__ import annotations

import numpy as np
import pytest

from jepa_lightning.tools.shape_streams import ShapeStreamSpec, generate_stream
from jepa_lightning.tools.shapes import ShapesSpec, shapes_captions

SPEC = ShapeStreamSpec(num_frames=90, min_scene=10, max_scene=30, shapes=ShapesSpec(image_size=32))


def test_scenes_hold_one_caption_and_cut_to_another() -> None:
    stream = generate_stream(3, seed=1, spec=SPEC)
    assert len(stream.frames) == len(stream.captions) == 90
    assert stream.frames[0].size == (32, 32)
    starts = stream.scene_starts
    assert starts[0] == 0
    lengths = np.diff([*starts, 90])
    assert all(10 <= length <= 30 for length in lengths[:-1]) and 1 <= lengths[-1] <= 30
    known = set(shapes_captions(SPEC.shapes))
    for start, end in zip(starts, [*starts[1:], 90], strict=True):
        assert len(set(stream.captions[start:end])) == 1
        assert stream.captions[start] in known
        if start > 0:
            assert stream.captions[start] != stream.captions[start - 1]


def test_frames_of_a_scene_move_and_streams_repeat() -> None:
    stream = generate_stream(0, seed=0, spec=SPEC)
    first, later = (np.asarray(stream.frames[i], dtype=np.int16) for i in (0, 8))
    assert np.abs(first - later).mean() > 1.0  # motion and fresh noise, not a still
    again = generate_stream(0, seed=0, spec=SPEC)
    assert again.captions == stream.captions
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again.frames, stream.frames, strict=True))
    assert generate_stream(1, seed=0, spec=SPEC).captions != stream.captions


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="min_scene <= max_scene"):
        ShapeStreamSpec(num_frames=10, min_scene=5, max_scene=4)
    with pytest.raises(ValueError, match="index must be >= 0"):
        generate_stream(-1, spec=SPEC)
