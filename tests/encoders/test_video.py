"""The clip codec: frame sampling rules, the formats it reads, corrupt and truncated videos."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_lightning.encoders.video import VideoCodec, encode_video, sample_frame_indices

SIDE = 32


def numbered_frames(count: int, side: int = SIDE) -> list[Image.Image]:
    """Frame ``i`` is a flat grey of level ``10 * i``: decoded frames tell their source index."""
    return [Image.new("RGB", (side, side), (10 * i,) * 3) for i in range(count)]


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """The source index of each decoded frame (lossy codecs: to the nearest level)."""
    return [round(float(frame.float().mean()) / 10) for frame in clip]


def npy_clip(count: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.stack([np.asarray(f) for f in numbered_frames(count)]))
    return buffer.getvalue()


def frames_tar(count: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for i, frame in enumerate(numbered_frames(count)):
            png = io.BytesIO()
            frame.save(png, format="PNG")
            info = tarfile.TarInfo(f"frame_{i:03d}.png")
            info.size = len(png.getvalue())
            archive.addfile(info, io.BytesIO(png.getvalue()))
    return buffer.getvalue()


def brute_force_indices(length: int, num_frames: int, step: float, start: int, rule: str):
    out = []
    for i in range(num_frames):
        index = start + round(i * step)
        if index >= length:
            index = length - 1 if rule == "pad" else index % length
        out.append(index)
    return out


@pytest.mark.parametrize("length", [1, 3, 8, 20])
@pytest.mark.parametrize("num_frames", [1, 4])
@pytest.mark.parametrize("step", [1.0, 2.0, 2.5])
def test_eval_sampling_is_the_centred_clip(length: int, num_frames: int, step: float) -> None:
    span = round((num_frames - 1) * step) + 1
    for rule in ("pad", "loop"):
        indices = sample_frame_indices(length, num_frames, step, short_clips=rule)
        start = (length - span) // 2 if length >= span else 0
        assert indices == brute_force_indices(length, num_frames, step, start, rule)
        assert indices == sample_frame_indices(length, num_frames, step, short_clips=rule)


def test_train_sampling_draws_every_start_that_fits() -> None:
    generator = torch.Generator().manual_seed(0)
    starts = Counter(
        sample_frame_indices(20, 4, 5.0, train=True, generator=generator)[0] for _ in range(500)
    )
    assert sorted(starts) == [0, 1, 2, 3, 4]  # span 16 in 20 frames: starts 0..4, all drawn
    assert min(starts.values()) > 60  # roughly uniform (100 each expected)
    for _ in range(5):
        clip = sample_frame_indices(20, 4, 5.0, train=True, generator=generator)
        assert clip == [clip[0] + 5 * i for i in range(4)]


def test_short_clip_rules() -> None:
    # 5 source frames, 4 clip frames 2 apart (span 7): read from the first frame.
    assert sample_frame_indices(5, 4, 2.0, short_clips="pad") == [0, 2, 4, 4]
    assert sample_frame_indices(5, 4, 2.0, short_clips="loop") == [0, 2, 4, 1]
    assert sample_frame_indices(1, 3, train=True) == [0, 0, 0]
    with pytest.raises(ValueError, match="short_clips"):
        sample_frame_indices(5, 4, short_clips="mirror")  # type: ignore[arg-type]


@pytest.mark.parametrize("container", ["mp4", "webm", "avi"])
def test_video_files_decode_the_sampled_frames(container: str) -> None:
    data = encode_video(numbered_frames(20), fps=10, container=container)
    codec = VideoCodec(SIDE, num_frames=4, frame_stride=5)
    clip = codec.decode(data)
    assert clip.shape == (4, 3, SIDE, SIDE) and clip.dtype == torch.uint8
    assert frame_numbers(clip) == [2, 7, 12, 17]  # the centred clip: start (20 - 16) // 2
    assert torch.equal(codec.decode(data), clip)  # evaluation is deterministic
    # At 2 fps from a 10 fps video: every 5th frame, as the stride above.
    assert frame_numbers(VideoCodec(SIDE, 4, fps=2.0).decode(data)) == [2, 7, 12, 17]


def test_training_codec_draws_clip_starts() -> None:
    data = encode_video(numbered_frames(20), fps=10)
    codec = VideoCodec(SIDE, num_frames=4, frame_stride=5).for_training()
    torch.manual_seed(0)
    starts = {frame_numbers(codec.decode(data))[0] for _ in range(30)}
    assert starts == {0, 1, 2, 3, 4}


def test_arrays_frame_folders_and_images_are_clips() -> None:
    codec = VideoCodec(SIDE, num_frames=3, frame_stride=2)
    assert frame_numbers(codec.decode(npy_clip(9))) == [2, 4, 6]
    assert frame_numbers(codec.decode(frames_tar(9))) == [2, 4, 6]
    assert frame_numbers(codec.decode(npy_clip(4))) == [0, 2, 3]  # short: last frame repeated
    png = io.BytesIO()
    numbered_frames(4)[3].save(png, format="PNG")
    image = codec.decode(png.getvalue())
    assert image.shape == (1, 3, SIDE, SIDE) and frame_numbers(image) == [3]
    with pytest.raises(ValueError, match="no frame rate"):
        VideoCodec(SIDE, 3, fps=5.0).decode(npy_clip(9))


def test_every_frame_gets_the_same_resize_and_crop() -> None:
    wide = [Image.new("RGB", (64, 32), (0, 0, 0)) for _ in range(3)]
    for i, frame in enumerate(wide):
        frame.paste((255, 255, 255), (16 + i, 0, 48 + i, 32))  # a bar drifting right
    clip = VideoCodec(16, num_frames=3).decode(encode_video(wide, fps=10, container="avi"))
    assert clip.shape == (3, 3, 16, 16)
    # Centre crop of each 64x32 frame: the bar fills it, whichever frame (same crop box).
    assert all(float(frame.float().mean()) > 200 for frame in clip)


def test_batch_pads_images_among_clips() -> None:
    codec = VideoCodec(SIDE, num_frames=3)
    clip = codec.decode(npy_clip(3))
    image = clip[1:2]
    batch = codec.collate([clip, image])
    assert batch.shape == (2, 3, 3, SIDE, SIDE)
    assert torch.equal(batch[0], clip) and all(torch.equal(f, image[0]) for f in batch[1])
    assert codec.collate([image, image]).shape == (2, 1, 3, SIDE, SIDE)  # images stay cheap


def test_corrupt_and_truncated_videos_raise() -> None:
    codec = VideoCodec(SIDE, num_frames=4, frame_stride=5)
    mp4 = encode_video(numbered_frames(20), fps=10)
    with pytest.raises(Exception):  # noqa: B017 - FFmpeg's error types
        codec.decode(b"\x00\x01 not a video" * 50)
    with pytest.raises(Exception):  # noqa: B017
        codec.decode(mp4[: len(mp4) // 2])  # mp4's index (moov) is at the end
    for container in ("avi", "webm"):  # FFmpeg's InvalidDataError is a ValueError
        data = encode_video(numbered_frames(20), fps=10, container=container)
        with pytest.raises(ValueError):
            codec.decode(data[: len(data) // 2])
    # A cut avi of noisy frames still opens: its stated frame count tells it.
    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), np.uint8)) for _ in range(20)]
    avi = encode_video(noisy, fps=10, container="avi")
    with pytest.raises(ValueError, match="truncated video: the container states 20 frames"):
        codec.decode(avi[: len(avi) // 2])
    # A cut webm still opens and decodes what is left: its stated duration tells it.
    webm = encode_video(numbered_frames(20), fps=10, container="webm")
    with pytest.raises(ValueError, match="truncated video: its duration states 19 frames"):
        codec.decode(webm[: len(webm) // 2])
