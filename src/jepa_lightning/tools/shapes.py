"""The "shapes" data set: procedurally generated images of coloured shapes with captions.

This is the package's default training data: small, offline and deterministic (the same
parameters and seed give byte-identical shards), yet compositional enough to show learning.

Caption grammar (every caption is fully determined by its image)::

    one shape:  "a <size> <colour> <shape> <position phrase>"
                e.g. "a small red circle on the left", "a large blue square in the center"
    two shapes: "a <colour> <shape> <relation> a <colour> <shape>"
                e.g. "a green triangle to the left of a yellow circle",
                     "an orange star above a blue square"

* Position phrases: ``left`` → "on the left", ``right`` → "on the right", ``center`` → "in the
  center", ``top``/``bottom`` → "at the top"/"at the bottom", corners such as ``top left`` →
  "in the top left corner". A shape's centre stays within a small jitter of its position's
  anchor, far from the boundaries between positions. On an axis along which all configured
  positions share the same anchor (the vertical axis with the default left/center/right), the
  shape moves freely instead, since the caption says nothing about it.
* Sizes: ``small`` (about 16% of the image side) and ``large`` (about 32%), with ±5% jitter.
* Two shapes always differ in both colour and shape, have an unspecified medium size, and use
  only the canonical relations ``left of`` ("to the left of") and ``above``: the first-named
  shape is the left (or top) one, so there is exactly one caption per layout. The two shapes
  are clearly separated along the relation's axis and nearly aligned on the other one.

With the defaults (4 colours, 3 shapes, 2 sizes, 3 positions, 2 relations) there are
4*3*2*3 = 72 one-shape and 12*6*2 = 144 two-shape captions: 216 in all. Captions are balanced:
sample ``i`` is a two-shape sample exactly for a ``two_shape_fraction`` share of indices, and
each kind cycles through all its attribute combinations in a seeded random order, so every
caption appears (nearly) equally often and all of them appear once there are a few hundred
samples.

Question/answer samples (``ShapesSpec(with_queries=True)``, same images): each asks about the
colour, shape or position of one of its shapes, or their number ("what colour is the circle?"
→ "red", "where is the red circle?" → "left", "how many shapes are there?" → "two"); the
sample's text is the answer and its metadata holds the question, the answer, the candidate
answers of that kind of question (for discriminative VQA) and the caption.

Every image is drawn at 4x resolution and downsampled (anti-aliased edges), on a light grey,
slightly tinted background with a faint gradient and pixel noise; shape colours, sizes,
positions and (for squares, triangles, stars and crosses) rotations are jittered a little, so
images with the same caption differ.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from jepa_lightning.data.seeds import seed_from
from jepa_lightning.tools.shards import ShardWriter, holds_generated_shards

__all__ = [
    "COLOURS",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "QUESTION_TYPES",
    "SIZES",
    "ShapesSpec",
    "answer_candidates",
    "ensure_shapes_shards",
    "generate_sample",
    "shapes_captions",
    "shapes_class_names",
    "shapes_metadata",
    "write_shapes_shards",
]

GENERATOR_NAME = "jepa-lightning/shapes"
GENERATOR_VERSION = 2
"""Bumped whenever the images or captions produced for given parameters change (2: question
samples answer their question)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 15),
    "black": (25, 25, 25),
}
"""Supported colour names and their base RGB values (jittered by up to ±12 per channel)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
"""Supported shape names."""

SIZES: dict[str, float] = {"small": 0.16, "large": 0.32}
"""Supported size names and the shape extent as a fraction of the image side (±5% jitter)."""

POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.22, 0.5),
    "center": (0.5, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "top left": (0.22, 0.22),
    "top right": (0.78, 0.22),
    "bottom left": (0.22, 0.78),
    "bottom right": (0.78, 0.78),
}
"""Supported position names and their anchors (x, y) as fractions of the image side."""

RELATIONS: dict[str, str] = {"left of": "to the left of", "above": "above"}
"""Supported two-shape relations and their caption phrases."""

_POSITION_JITTER = 0.025  # max offset of a shape centre from its position anchor
_FREE_JITTER = 0.12  # max offset on an axis that captions do not constrain
_SIZE_JITTER = 0.05  # relative
_PAIR_SIZE = 0.25  # extent of each shape in two-shape images
_PAIR_OFFSET = 0.23  # distance of each shape of a pair from the pair centre (along the relation)
_PAIR_ALIGN_JITTER = 0.03  # independent offset across the relation axis
_MAX_ROTATION = 6.0  # degrees
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapesSpec:
    """What the shapes generator draws.

    Attributes:
        colours: Colour names, of :data:`COLOURS`: red, green, blue, yellow, purple, orange,
            black.
        shapes: Shape names, of :data:`SHAPES`: circle, square, triangle, star, cross.
        sizes: Size names for one-shape images, of :data:`SIZES`: small, large.
        positions: Position names for one-shape images, of :data:`POSITIONS`: left, center,
            right, top, bottom, top left, top right, bottom left, bottom right.
        relations: Relations for two-shape images, of :data:`RELATIONS`: left of, above.
        image_size: Side of the square RGB images, in pixels (>= 32).
        two_shape_fraction: Share of samples showing two shapes and a relation, in [0, 1].
        with_queries: Make question/answer samples: each sample's metadata gets a question
            about the image (``"query"``: its colour, shape, position or the number of
            shapes), its ``"answer"``, the ``"candidates"`` of that kind of question and the
            ``"caption"``; the sample's text is the answer (VL-JEPA's discriminative VQA and
            stage-2 training).
    """

    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    sizes: tuple[str, ...] = ("small", "large")
    positions: tuple[str, ...] = ("left", "center", "right")
    relations: tuple[str, ...] = ("left of", "above")
    image_size: int = 64
    two_shape_fraction: float = 0.3
    with_queries: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("colours", COLOURS),
            ("shapes", SHAPES),
            ("sizes", SIZES),
            ("positions", POSITIONS),
            ("relations", RELATIONS),
        ):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            unknown = [value for value in values if value not in allowed]
            if unknown:
                raise ValueError(
                    f"unknown {name} {unknown}; supported: {', '.join(sorted(allowed))}"
                )
            if len(set(values)) != len(values):
                raise ValueError(f"{name} contains duplicates: {list(values)}")
        if not self.colours or not self.shapes:
            raise ValueError("colours and shapes must not be empty")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not 0.0 <= self.two_shape_fraction <= 1.0:
            raise ValueError(f"two_shape_fraction must be in [0, 1], got {self.two_shape_fraction}")
        if self.two_shape_fraction < 1.0 and (not self.sizes or not self.positions):
            raise ValueError("one-shape samples need at least one size and one position")
        if self.two_shape_fraction > 0.0 and (
            len(self.colours) < 2 or len(self.shapes) < 2 or not self.relations
        ):
            raise ValueError(
                "two-shape samples (two_shape_fraction > 0) need at least two colours, two "
                "shapes and one relation (the two shapes differ in colour and in shape)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-compatible dict (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }


# --------------------------------------------------------------------------------- combinations
_OneShape = tuple[str, str, str, str]  # size, colour, shape, position
_TwoShapes = tuple[str, str, str, str, str]  # colour1, shape1, relation, colour2, shape2


@lru_cache(maxsize=32)
def _one_shape_combos(spec: ShapesSpec) -> tuple[_OneShape, ...]:
    return tuple(itertools.product(spec.sizes, spec.colours, spec.shapes, spec.positions))


@lru_cache(maxsize=32)
def _two_shape_combos(spec: ShapesSpec) -> tuple[_TwoShapes, ...]:
    combos = []
    for colour1, shape1, relation, colour2, shape2 in itertools.product(
        spec.colours, spec.shapes, spec.relations, spec.colours, spec.shapes
    ):
        if colour1 != colour2 and shape1 != shape2:
            combos.append((colour1, shape1, relation, colour2, shape2))
    return tuple(combos)


@lru_cache(maxsize=256)
def _cycle_order(seed: int, kind: str, cycle: int, length: int) -> tuple[int, ...]:
    order = list(range(length))
    random.Random(seed_from("shapes-order", seed, kind, cycle)).shuffle(order)
    return tuple(order)


def _is_two_shape(index: int, fraction: float) -> tuple[bool, int]:
    """Return whether sample ``index`` shows two shapes, and its ordinal within its kind."""
    before = math.floor(index * fraction)
    two = math.floor((index + 1) * fraction) > before
    return two, (before if two else index - before)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position_phrase(position: str) -> str:
    if position in ("left", "right"):
        return f"on the {position}"
    if position in ("top", "bottom"):
        return f"at the {position}"
    if position == "center":
        return "in the center"
    return f"in the {position} corner"


def _one_shape_caption(size: str, colour: str, shape: str, position: str) -> str:
    return f"{_article(size)} {size} {colour} {shape} {_position_phrase(position)}"


def _two_shape_caption(colour1: str, shape1: str, relation: str, colour2: str, shape2: str) -> str:
    return (
        f"{_article(colour1)} {colour1} {shape1} {RELATIONS[relation]} "
        f"{_article(colour2)} {colour2} {shape2}"
    )


def shapes_captions(spec: ShapesSpec = ShapesSpec()) -> list[str]:
    """List every caption the generator can produce for a spec.

    Args:
        spec: The generator spec.

    Returns:
        The distinct captions: one-shape captions first (if ``two_shape_fraction < 1``), then
        two-shape captions (if ``two_shape_fraction > 0``).
    """
    captions: list[str] = []
    if spec.two_shape_fraction < 1.0:
        captions += [_one_shape_caption(*combo) for combo in _one_shape_combos(spec)]
    if spec.two_shape_fraction > 0.0:
        captions += [_two_shape_caption(*combo) for combo in _two_shape_combos(spec)]
    return captions


def shapes_class_names(spec: ShapesSpec = ShapesSpec()) -> dict[str, list[str]]:
    """Class names for zero-shot classification of the main (first) shape.

    The keys match the ``labels`` of each sample's metadata. The ``position`` label is only set
    for one-shape samples (it is ``None`` for two-shape samples).

    Args:
        spec: The generator spec.

    Returns:
        ``{"shape": [...], "colour": [...], "position": [...]}``.
    """
    return {
        "shape": list(spec.shapes),
        "colour": list(spec.colours),
        "position": list(spec.positions),
    }


# --------------------------------------------------------------------------------- drawing
def _rotate(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in points]


def _outline(shape: str, radius: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape centred at the origin, fitting in a ``2*radius`` box."""
    r = radius
    if shape == "square":
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if shape == "triangle":  # pointing up, as wide as tall
        return [(0.0, -r), (r, r), (-r, r)]
    if shape == "star":
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else 0.45 * r
            points.append((rr * math.cos(angle), rr * math.sin(angle) + 0.1 * r))
        return points
    if shape == "cross":  # a plus sign
        w = 0.34 * r
        return [
            (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
            (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    centre: tuple[float, float],
    extent: float,
    colour: tuple[int, int, int],
    rotation: float,
) -> list[int]:
    """Draw a shape on a supersampled canvas; return its bounding box in canvas pixels."""
    cx, cy = centre
    radius = extent / 2
    if shape == "circle":
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        draw.ellipse(box, fill=colour)
        return [round(v) for v in box]
    points = [(cx + x, cy + y) for x, y in _rotate(_outline(shape, radius), rotation)]
    draw.polygon(points, fill=colour)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [round(min(xs)), round(min(ys)), round(max(xs)), round(max(ys))]


def _jitter_colour(rng: random.Random, colour: str) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-12, 12))) for c in COLOURS[colour])
    return r, g, b


