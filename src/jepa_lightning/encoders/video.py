"""Clips for the vision X-encoder: decoding video files, frame folders and arrays, frame sampling.

A clip sample's X member is one of:

* a video file (``mp4``, ``webm``, ``avi``), decoded with PyAV (``pip install
  jepa-lightning[video]``), which bundles FFmpeg: no system libraries, CPU only;
* a ``.npy`` array ``(frames, height, width, 3)`` of ``uint8`` RGB (generated data);
* a ``frames.tar`` member: an uncompressed tar of one image per frame, in name order (a folder
  of frames, as ``jepa-lightning data convert`` packs it);
* an image (``jpg``, ``png``...): a one-frame clip, so image-caption data trains the same model
  (the first stage of VL-JEPA's training).

**Frame sampling.** ``num_frames`` frames are taken ``step`` source frames apart, where ``step``
is ``frame_stride``, or ``source fps / fps`` when a target ``fps`` is set (video files only:
arrays and frame folders have no frame rate). The clip spans ``(num_frames - 1) * step + 1``
source frames. In training (:meth:`VideoCodec.for_training`) its first frame is drawn uniformly
from every start that fits (the loader worker's ``torch`` generator, which Lightning seeds); in
evaluation the clip is the centred one, so validation is deterministic.

**Short clips.** A source shorter than the span is read from its first frame; sampled positions
past its last frame repeat the last frame (``short_clips="pad"``, the default: the clip ends on
a still) or wrap around to its start (``"loop"``). A batch mixing one-frame clips (images) with
longer clips pads the shorter ones by repeating their last frame.

**Resize and crop.** Every frame of a clip is resized (shorter side to ``image_size``) and
centre-cropped exactly as :class:`~jepa_lightning.encoders.vision.ImageCodec` does an image, so
all frames share one crop.

**Corrupt data.** An unreadable file, a file without a video stream or frames, and a video whose
container states more frames (or, without a frame count, a longer duration: more than one frame
more) than its data hold (a truncated file) raise an error, which the data pipeline turns into a
skipped, counted sample.
"""

from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from jepa_lightning.encoders.vision import IMAGE_EXTENSIONS, ImageCodec

__all__ = [
    "CLIP_EXTENSIONS",
    "FRAMES_FIELD",
    "VIDEO_EXTENSIONS",
    "ShortClipRule",
    "VideoCodec",
    "encode_video",
    "probe_video",
    "sample_frame_indices",
]

VIDEO_EXTENSIONS: tuple[str, ...] = ("mp4", "webm", "avi")
"""Video container formats read (as WebDataset fields)."""

FRAMES_FIELD = "frames.tar"
"""WebDataset field of a folder of frames packed as an uncompressed tar (one image per frame)."""

CLIP_EXTENSIONS: tuple[str, ...] = (*VIDEO_EXTENSIONS, "npy", FRAMES_FIELD)
"""Every clip format read, videos first."""

ShortClipRule = Literal["pad", "loop"]
"""How positions past the end of a short source are filled: repeat its last frame, or wrap."""

_NPY_MAGIC = b"\x93NUMPY"


def _require_av() -> Any:
    try:
        import av
    except ImportError as error:
        raise ImportError(
            "decoding video files needs PyAV: pip install 'jepa-lightning[video]'"
        ) from error
    return av


def encode_video(
    frames: Sequence[Image.Image], fps: int, container: str = "mp4", crf: int = 18
) -> bytes:
    """Encodes RGB frames as a video file (H.264 in ``mp4``, VP9 in ``webm``, MPEG-4 in ``avi``).

    Args:
        frames: Frames of one size (even sides: the encoders subsample colour 2x2).
        fps: Frame rate.
        container: ``"mp4"``, ``"webm"`` or ``"avi"``.
        crf: Constant-rate quality of H.264 and VP9 (lower: better, larger).

    Returns:
        The file's bytes.

    Raises:
        ValueError: If there are no frames or the container is unknown.
    """
    codecs = {"mp4": "libx264", "webm": "libvpx-vp9", "avi": "mpeg4"}
    if not frames or container not in codecs:
        raise ValueError(f"need frames and a container of {list(codecs)}; got {container!r}")
    av = _require_av()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codecs[container], rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's automatic frame threads make the bytes differ from run to
        # run; data sets are written in parallel across clips instead.
        stream.codec_context.thread_count = 1
        speed = {"mp4": {"preset": "veryfast"}, "webm": {"deadline": "realtime", "b": "0"}}
        if container in speed:  # fast presets: data sets of thousands of short clips
            stream.options = {"crf": str(crf), **speed[container]}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_image(image.convert("RGB"))
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return buffer.getvalue()


