"""Generated "shape streams": long clips of moving shapes whose scene changes at random times.

The test bed of selective decoding (:mod:`jepa_lightning.streams`). A stream is a sequence of
*scenes*; each scene shows one caption of the shapes set (:mod:`jepa_lightning.tools.shapes`:
"a small red circle on the left", "a green triangle to the left of a yellow circle") for a
random number of frames, then the scene cuts to another caption. Within a scene the shapes
move: they drift smoothly along the axis their caption leaves free (a one-shape scene's
vertical axis with the default left/center/right positions; across a pair's relation), and
jitter within their position's tolerance, every frame with fresh pixel noise. So the frames of
a scene differ while its caption stays the same, and the ground-truth caption of every
instant is known.

A pure function of its arguments (:func:`generate_stream`), as the shapes sets are.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from jepa_lightning.data.seeds import seed_from
from jepa_lightning.tools.shapes import (
    _FREE_JITTER,
    _PAIR_ALIGN_JITTER,
    _PAIR_OFFSET,
    _PAIR_SIZE,
    _POSITION_JITTER,
    POSITIONS,
    SIZES,
    ShapesSpec,
    _free_axes,
    _one_shape_caption,
    _one_shape_combos,
    _render,
    _two_shape_caption,
    _two_shape_combos,
)

__all__ = ["ShapeStream", "ShapeStreamSpec", "generate_stream"]

_Object = tuple[str, str, float, float, float]  # shape, colour, cx, cy, extent


@dataclass(frozen=True)
class ShapeStreamSpec:
    """What a shape stream shows.

    Attributes:
        num_frames: Frames per stream.
        min_scene: Shortest scene, in frames (the last scene may be shorter).
        max_scene: Longest scene, in frames.
        shapes: The scenes' captions and drawing (image size, colours, shapes...).

    Raises:
        ValueError: If the lengths are not ``1 <= min_scene <= max_scene`` and ``num_frames >= 1``.
    """

    num_frames: int = 600
    min_scene: int = 20
    max_scene: int = 120
    shapes: ShapesSpec = field(default_factory=ShapesSpec)

    def __post_init__(self) -> None:
        if self.num_frames < 1 or not 1 <= self.min_scene <= self.max_scene:
            raise ValueError(
                "need num_frames >= 1 and 1 <= min_scene <= max_scene, got "
                f"{self.num_frames}, {self.min_scene}, {self.max_scene}"
            )


@dataclass
class ShapeStream:
    """One generated stream.

    Attributes:
        frames: The RGB frames, in order.
        captions: The ground-truth caption of every frame.
        scene_starts: The first frame of each scene (0 first): the true segmentation.
    """

    frames: list[Image.Image]
    captions: list[str]
    scene_starts: list[int]


def _scene_plan(rng: random.Random, spec: ShapeStreamSpec) -> list[tuple[int, int]]:
    """``(start, length)`` of each scene."""
    scenes, start = [], 0
    while start < spec.num_frames:
        length = min(rng.randint(spec.min_scene, spec.max_scene), spec.num_frames - start)
        scenes.append((start, length))
        start += length
    return scenes


def _scene(
    rng: random.Random, spec: ShapesSpec, previous: str | None
) -> tuple[str, Any, dict[str, float]]:
    """A caption different from ``previous``, its combination and its motion parameters."""
    one, two = _one_shape_combos(spec), _two_shape_combos(spec)
    while True:
        if two and (not one or rng.random() < spec.two_shape_fraction):
            combo: Any = rng.choice(two)
            caption = _two_shape_caption(*combo)
        else:
            combo = rng.choice(one)
            caption = _one_shape_caption(*combo)
        if caption != previous:
            break
    motion = {
        "phase": rng.uniform(0, 2 * math.pi),
        "period": rng.uniform(30, 90),  # frames per drift cycle
        "size": 1 + rng.uniform(-0.05, 0.05),
    }
    return caption, combo, motion


def _wobble(rng: random.Random, limit: float) -> float:
    return rng.uniform(-1, 1) * limit


def _objects(
    combo: Any, motion: dict[str, float], frame: int, spec: ShapesSpec, rng: random.Random
) -> list[_Object]:
    """The objects of a scene's ``frame``: a smooth drift on the free axis plus small jitter."""
    drift = math.sin(motion["phase"] + 2 * math.pi * frame / motion["period"])
    if len(combo) == 4:  # one shape: size, colour, shape, position
        size, colour, shape, position = combo
        free_x, free_y = _free_axes(spec)
        ax, ay = POSITIONS[position]
        jitter = _POSITION_JITTER / 2
        cx = ax + (drift * _FREE_JITTER if free_x else _wobble(rng, jitter))
        cy = ay + (drift * _FREE_JITTER if free_y else _wobble(rng, jitter))
        return [(shape, colour, cx, cy, SIZES[size] * motion["size"])]
    colour1, shape1, relation, colour2, shape2 = combo
    across = 0.5 + drift * _FREE_JITTER
    objects = []
    for sign, shape, colour in ((-1, shape1, colour1), (1, shape2, colour2)):
        main = 0.5 + sign * _PAIR_OFFSET + _wobble(rng, _POSITION_JITTER / 2)
        other = across + _wobble(rng, _PAIR_ALIGN_JITTER / 2)
        cx, cy = (main, other) if relation == "left of" else (other, main)
        objects.append((shape, colour, cx, cy, _PAIR_SIZE * motion["size"]))
    return objects


def generate_stream(
    index: int, seed: int = 0, spec: ShapeStreamSpec = ShapeStreamSpec()
) -> ShapeStream:
    """Generate one stream; a pure function of its arguments.

    Args:
        index: Stream index (>= 0).
        seed: Random seed.
        spec: What to draw.

    Returns:
        The frames, the caption of every frame and the scene starts.

    Raises:
        ValueError: If ``index`` is negative.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = random.Random(seed_from("shape-stream", seed, index))
    frames: list[Image.Image] = []
    captions: list[str] = []
    starts: list[int] = []
    previous = None
    for scene, (start, length) in enumerate(_scene_plan(rng, spec)):
        caption, combo, motion = _scene(rng, spec.shapes, previous)
        previous = caption
        starts.append(start)
        look = seed_from("shape-stream-look", seed, index, scene)  # one look per scene
        for frame in range(length):
            jitter = random.Random(seed_from("shape-stream-jitter", seed, index, start + frame))
            objects = _objects(combo, motion, frame, spec.shapes, jitter)
            noise = seed_from("shape-stream-noise", seed, index, start + frame)
            image, _ = _render(random.Random(look), noise, spec.shapes.image_size, objects)
            frames.append(image)
            captions.append(caption)
    return ShapeStream(frames, captions, starts)