def _free_axes(spec: ShapesSpec) -> tuple[bool, bool]:
    anchors = [POSITIONS[p] for p in spec.positions]
    return len({a[0] for a in anchors}) == 1, len({a[1] for a in anchors}) == 1


def _render(
    rng: random.Random,
    noise_seed: int,
    size: int,
    objects: list[tuple[str, str, float, float, float]],
) -> tuple[Image.Image, list[list[int]]]:
    """Render ``(shape, colour, cx, cy, extent)`` objects (fractions of the side) to an image."""
    level = rng.uniform(200, 245)
    background = tuple(int(round(level + rng.uniform(-6, 6))) for _ in range(3))
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for shape, colour, cx, cy, extent in objects:
        rotation = 0.0 if shape == "circle" else math.radians(rng.uniform(-1, 1) * _MAX_ROTATION)
        box = _draw_shape(
            draw, shape, (cx * big, cy * big), extent * big, _jitter_colour(rng, colour), rotation
        )
        boxes.append([max(0, min(size, round(v / _SUPERSAMPLE))) for v in box])
    image = canvas.reduce(_SUPERSAMPLE)
    # Light background variation: a faint linear gradient plus pixel noise.
    angle = rng.uniform(0, 2 * math.pi)
    amplitude = rng.uniform(0, 10)
    noise_sigma = rng.uniform(1.5, 4.0)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gradient = amplitude * (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None])
    noise = np.random.default_rng(noise_seed).standard_normal((size, size, 3), dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32) + gradient[:, :, None] + noise_sigma * noise
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB"), boxes


QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "position", "count")
"""The kinds of question that ``with_queries`` samples ask, drawn uniformly."""

COUNT_WORDS: tuple[str, ...] = ("one", "two")
"""Answers to "how many shapes are there?"."""


def answer_candidates(spec: ShapesSpec) -> dict[str, list[str]]:
    """The candidate answers of each question type: every answer the spec can give.

    Args:
        spec: The generator spec.

    Returns:
        ``{"colour": [...], "shape": [...], "position": [...], "count": ["one", "two"]}``;
        positions are the one-shape positions, then the sides of two-shape pairs.
    """
    positions = list(spec.positions) if spec.two_shape_fraction < 1.0 else []
    if spec.two_shape_fraction > 0.0:
        for relation in spec.relations:
            positions += ["left", "right"] if relation == "left of" else ["top", "bottom"]
    return {
        "colour": list(spec.colours),
        "shape": list(spec.shapes),
        "position": list(dict.fromkeys(positions)),
        "count": list(COUNT_WORDS),
    }


def _question(rng: random.Random, shapes: list[dict[str, Any]], spec: ShapesSpec) -> dict[str, Any]:
    """A question about one of the shapes (or their number), its answer and candidates."""
    kind = rng.choice(QUESTION_TYPES)
    target = rng.choice(shapes)
    if kind == "colour":
        query, answer = f"what colour is the {target['shape']}?", target["colour"]
    elif kind == "shape":
        query, answer = f"what is the shape of the {target['colour']} object?", target["shape"]
    elif kind == "position":
        query = f"where is the {target['colour']} {target['shape']}?"
        answer = target["position"]
    else:
        query, answer = "how many shapes are there?", COUNT_WORDS[len(shapes) - 1]
    candidates = answer_candidates(spec)[kind]
    return {"query": query, "answer": answer, "candidates": candidates, "question_type": kind}


