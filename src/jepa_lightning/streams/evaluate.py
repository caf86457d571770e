"""Caption quality over time against the number of decodes: selective vs uniform decoding.

``jepa-lightning decode-streams MODEL OUTPUT`` generates shape streams
(:mod:`jepa_lightning.tools.shape_streams`: scenes of moving shapes that cut to another
caption at random times), embeds every frame (or window of frames) with the model as ``ŝ``
(the image model applied per frame), and decodes each stream three ways at many budgets:

* ``uniform``: equal segments, a fixed decoding rate whatever happens;
* ``cluster``: the paper's temporally constrained agglomerative clustering
  (:func:`~jepa_lightning.streams.segment.cluster_segments`) into as many segments;
* ``change``: the online cosine change detector
  (:func:`~jepa_lightning.streams.segment.detect_changes`) at a sweep of thresholds (its
  number of decodes follows from the stream).

Every segment is decoded once, from its mean embedding; the caption in force at a frame is its
segment's. Quality is :class:`~jepa_lightning.metrics.captions.CaptionQuality` (ROUGE-L and
exact match) over every frame of every stream, against the frame's true caption. ``truth``
decodes the true scenes (the decoder's ceiling). The command writes ``decode_streams.json``,
``quality_vs_decodes.png`` and TensorBoard events (the curves as scalars, step = decodes per
stream, and the plot as an image), and prints a table and, for each selective method, how many
times fewer decodes than uniform decoding it needs to reach uniform decoding's quality.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_utilities.core.imports import RequirementCache
from PIL import Image
from torch import Tensor

from jepa_lightning.inference import PretrainedVLJEPA, load_model
from jepa_lightning.metrics.captions import CaptionQuality
from jepa_lightning.streams.segment import (
    cluster_segments,
    detect_changes,
    segment_bounds,
    segment_means,
    uniform_segments,
)
from jepa_lightning.tools.shape_streams import ShapeStreamSpec, generate_stream

DEFAULT_BUDGETS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
DEFAULT_THRESHOLDS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)
SELECTIVE = ("cluster", "change")

Point = dict[str, float]


def window_embeddings(frames: Tensor, window: int) -> Tensor:
    """The mean of each run of ``window`` frame embeddings (the last run may be shorter).

    Args:
        frames: ``(T, D)`` frame embeddings.
        window: Frames per window (1: the frames themselves).

    Returns:
        ``(ceil(T / window), D)`` embeddings.

    Raises:
        ValueError: If ``window`` is below 1.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    starts = list(range(0, len(frames), window))
    return segment_means(frames, starts) if window > 1 else frames


def captions_in_force(starts: list[int], texts: Sequence[str], length: int) -> list[str]:
    """The caption in force at every instant: its segment's.

    Args:
        starts: The segmentation.
        texts: One caption per segment.
        length: Length of the stream.

    Returns:
        ``length`` captions.
    """
    timeline: list[str] = []
    for (start, end), text in zip(segment_bounds(starts, length), texts, strict=True):
        timeline += [text] * (end - start)
    return timeline


def decodes_needed(points: Sequence[Point], quality: float, key: str = "rougeL") -> float | None:
    """Decodes a method needs to reach ``quality``: linear between its measured budgets.

    The curve is made monotone first (the best quality at this many decodes or fewer).

    Args:
        points: The method's points (``decodes`` and ``key``).
        quality: The quality to reach.
        key: The quality measure.

    Returns:
        The decodes, or None if no budget reaches ``quality``; its smallest budget when that
        already does (a bound: fewer might do).
    """
    ordered = sorted(points, key=lambda point: point["decodes"])
    best = -np.inf
    previous: tuple[float, float] | None = None
    for point in ordered:
        best = max(best, point[key])
        if best >= quality:
            if previous is None or previous[1] >= quality:
                return point["decodes"]
            (low_d, low_q), high_d = previous, point["decodes"]
            return low_d + (quality - low_q) / (best - low_q) * (high_d - low_d)
        previous = (point["decodes"], best)
    return None


def savings(
    uniform: Sequence[Point], selective: Sequence[Point], key: str = "rougeL"
) -> list[Point]:
    """At each uniform budget, how many times fewer decodes the selective method needs.

    Args:
        uniform: Uniform decoding's points.
        selective: The selective method's points.
        key: The quality measure.

    Returns:
        Per uniform point: its ``decodes`` and quality, the selective ``decodes_needed`` and
        their ``ratio`` (uniform / selective; absent where the selective method never
        reaches that quality), and ``lower_bound`` (1.0 where the selective method's fewest
        measured decodes already do better: fewer might do, so the ratio is at least this).
    """
    fewest = min(point["decodes"] for point in selective)
    rows = []
    for point in sorted(uniform, key=lambda p: p["decodes"]):
        needed = decodes_needed(selective, point[key], key)
        row = {"decodes": point["decodes"], key: point[key]}
        if needed is not None:
            row.update(decodes_needed=needed, ratio=point["decodes"] / needed)
            row["lower_bound"] = float(needed == fewest)
        rows.append(row)
    return rows


def _uniform(stream: Tensor, num_segments: int) -> list[int]:
    return uniform_segments(len(stream), num_segments)


