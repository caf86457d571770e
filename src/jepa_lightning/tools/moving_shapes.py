"""The "moving shapes" video set: short clips of coloured shapes whose captions need time.

The video counterpart of :mod:`jepa_lightning.tools.shapes`: small, offline, deterministic
(the same parameters and seed give byte-identical shards), written as real ``mp4`` files
(H.264, through PyAV: ``pip install jepa-lightning[video]``) in WebDataset shards on first use.

Caption grammar (two kinds of clip)::

    motion: "a <colour> <shape> moves <direction phrase>"
            e.g. "a red circle moves to the left", "a blue square moves up"
    order:  "a <colour> <shape> appears, then a <colour> <shape>"
            e.g. "a green triangle appears, then a yellow circle"

**No single frame answers.** The captions are balanced so that the middle frame carries no
trace of the temporal part:

* a moving shape's path is centred on a point drawn from the same distribution for every
  direction, so the middle frame shows it at the same places whichever way it moves;
* in an order clip, the first shape is there from the first frame and the second appears at a
  frame in ``appear_frames``, before the middle of the clip; from the middle frame on both are
  there and nothing tells which came first (their places are drawn independently of the order).

A model that sees only the middle frame can tell colours and shapes but must guess the
direction (1 in 4) and the order (1 in 2); a model that sees the clip can answer both.

With the defaults (4 colours, 3 shapes, 4 directions) there are 4*3*4 = 48 motion captions and
4*3*3*2 = 72 order captions (the two shapes differ in colour and in shape): 120 in all. Sample
``i`` is an order clip for an ``order_fraction`` share of indices, and each kind cycles through
its captions in a seeded random order, as the shapes set does.

Each sample's ``json`` holds ``labels`` for zero-shot evaluation: ``direction`` (motion clips;
None for order clips), ``first`` (order clips: the shape that appears first; None for motion
clips), and ``shape``/``colour`` of the first-named shape.

Frames are drawn like the shapes images (anti-aliased shapes, tinted background, faint
gradient, pixel noise); the background and jitter are fixed per clip, the noise changes every
frame.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from jepa_lightning.data.seeds import seed_from
from jepa_lightning.encoders.video import encode_video
from jepa_lightning.tools.shapes import COLOURS, SHAPES, _article, _render
from jepa_lightning.tools.shards import ShardWriter, holds_generated_shards

__all__ = [
    "DIRECTIONS",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "MovingShapesSpec",
    "ensure_moving_shapes_shards",
    "generate_clip",
    "moving_shapes_captions",
    "write_moving_shapes_shards",
]

GENERATOR_NAME = "jepa-lightning/moving-shapes"
GENERATOR_VERSION = 1
"""Bumped whenever the clips or captions produced for given parameters change."""

DIRECTIONS: dict[str, tuple[tuple[float, float], str]] = {
    "left": ((-1.0, 0.0), "to the left"),
    "right": ((1.0, 0.0), "to the right"),
    "up": ((0.0, -1.0), "up"),
    "down": ((0.0, 1.0), "down"),
}
"""Directions of motion: unit step (x, y) in image coordinates, and caption phrase."""

_EXTENT = 0.24  # shape size, fraction of the side
_TRAVEL = 0.36  # distance a moving shape covers over the clip, fraction of the side
_CENTRE_RANGE = (0.35, 0.65)  # where a path's midpoint (or a still shape) lies, per axis


@dataclass(frozen=True)
class MovingShapesSpec:
    """What the moving-shapes generator draws.

    Attributes:
        colours: Colour names, of :data:`jepa_lightning.tools.shapes.COLOURS`.
        shapes: Shape names, of :data:`jepa_lightning.tools.shapes.SHAPES`.
        directions: Directions of motion, of :data:`DIRECTIONS`.
        image_size: Side of the square frames, in pixels (even, >= 32).
        num_frames: Frames per clip.
        fps: Frame rate stored in the video files.
        order_fraction: Share of order clips ("appears, then"), in [0, 1].
        appear_frames: First and last frame at which an order clip's second shape may
            appear (both before the middle frame).
    """

    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    directions: tuple[str, ...] = ("left", "right", "up", "down")
    image_size: int = 64
    num_frames: int = 20
    fps: int = 10
    order_fraction: float = 0.5
    appear_frames: tuple[int, int] = (6, 8)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("colours", COLOURS),
            ("shapes", SHAPES),
            ("directions", DIRECTIONS),
        ):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            unknown = [value for value in values if value not in allowed]
            if unknown or not values or len(set(values)) != len(values):
                raise ValueError(
                    f"{name} must be distinct names of {', '.join(allowed)}; got {list(values)}"
                )
        object.__setattr__(self, "appear_frames", tuple(self.appear_frames))
        if self.image_size < 32 or self.image_size % 2:
            raise ValueError(f"image_size must be even and >= 32, got {self.image_size}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if not 0.0 <= self.order_fraction <= 1.0:
            raise ValueError(f"order_fraction must be in [0, 1], got {self.order_fraction}")
        first, last = self.appear_frames
        middle = (self.num_frames - 1) // 2
        if not 1 <= first <= last <= middle:
            raise ValueError(
                f"appear_frames {self.appear_frames} must satisfy 1 <= first <= last <= "
                f"{middle} (the middle frame of {self.num_frames})"
            )
        if self.order_fraction > 0 and (len(self.colours) < 2 or len(self.shapes) < 2):
            raise ValueError("order clips need at least two colours and two shapes")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-compatible dict (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }


_Motion = tuple[str, str, str]  # colour, shape, direction
_Order = tuple[str, str, str, str]  # colour1, shape1, colour2, shape2


@lru_cache(maxsize=32)
def _motion_combos(spec: MovingShapesSpec) -> tuple[_Motion, ...]:
    return tuple(itertools.product(spec.colours, spec.shapes, spec.directions))


@lru_cache(maxsize=32)
def _order_combos(spec: MovingShapesSpec) -> tuple[_Order, ...]:
    return tuple(
        (colour1, shape1, colour2, shape2)
        for colour1, shape1, colour2, shape2 in itertools.product(
            spec.colours, spec.shapes, spec.colours, spec.shapes
        )
        if colour1 != colour2 and shape1 != shape2
    )


def _motion_caption(colour: str, shape: str, direction: str) -> str:
    return f"{_article(colour)} {colour} {shape} moves {DIRECTIONS[direction][1]}"


def _order_caption(colour1: str, shape1: str, colour2: str, shape2: str) -> str:
    first, second = f"{colour1} {shape1}", f"{colour2} {shape2}"
    return f"{_article(colour1)} {first} appears, then {_article(colour2)} {second}"


def moving_shapes_captions(spec: MovingShapesSpec = MovingShapesSpec()) -> list[str]:
    """List every caption the generator can produce for a spec.

    Args:
        spec: The generator spec.

    Returns:
        The distinct captions: motion captions (if ``order_fraction < 1``), then order captions
        (if ``order_fraction > 0``).
    """
    captions: list[str] = []
    if spec.order_fraction < 1:
        captions += [_motion_caption(*combo) for combo in _motion_combos(spec)]
    if spec.order_fraction > 0:
        captions += [_order_caption(*combo) for combo in _order_combos(spec)]
    return captions


def _pick(combos: tuple[Any, ...], ordinal: int, seed: int, split: str, kind: str) -> Any:
    """The ``ordinal``-th combination of a kind: each cycle visits all of them, shuffled."""
    cycle, offset = divmod(ordinal, len(combos))
    order = list(range(len(combos)))
    random.Random(seed_from("moving-shapes-order", seed, split, kind, cycle)).shuffle(order)
    return combos[order[offset]]


def generate_clip(
    index: int, seed: int = 0, spec: MovingShapesSpec = MovingShapesSpec(), split: str = "train"
) -> tuple[list[Image.Image], str, dict[str, Any]]:
    """Generate one clip; a pure function of its arguments.

    Args:
        index: Sample index (>= 0); indices select captions in a balanced, seeded order.
        seed: Random seed.
        spec: What to draw.
        split: Split name, mixed into the random streams.

    Returns:
        ``(frames, caption, meta)``: ``spec.num_frames`` RGB images, the caption and a
        JSON-compatible dict ``{"index", "kind", "labels": {"direction", "first", "shape",
        "colour"}}`` (plus ``"appears_at"`` for order clips).

    Raises:
        ValueError: If ``index`` is negative.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = random.Random(seed_from("moving-shapes-sample", seed, split, index))
    before = int(index * spec.order_fraction)
    is_order = int((index + 1) * spec.order_fraction) > before
    ordinal = before if is_order else index - before

    def place() -> tuple[float, float]:
        return rng.uniform(*_CENTRE_RANGE), rng.uniform(*_CENTRE_RANGE)

    # Per frame: (shape, colour, cx, cy, extent) of the objects in view.
    frames_objects: list[list[tuple[str, str, float, float, float]]]
    meta: dict[str, Any] = {"index": index}
    if not is_order:
        colour, shape, direction = _pick(_motion_combos(spec), ordinal, seed, split, "motion")
        (dx, dy), _ = DIRECTIONS[direction]
        mid_x, mid_y = place()
        last = spec.num_frames - 1
        frames_objects = []
        for frame in range(spec.num_frames):
            along = (frame / last - 0.5) * _TRAVEL
            frames_objects.append(
                [(shape, colour, mid_x + along * dx, mid_y + along * dy, _EXTENT)]
            )
        caption = _motion_caption(colour, shape, direction)
        meta["kind"] = "motion"
        meta["labels"] = {"direction": direction, "first": None, "shape": shape, "colour": colour}
    else:
        colour1, shape1, colour2, shape2 = _pick(_order_combos(spec), ordinal, seed, split, "order")
        # Left/right halves at random, independently of which shape comes first.
        left, right = rng.uniform(0.2, 0.32), rng.uniform(0.68, 0.8)
        x1, x2 = (left, right) if rng.random() < 0.5 else (right, left)
        first = (shape1, colour1, x1, rng.uniform(*_CENTRE_RANGE), _EXTENT)
        second = (shape2, colour2, x2, rng.uniform(*_CENTRE_RANGE), _EXTENT)
        appears_at = rng.randint(*spec.appear_frames)
        frames_objects = [
            [first, second] if frame >= appears_at else [first] for frame in range(spec.num_frames)
        ]
        caption = _order_caption(colour1, shape1, colour2, shape2)
        meta["kind"] = "order"
        meta["appears_at"] = appears_at
        meta["labels"] = {"direction": None, "first": shape1, "shape": shape1, "colour": colour1}
    # One look per clip (background, colour and rotation jitter), fresh pixel noise per frame.
    look = seed_from("moving-shapes-look", seed, split, index)
    frames = [
        _render(
            random.Random(look),
            seed_from("moving-shapes-noise", seed, split, index, frame),
            spec.image_size,
            objects,
        )[0]
        for frame, objects in enumerate(frames_objects)
    ]
    return frames, caption, meta