def generate_sample(
    index: int, seed: int = 0, spec: ShapesSpec = ShapesSpec(), split: str = "train"
) -> tuple[Image.Image, str, dict[str, Any]]:
    """Generate one sample; a pure function of its arguments.

    Args:
        index: Sample index (>= 0). Indices select attribute combinations in a balanced,
            seeded order (see the module docstring).
        seed: Random seed.
        spec: What to draw.
        split: Split name, mixed into the random streams so that e.g. ``"train"`` and ``"val"``
            with the same seed give different images.

    Returns:
        ``(image, text, meta)``: an RGB PIL image of ``spec.image_size`` pixels, its caption
        (with ``spec.with_queries``: the answer to its question) and a JSON-compatible dict
        ``{"index", "shapes": [{"shape", "colour", "size", "position", "bbox"}, ...],
        "relation", "labels": {"shape", "colour", "position"}}`` (with ``spec.with_queries``
        also ``"query"``, ``"answer"``, ``"candidates"``, ``"question_type"`` and
        ``"caption"``). ``bbox`` is ``[x0, y0, x1, y1]`` in
        pixels. For two-shape samples, ``size`` is ``"medium"``, ``position`` is the shape's
        side of the pair (``left``/``right`` or ``top``/``bottom``) and ``labels.position`` is
        ``None``.

    Raises:
        ValueError: If ``index`` is negative.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = random.Random(seed_from("shapes-sample", seed, split, index))
    two, ordinal = _is_two_shape(index, spec.two_shape_fraction)
    shapes: list[dict[str, Any]]
    objects: list[tuple[str, str, float, float, float]]
    if not two:
        combos1 = _one_shape_combos(spec)
        cycle, offset = divmod(ordinal, len(combos1))
        size, colour, shape, position = combos1[
            _cycle_order(seed_from(seed, split), "one", cycle, len(combos1))[offset]
        ]
        extent = SIZES[size] * (1 + rng.uniform(-1, 1) * _SIZE_JITTER)
        free_x, free_y = _free_axes(spec)
        ax, ay = POSITIONS[position]
        cx = ax + rng.uniform(-1, 1) * (_FREE_JITTER if free_x else _POSITION_JITTER)
        cy = ay + rng.uniform(-1, 1) * (_FREE_JITTER if free_y else _POSITION_JITTER)
        objects = [(shape, colour, cx, cy, extent)]
        shapes = [{"shape": shape, "colour": colour, "size": size, "position": position}]
        relation: str | None = None
        caption = _one_shape_caption(size, colour, shape, position)
        labels: dict[str, str | None] = {"shape": shape, "colour": colour, "position": position}
    else:
        combos2 = _two_shape_combos(spec)
        cycle, offset = divmod(ordinal, len(combos2))
        colour1, shape1, relation, colour2, shape2 = combos2[
            _cycle_order(seed_from(seed, split), "two", cycle, len(combos2))[offset]
        ]
        # Pair centre: free on the axis across the relation, a little jitter along it.
        along = 0.5 + rng.uniform(-1, 1) * _POSITION_JITTER
        across = 0.5 + rng.uniform(-1, 1) * _FREE_JITTER
        objects = []
        for sign, shape, colour in ((-1, shape1, colour1), (1, shape2, colour2)):
            main = along + sign * _PAIR_OFFSET + rng.uniform(-1, 1) * _POSITION_JITTER
            other = across + rng.uniform(-1, 1) * _PAIR_ALIGN_JITTER
            extent = _PAIR_SIZE * (1 + rng.uniform(-1, 1) * _SIZE_JITTER)
            cx, cy = (main, other) if relation == "left of" else (other, main)
            objects.append((shape, colour, cx, cy, extent))
        sides = ("left", "right") if relation == "left of" else ("top", "bottom")
        shapes = [
            {"shape": shape1, "colour": colour1, "size": "medium", "position": sides[0]},
            {"shape": shape2, "colour": colour2, "size": "medium", "position": sides[1]},
        ]
        caption = _two_shape_caption(colour1, shape1, relation, colour2, shape2)
        labels = {"shape": shape1, "colour": colour1, "position": None}
    image, boxes = _render(
        rng, seed_from("shapes-noise", seed, split, index), spec.image_size, objects
    )
    for entry, box in zip(shapes, boxes, strict=True):
        entry["bbox"] = box
    meta: dict[str, Any] = {"index": index, "shapes": shapes, "relation": relation}
    meta["labels"] = labels
    if spec.with_queries:
        query_rng = random.Random(seed_from("shapes-query", seed, split, index))
        meta.update(_question(query_rng, shapes, spec), caption=caption)
        return image, meta["answer"], meta
    return image, caption, meta


# --------------------------------------------------------------------------------- shards
def shapes_metadata(
    num_samples: int,
    samples_per_shard: int,
    seed: int,
    split: str,
    spec: ShapesSpec,
    jpeg_quality: int,
) -> dict[str, Any]:
    """The metadata that :func:`write_shapes_shards` records in ``index.json``.

    Args:
        num_samples: Number of samples.
        samples_per_shard: Maximum samples per shard.
        seed: Random seed.
        split: Split name (also the shard prefix).
        spec: Generator spec.
        jpeg_quality: JPEG quality.

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
        "jpeg_quality": jpeg_quality,
        "spec": spec.to_dict(),
        "num_captions": len(shapes_captions(spec)),
    }