def _score(timelines: list[tuple[list[str], list[str]]]) -> dict[str, float]:
    quality = CaptionQuality()
    for predicted, truth in timelines:
        quality.update(predicted, truth)
    return {key: float(value) for key, value in quality.compute().items()}


def _plot(curves: dict[str, list[Point]], ceiling: float, path: Path) -> np.ndarray:
    """Draws ROUGE-L against decodes per stream; writes the PNG and returns its pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "uniform": "uniform decoding",
        "cluster": "selective: agglomerative clustering",
        "change": "selective: change detection",
    }
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, points in curves.items():
        ordered = sorted(points, key=lambda p: p["decodes"])
        axes.plot(
            [p["decodes"] for p in ordered],
            [p["rougeL"] for p in ordered],
            marker="o",
            markersize=3,
            label=labels[method],
        )
    axes.axhline(ceiling, linestyle=":", color="grey", label="true scenes (decoder ceiling)")
    axes.set_xscale("log")
    axes.set_xlabel("decodes per stream")
    axes.set_ylabel("ROUGE-L of the caption in force (mean over frames)")
    axes.set_title("caption quality over time vs decodes")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _write_tensorboard(folder: Path, curves: dict[str, list[Point]], pixels: np.ndarray) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for method, points in curves.items():
        for point in sorted(points, key=lambda p: p["decodes"]):
            step = int(round(point["decodes"]))
            for key in ("rougeL", "exact_match"):
                writer.add_scalar(f"decode_streams/{method}/{key}", point[key], global_step=step)
    writer.add_image("decode_streams/quality_vs_decodes", pixels, dataformats="HWC")
    writer.close()


def evaluate_streams(
    network: PretrainedVLJEPA,
    spec: ShapeStreamSpec,
    num_streams: int,
    budgets: Sequence[int],
    thresholds: Sequence[float],
    patience: int = 3,
    window: int = 1,
    seed: int = 0,
    num_beams: int = 1,
) -> dict[str, Any]:
    """Decodes generated streams each way at each budget and scores the captions over time.

    Args:
        network: The model, with a Y-decoder.
        spec: The streams.
        num_streams: How many streams.
        budgets: Decodes per stream of ``uniform`` and ``cluster``.
        thresholds: Cosine-distance thresholds of ``change``.
        patience: Consecutive far embeddings that make a change.
        window: Frames per embedding (their mean ``ŝ``).
        seed: Seed of the streams.
        num_beams: Beams of the decoder.

    Returns:
        ``curves`` (per method, points with mean ``decodes`` per stream, ``rougeL`` and
        ``exact_match``), ``truth`` (the true scenes decoded) and ``scenes`` (mean per stream).

    Raises:
        ValueError: If a budget exceeds the embeddings per stream.
    """
    length = -(-spec.num_frames // window)
    if any(not 1 <= budget <= length for budget in budgets):
        raise ValueError(f"budgets must be in [1, {length}] (embeddings per stream), got {budgets}")
    methods: dict[str, list[tuple[float, Callable[[Tensor], list[int]]]]] = {
        "uniform": [(b, partial(_uniform, num_segments=b)) for b in budgets],
        "cluster": [(b, partial(cluster_segments, num_segments=b)) for b in budgets],
        "change": [
            (t, partial(detect_changes, threshold=t, patience=patience)) for t in thresholds
        ],
    }
    timelines: dict[tuple[str, float], list[tuple[list[str], list[str]]]] = {}
    decodes: dict[tuple[str, float], list[int]] = {}
    truth_timelines, scene_counts = [], []
    for index in range(num_streams):
        stream = generate_stream(index, seed, spec)
        frames = network.encode_images(stream.frames)
        embeddings = window_embeddings(frames, window)
        plans = {"truth": stream.scene_starts}
        for method, settings in methods.items():
            for setting, segment in settings:
                plans[f"{method}:{setting}"] = [start * window for start in segment(embeddings)]
        # Every segment of every plan in one decode call (batched).
        means = {name: segment_means(frames, starts) for name, starts in plans.items()}
        texts = network.decode(torch.cat(list(means.values())), num_beams=num_beams)
        offset = 0
        for name, starts in plans.items():
            timeline = captions_in_force(starts, texts[offset : offset + len(starts)], len(frames))
            offset += len(starts)
            if name == "truth":
                truth_timelines.append((timeline, stream.captions))
                scene_counts.append(len(starts))
                continue
            method, value = name.split(":")
            key = (method, float(value))
            timelines.setdefault(key, []).append((timeline, stream.captions))
            decodes.setdefault(key, []).append(len(starts))
    curves: dict[str, list[Point]] = {method: [] for method in methods}
    for (method, setting), pairs in timelines.items():
        point = {"setting": setting, "decodes": float(np.mean(decodes[(method, setting)]))}
        curves[method].append({**point, **_score(pairs)})
    return {
        "curves": curves,
        "truth": {"decodes": float(np.mean(scene_counts)), **_score(truth_timelines)},
        "scenes": float(np.mean(scene_counts)),
    }


def decode_streams(
    model: str,
    output: str = "decode_streams",
    num_streams: int = 20,
    num_frames: int = 600,
    min_scene: int = 20,
    max_scene: int = 120,
    budgets: list[int] | None = None,
    thresholds: list[float] | None = None,
    patience: int = 3,
    window: int = 1,
    seed: int = 0,
    num_beams: int = 1,
    batch_size: int = 64,
    device: str = "cpu",
    quiet: bool = False,
) -> dict[str, Any]:
    """Selective vs uniform decoding of generated shape streams: JSON, plot, TensorBoard.

    Args:
        model: An export folder with a Y-decoder (``jepa-lightning export-decoder``), or a hub
            id of one. Its images must be shapes-sized (the streams' frames are drawn at
            the X-encoder's image size).
        output: Folder for ``decode_streams.json``, ``quality_vs_decodes.png`` and
            ``tensorboard/``.
        num_streams: Streams to generate.
        num_frames: Frames per stream.
        min_scene: Shortest scene, in frames.
        max_scene: Longest scene, in frames.
        budgets: Decodes per stream of uniform decoding and of clustering; default
            2, 3, 4, 6, ... 128.
        thresholds: Cosine-distance thresholds of the change detector; default 0.02 ... 0.6.
        patience: Consecutive far embeddings that make a change.
        window: Frames per embedding (mean ``ŝ`` of the window; 1: every frame).
        seed: Seed of the streams.
        num_beams: Beams of the decoder (1: greedy).
        batch_size: Images (and embeddings) per forward pass.
        device: Where to run the model.
        quiet: Do not print the tables.

    Returns:
        What ``decode_streams.json`` holds: the settings, the curves, the true-scene ceiling,
        and per selective method the ``savings`` at each uniform budget.

    Raises:
        ValueError: If the model has no Y-decoder or a budget is out of range.
        ModuleNotFoundError: If matplotlib (the ``plot`` extra) is missing.
    """
    if not RequirementCache("matplotlib"):
        raise ModuleNotFoundError(
            "decode-streams draws its plot with matplotlib: pip install 'jepa-lightning[plot]'"
        )
    started = time.perf_counter()
    network = load_model(model, device=device, batch_size=batch_size)
    network._decoder()
    from jepa_lightning.tools.shapes import ShapesSpec

    shapes = ShapesSpec(image_size=network.image_size)
    spec = ShapeStreamSpec(num_frames, min_scene, max_scene, shapes)
    budgets = list(budgets or DEFAULT_BUDGETS)
    thresholds = list(thresholds or DEFAULT_THRESHOLDS)
    settings = {
        "model": model,
        "num_streams": num_streams,
        "num_frames": num_frames,
        "min_scene": min_scene,
        "max_scene": max_scene,
        "budgets": budgets,
        "thresholds": thresholds,
        "patience": patience,
        "window": window,
        "seed": seed,
        "num_beams": num_beams,
    }
    result = evaluate_streams(
        network,
        spec,
        num_streams,
        budgets,
        thresholds,
        patience,
        window,
        seed,
        num_beams,
    )
    curves = result["curves"]
    result["savings"] = {method: savings(curves["uniform"], curves[method]) for method in SELECTIVE}
    result = {"settings": settings, **result, "seconds": time.perf_counter() - started}
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decode_streams.json").write_text(json.dumps(result, indent=2) + "\n")
    pixels = _plot(curves, result["truth"]["rougeL"], folder / "quality_vs_decodes.png")
    _write_tensorboard(folder / "tensorboard", curves, pixels)
    if not quiet:
        _print_tables(result, folder)
    return result


def ratio_text(row: Point) -> str:
    """A :func:`savings` row's ratio as printed: ``>=`` where it is a lower bound, ``-`` where none.

    Args:
        row: The row.

    Returns:
        The text.
    """
    if "ratio" not in row:
        return "-"
    return f"{'>=' if row['lower_bound'] else ''}{row['ratio']:.2f}"


def _print_tables(result: dict[str, Any], folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for method, points in result["curves"].items():
        table = Table("setting", "decodes/stream", "ROUGE-L", "exact match", title=method)
        for point in sorted(points, key=lambda p: p["decodes"]):
            table.add_row(
                f"{point['setting']:g}",
                f"{point['decodes']:.1f}",
                f"{point['rougeL']:.3f}",
                f"{point['exact_match']:.3f}",
            )
        console.print(table)
    truth = result["truth"]
    console.print(
        f"true scenes ({truth['decodes']:.1f} per stream): ROUGE-L {truth['rougeL']:.3f}, "
        f"exact match {truth['exact_match']:.3f}"
    )
    table = Table("uniform decodes", "uniform ROUGE-L", *(f"{m}: x fewer" for m in SELECTIVE))
    rows = zip(*(result["savings"][m] for m in SELECTIVE), strict=True)
    for row in rows:
        ratios = [ratio_text(r) for r in row]
        table.add_row(f"{row[0]['decodes']:.0f}", f"{row[0]['rougeL']:.3f}", *ratios)
    table.title = "decodes that selective decoding saves at uniform decoding's quality"
    console.print(table)
    console.print(f"results: {folder}")