def moving_shapes_metadata(
    num_samples: int, samples_per_shard: int, seed: int, split: str, spec: MovingShapesSpec
) -> dict[str, Any]:
    """The metadata that :func:`write_moving_shapes_shards` records in ``index.json``.

    Args:
        num_samples: Number of clips.
        samples_per_shard: Maximum clips per shard.
        seed: Random seed.
        split: Split name (also the shard prefix).
        spec: Generator spec.

    Returns:
        A JSON-compatible dict identifying the generated data exactly.
    """
    return {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "num_samples": num_samples,
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "split": split,
        "spec": spec.to_dict(),
        "num_captions": len(moving_shapes_captions(spec)),
    }


def write_moving_shapes_shards(
    out_dir: str,
    num_samples: int,
    spec: MovingShapesSpec = MovingShapesSpec(),
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
) -> str:
    """Generate the moving-shapes set as WebDataset shards (``mp4`` + ``txt`` + ``json``).

    Writes ``{out_dir}/{split}-000000.tar``, ... and ``{out_dir}/index.json``, replacing the
    shards of an earlier run in that folder. Use one folder per split.

    Args:
        out_dir: Output folder, created if missing.
        num_samples: Number of clips (>= 1).
        spec: What to draw.
        samples_per_shard: Maximum clips per shard.
        seed: Random seed; the same parameters and seed give byte-identical shards.
        split: Split name; the shard name prefix and part of the random seed.
        progress: Show a progress bar.

    Returns:
        The absolute path of the output folder.

    Raises:
        ValueError: If ``num_samples`` < 1.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    metadata = moving_shapes_metadata(num_samples, samples_per_shard, seed, split, spec)
    width = max(6, len(str(num_samples - 1)))
    with ShardWriter(
        out_dir,
        prefix=split,
        samples_per_shard=samples_per_shard,
        metadata=metadata,
        overwrite=True,
    ) as writer:
        indices: Any = range(num_samples)
        if progress:
            from rich.progress import track

            indices = track(indices, description=f"moving shapes {split}", total=num_samples)
        for index in indices:
            frames, caption, meta = generate_clip(index, seed, spec, split)
            writer.write(
                {
                    "__key__": f"{split}_{index:0{width}d}",
                    "mp4": encode_video(frames, spec.fps),
                    "txt": caption,
                    "json": meta,
                }
            )
    return str(writer.folder)


def ensure_moving_shapes_shards(
    out_dir: str,
    num_samples: int,
    spec: MovingShapesSpec = MovingShapesSpec(),
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
) -> str:
    """Write the moving-shapes shards unless ``out_dir`` already holds exactly these.

    Cheap when the data exist (reads ``index.json``), so a data module's ``prepare_data`` can
    call it every run; (re)writes when the index is missing or unreadable, a shard is missing,
    or the recorded parameters (generator version included) differ.

    Args:
        out_dir: Output folder for this split.
        num_samples: Number of clips.
        spec: What to draw.
        samples_per_shard: Maximum clips per shard.
        seed: Random seed.
        split: Split name.
        progress: Show a progress bar when writing.

    Returns:
        The absolute path of the output folder.

    Raises:
        ValueError: If ``out_dir`` holds shards that this generator did not write, or of
            another split.
    """
    wanted = moving_shapes_metadata(num_samples, samples_per_shard, seed, split, spec)
    if holds_generated_shards(out_dir, wanted, "moving-shapes"):
        return str(Path(out_dir).absolute())
    started = time.perf_counter()
    result = write_moving_shapes_shards(
        out_dir, num_samples, spec, samples_per_shard, seed, split, progress
    )
    if progress:
        print(
            f"wrote {num_samples} moving-shapes clips ({split}) to {result} "
            f"in {time.perf_counter() - started:.1f}s"
        )
    return result