def write_shapes_shards(
    out_dir: str,
    num_samples: int,
    spec: ShapesSpec = ShapesSpec(),
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    jpeg_quality: int = 95,
    progress: bool = False,
) -> str:
    """Generate the shapes data set as WebDataset shards (``jpg`` + ``txt`` + ``json``).

    Writes ``{out_dir}/{split}-000000.tar``, ... and ``{out_dir}/index.json`` (whose metadata
    records all parameters below), replacing shards of an earlier run in that folder. Use one
    folder per split, e.g. ``data/shapes/train`` and ``data/shapes/val``: the split name is
    mixed into the random streams, so validation images differ from training images even with
    the same seed (their captions repeat, as intended).

    Args:
        out_dir: Output folder, created if missing.
        num_samples: Number of samples to generate (>= 1).
        spec: What to draw (image size, attributes, share of two-shape samples, queries).
        samples_per_shard: Maximum number of samples per shard.
        seed: Random seed; the same parameters and seed give byte-identical shards.
        split: Split name; the shard name prefix and part of the random seed.
        jpeg_quality: JPEG quality of the images.
        progress: Show a progress bar.

    Returns:
        The absolute path of the output folder.

    Raises:
        ValueError: If ``num_samples`` < 1.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    metadata = shapes_metadata(num_samples, samples_per_shard, seed, split, spec, jpeg_quality)
    width = max(6, len(str(num_samples - 1)))
    with ShardWriter(
        out_dir,
        prefix=split,
        samples_per_shard=samples_per_shard,
        metadata=metadata,
        overwrite=True,
        jpeg_quality=jpeg_quality,
    ) as writer:
        indices: Any = range(num_samples)
        if progress:
            from rich.progress import track

            indices = track(indices, description=f"shapes {split}", total=num_samples)
        for index in indices:
            image, caption, meta = generate_sample(index, seed, spec, split)
            writer.write_sample(f"{split}_{index:0{width}d}", image, caption, meta)
    return str(writer.folder)


def ensure_shapes_shards(
    out_dir: str,
    num_samples: int,
    spec: ShapesSpec = ShapesSpec(),
    samples_per_shard: int = 1000,
    seed: int = 0,
    split: str = "train",
    jpeg_quality: int = 95,
    progress: bool = False,
) -> str:
    """Write the shapes shards unless ``out_dir`` already holds exactly these.

    Cheap when the data exist (reads ``index.json`` only), so a data module's
    ``prepare_data`` can call it every run. The shards are (re)written when the index is
    missing or unreadable, a listed shard is missing, or the recorded metadata differ from the
    requested parameters (including the generator version).

    Args:
        out_dir: Output folder for this split.
        num_samples: Number of samples.
        spec: What to draw.
        samples_per_shard: Maximum number of samples per shard.
        seed: Random seed.
        split: Split name (shard prefix, part of the random seed).
        jpeg_quality: JPEG quality of the images.
        progress: Show a progress bar when writing.

    Returns:
        The absolute path of the output folder.

    Raises:
        ValueError: If ``num_samples`` < 1, or ``out_dir`` holds shards of another split
            (use one folder per split) or shards that this generator did not write.
    """
    wanted = shapes_metadata(num_samples, samples_per_shard, seed, split, spec, jpeg_quality)
    if holds_generated_shards(out_dir, wanted, "shapes"):
        return str(Path(out_dir).absolute())
    started = time.perf_counter()
    result = write_shapes_shards(
        out_dir, num_samples, spec, samples_per_shard, seed, split, jpeg_quality, progress
    )
    if progress:
        print(
            f"wrote {num_samples} shapes samples ({split}) to {result} "
            f"in {time.perf_counter() - started:.1f}s"
        )
    return result
