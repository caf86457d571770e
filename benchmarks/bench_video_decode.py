"""Benchmark the clip read path: decode throughput against a bare PyAV loop; the feature cache.

Data: moving-shapes clips (``mp4``, H.264, 20 frames of 64x64 at 10 fps, as
``configs/moving_shapes_tiny.yaml`` trains on), written to a temporary folder as shards.

* **Decode throughput** (clips per second, one process, no loader workers):

  * ``bare decode``: the ``mp4`` members already in memory, each opened with PyAV and every
    frame decoded to RGB arrays: the floor of what decoding these files costs;
  * ``pipeline``: :class:`~jepa_lightning.data.pipeline.ShardStream` with the config's
    collator (evaluation codec): reading the tar shards, the centred clip of 4 frames (5 apart)
    found by seeking, resize and crop of every frame, captions tokenised, batches collated.

  ``pipeline / bare`` above 1 means the pipeline's sampling (it decodes only up to the clip's
  last frame and converts only the sampled ones) more than pays for its reading and collation.
* **Feature cache on clips** (as ``bench_feature_cache.py`` does for images): one training
  epoch of the config's model on the clip shards (decoding + the frozen X-encoder on 4 frames
  every step) against one on their feature cache (the X-encoder's tokens read back), and the
  one-off time to write the cache. The clip's frames are the centred clip in the cache (a
  cache keeps one clip per video: random clip starts are lost, see docs/VIDEO.md).

Usage::

    python benchmarks/bench_video_decode.py [--clips 512] [--epoch-clips 512] [--smoke]
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import av
import common
from bench_feature_cache import epoch
from steps import REPO, build_model, load_config

from jepa_lightning.data import WebDataModule
from jepa_lightning.data.pipeline import ShardStream, resolve_shards
from jepa_lightning.tools.feature_cache import write_feature_cache
from jepa_lightning.tools.moving_shapes import MovingShapesSpec, write_moving_shapes_shards
from jepa_lightning.trainer import resolve_precision

CONFIG = REPO / "configs" / "moving_shapes_tiny.yaml"


def mp4_members(folder: str) -> list[bytes]:
    """The ``mp4`` members of every shard in ``folder``, read into memory."""
    videos = []
    for shard in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(shard) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".mp4"):
                    file = archive.extractfile(member)
                    assert file is not None
                    videos.append(file.read())
    return videos


def bare_decode(videos: list[bytes]) -> int:
    frames = 0
    for data in videos:
        with av.open(io.BytesIO(data), mode="r") as container:
            for frame in container.decode(video=0):
                frame.to_ndarray(format="rgb24")
                frames += 1
    return frames


def pipeline_decode(stream: ShardStream) -> int:
    return sum(len(batch) for batch in stream)


def main() -> None:
    parser = common.parser(__doc__.split("\n", 1)[0], repeats=3)
    parser.add_argument("--clips", type=int, default=512, help="clips of the decode comparison")
    parser.add_argument("--epoch-clips", type=int, default=512, help="clips of the epochs")
    args = parser.parse_args()
    config = load_config(CONFIG)
    data_args = config["data"]["init_args"]
    batch_size, workers = int(data_args["batch_size"]), int(data_args["num_workers"])
    if args.smoke:
        args.clips, args.epoch_clips, args.repeats, batch_size = 16, 16, 1, 8
    common.setup(args)
    precision = str(resolve_precision(config["trainer"].get("precision"), "cpu") or "32-true")
    section = config["model"]
    spec = MovingShapesSpec(image_size=int(data_args["image_size"]))
    root = Path(tempfile.mkdtemp())
    clips = str(root / "clips")
    write_moving_shapes_shards(clips, max(args.clips, args.epoch_clips), spec, 128, split="val")

    # Decode throughput: the same files, bare PyAV loop vs the pipeline.
    videos = mp4_members(clips)[: args.clips]
    collator = build_model(section).batch_collator()
    shards = resolve_shards(clips)
    stream = ShardStream(shards, collator, batch_size, "eval")
    clip_count = sum(shard.num_samples or 0 for shard in shards)
    times = common.interleave(
        {
            "bare decode": lambda: common.timed(lambda: bare_decode(videos)),
            "pipeline": lambda: common.timed(lambda: pipeline_decode(stream)),
        },
        args.repeats,
    )
    decode = {side: common.timing_stats(ts, scale=1.0) for side, ts in times.items()}
    rate = {
        "bare decode": len(videos) / decode["bare decode"]["wall"]["median"],
        "pipeline": clip_count / decode["pipeline"]["wall"]["median"],
    }

    # Feature cache: an epoch on the clips vs on their cached tokens.
    features = str(root / "features")
    encoder = build_model(section).model.x_encoder
    cache_write = common.timed(
        lambda: write_feature_cache(
            clips, features, encoder, batch_size=batch_size, num_workers=workers,
            device="cpu", progress=False,
        )
    )  # fmt: skip

    def data(shards: str) -> WebDataModule:
        return WebDataModule(
            train_shards=shards,
            batch_size=batch_size,
            resampled=False,
            num_workers=workers,
            samples_per_epoch=args.epoch_clips,
        )

    epochs = common.interleave(
        {
            "clips": lambda: epoch(section, data(clips), precision),
            "cached": lambda: epoch(section, data(features), precision),
        },
        args.repeats,
    )
    epoch_s = {side: common.timing_stats(ts, scale=1.0) for side, ts in epochs.items()}
    speedup = epoch_s["clips"]["wall"]["median"] / epoch_s["cached"]["wall"]["median"]

    rows = [
        ["bare decode (all frames)", f"{rate['bare decode']:.1f}", "", ""],
        ["pipeline (4-frame clips)", f"{rate['pipeline']:.1f}", "", ""],
        ["epoch on clips", "", f"{epoch_s['clips']['wall']['median']:.2f}", ""],
        ["epoch on cached tokens", "", f"{epoch_s['cached']['wall']['median']:.2f}", ""],
        ["cache write (once)", "", f"{cache_write.wall_s:.2f}", f"{speedup:.2f}"],
    ]
    ratio = rate["pipeline"] / rate["bare decode"]
    headlines = [
        common.headline("clip decode: pipeline / bare PyAV loop (clips/s)", ratio),
        common.headline("feature cache on clips: epoch speed-up", speedup),
    ]
    common.write_result(
        args,
        "video_decode",
        "Clip decode throughput (pipeline vs bare PyAV) and the feature cache's epoch speed-up",
        ["what", "clips/s", "seconds", "epoch speed-up"],
        rows,
        headlines,
        {
            "clips": len(videos),
            "epoch_clips": args.epoch_clips,
            "batch_size": batch_size,
            "num_workers": workers,
            "decode_s": decode,
            "clips_per_s": rate,
            "epoch_s": epoch_s,
            "cache_write_s": cache_write.wall_s,
        },
    )


if __name__ == "__main__":
    main()