def sample_frame_indices(
    length: int,
    num_frames: int,
    step: float = 1.0,
    train: bool = False,
    short_clips: ShortClipRule = "pad",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Source frame indices of one clip (see the module docstring for the rules).

    Args:
        length: Frames in the source (>= 1).
        num_frames: Frames in the clip (>= 1).
        step: Source frames between two clip frames (> 0; rounded per frame when fractional).
        train: Draw the start uniformly; else take the centred clip.
        short_clips: The rule for a source shorter than the clip's span.
        generator: Random generator of the training start; default ``torch``'s global one.

    Returns:
        ``num_frames`` indices in ``[0, length)``, non-decreasing (except where ``"loop"``
        wraps).

    Raises:
        ValueError: On a non-positive ``length``, ``num_frames`` or ``step``, or an unknown rule.
    """
    if length < 1 or num_frames < 1 or step <= 0:
        raise ValueError(
            f"need length >= 1, num_frames >= 1 and step > 0; got {length}, {num_frames}, {step}"
        )
    if short_clips not in ("pad", "loop"):
        raise ValueError(f"short_clips must be 'pad' or 'loop', got {short_clips!r}")
    offsets = [round(i * step) for i in range(num_frames)]
    room = length - (offsets[-1] + 1)  # how far the clip can move and still fit
    if room >= 0:
        start = int(torch.randint(room + 1, (), generator=generator)) if train else room // 2
        return [start + offset for offset in offsets]
    if short_clips == "pad":
        return [min(offset, length - 1) for offset in offsets]
    return [offset % length for offset in offsets]


@dataclass(frozen=True)
class VideoCodec:
    """Decodes a clip (video file, ``.npy``, frame folder, or image) into ``uint8`` frames.

    Args:
        image_size: Side of the square frames.
        num_frames: Frames per clip.
        frame_stride: Source frames between two clip frames (when ``fps`` is None).
        fps: Target frame rate; the stride is then ``source fps / fps`` (video files only).
        short_clips: ``"pad"`` (repeat the last frame) or ``"loop"`` (wrap around) for sources
            shorter than the clip.
        train: Random clip start (training) instead of the centred clip (evaluation); see
            :meth:`for_training`.
        extensions: WebDataset fields read, in order of preference.

    Raises:
        ValueError: On a non-positive ``num_frames``, ``frame_stride`` or ``fps``, or an unknown
            ``short_clips`` rule.
    """

    image_size: int
    num_frames: int
    frame_stride: int = 1
    fps: float | None = None
    short_clips: ShortClipRule = "pad"
    train: bool = False
    extensions: tuple[str, ...] = (*CLIP_EXTENSIONS, *IMAGE_EXTENSIONS)

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ValueError(
                f"num_frames and frame_stride must be >= 1, got {self.num_frames}, "
                f"{self.frame_stride}"
            )
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.short_clips not in ("pad", "loop"):
            raise ValueError(f"short_clips must be 'pad' or 'loop', got {self.short_clips!r}")

    def for_training(self) -> VideoCodec:
        """The same codec with random clip starts: what the training loader uses.

        Returns:
            A copy with ``train=True``.
        """
        return replace(self, train=True)

    def _indices(self, length: int, step: float) -> list[int]:
        return sample_frame_indices(length, self.num_frames, step, self.train, self.short_clips)

    def _fixed_step(self, source: str) -> float:
        if self.fps is not None:
            raise ValueError(f"a {source} has no frame rate to sample at fps={self.fps}")
        return float(self.frame_stride)

    def decode(self, data: bytes) -> Tensor:
        """Decodes and samples one clip; the format is recognised from the bytes.

        Args:
            data: The bytes of a video file, ``.npy`` array, ``frames.tar`` or image.

        Returns:
            ``(num_frames, 3, image_size, image_size)`` ``uint8`` frames, or
            ``(1, 3, image_size, image_size)`` for an image.

        Raises:
            ValueError: If the data are no readable clip, or a truncated video.
        """
        if data.startswith(_NPY_MAGIC):
            frames = self._from_array(data)
        elif data[257:262] == b"ustar":
            frames = self._from_frame_folder(data)
        else:
            try:
                image = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                frames = self._from_video(data)
            else:
                with image:
                    frames = [image.copy()]
        fit = ImageCodec(self.image_size).transform
        return torch.stack([fit(frame) for frame in frames])

    def _from_array(self, data: bytes) -> list[Image.Image]:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or not len(array):
            raise ValueError(
                f"a .npy clip must be uint8 (frames, height, width, 3), got {array.dtype} "
                f"{array.shape}"
            )
        indices = self._indices(len(array), self._fixed_step("a .npy clip"))
        return [Image.fromarray(array[i]) for i in indices]

    def _from_frame_folder(self, data: bytes) -> list[Image.Image]:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            members = sorted(
                (m for m in archive.getmembers() if m.isfile() and _is_image_name(m.name)),
                key=lambda m: m.name,
            )
            if not members:
                raise ValueError("a frames.tar holds no image frames")
            indices = self._indices(len(members), self._fixed_step("folder of frames"))
            frames = []
            for i in indices:
                file = archive.extractfile(members[i])
                assert file is not None  # isfile() members always extract
                with Image.open(io.BytesIO(file.read())) as frame:
                    frame.load()
                    frames.append(frame.copy())
            return frames

    def _from_video(self, data: bytes) -> list[Image.Image]:
        av = _require_av()
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if self.fps is not None and not rate:
                raise ValueError(f"the video states no frame rate to sample at fps={self.fps}")
            step = float(rate) / self.fps if self.fps is not None else float(self.frame_stride)
            if stream.frames > 0:  # the container knows the length: decode only the clip
                return self._seek_and_decode(container, stream, float(rate or 0), step)
            frames = list(container.decode(stream))
            _check_complete(container, stream, len(frames))
            return [frames[i].to_image() for i in self._indices(len(frames), step)]

    def _seek_and_decode(
        self, container: Any, stream: Any, rate: float, step: float
    ) -> list[Image.Image]:
        """Decodes the clip's frames of a video whose frame count the container states."""
        indices = self._indices(stream.frames, step)
        wanted = set(indices)
        start_pts = stream.start_time or 0
        first = min(indices)
        if first > 0 and rate > 0 and stream.time_base:
            # Seek to the keyframe at or before the first wanted frame.
            offset = math.floor(first / rate / float(stream.time_base))
            container.seek(start_pts + offset, stream=stream, backward=True)
        found: dict[int, Image.Image] = {}
        position = None  # index of the last decoded frame, when timestamps are missing
        for frame in container.decode(stream):
            if frame.pts is not None and rate > 0 and stream.time_base:
                position = round(float((frame.pts - start_pts) * stream.time_base) * rate)
            else:
                position = 0 if position is None else position + 1
            if position in wanted:
                found[position] = frame.to_image()
            if position >= max(indices):
                break
        if len(found) < len(wanted):
            raise ValueError(
                f"truncated video: the container states {stream.frames} frames, the data end "
                f"before frame {min(wanted - found.keys())}"
            )
        return [found[i] for i in indices]

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        """Stacks clips into ``(B, T, 3, image_size, image_size)``.

        Clips shorter than the longest of the batch (images among clips) are padded by
        repeating their last frame.

        Args:
            items: Decoded clips.

        Returns:
            The batch.
        """
        frames = max(item.shape[0] for item in items)
        return torch.stack([_pad_frames(item, frames) for item in items])


def probe_video(data: bytes) -> int:
    """Decodes every frame of a video file, as a check that it is whole.

    Args:
        data: The file's bytes.

    Returns:
        The number of frames.

    Raises:
        ValueError: If the file is unreadable, has no video stream or frames, or holds fewer
            frames than its container states (truncated).
    """
    av = _require_av()
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        _check_complete(container, stream, count)
    return count


def _check_complete(container: Any, stream: Any, count: int) -> None:
    """Raises if ``count`` decoded frames are fewer than the container states (a cut file)."""
    if count == 0:
        raise ValueError("the video has no frames")
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.frames > 0:
        stated, what = stream.frames, "frame count"
    else:  # no frame count (webm): the stated duration, within a frame
        stated = round(container.duration / 1e6 * rate) - 1 if container.duration else 0
        what = "duration"
    if count < stated:
        raise ValueError(
            f"truncated video: its {what} states {stated} frames, the data hold {count}"
        )


def _pad_frames(clip: Tensor, frames: int) -> Tensor:
    """``clip`` with its last frame repeated up to ``frames`` frames."""
    missing = frames - clip.shape[0]
    return torch.cat([clip, clip[-1:].expand(missing, -1, -1, -1)]) if missing else clip


def _is_image_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
