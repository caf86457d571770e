"""The converter on a folder of videos and frame folders with captions."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds
from PIL import Image

from jepa_lightning.encoders.video import VideoCodec, encode_video
from jepa_lightning.tools.convert import convert_folder


def frames(count: int, level: int) -> list[Image.Image]:
    return [Image.new("RGB", (16, 16), (level + i, 0, 0)) for i in range(count)]


def clip_folder(root: Path) -> Path:
    root.mkdir()
    for name, container in (("walk", "mp4"), ("run", "webm"), ("jump", "avi")):
        (root / f"{name}.{container}").write_bytes(encode_video(frames(8, 40), 10, container))
        (root / f"{name}.txt").write_text(f"someone {name}s")
    (root / "run.json").write_text(json.dumps({"labels": {"speed": "fast"}}))
    frame_folder = root / "wave"
    frame_folder.mkdir()
    for i, frame in enumerate(frames(12, 100)):  # natural order: frame_2 before frame_10
        frame.save(frame_folder / f"frame_{i}.png")
    (root / "wave.txt").write_text("someone waves")
    webm = encode_video(frames(20, 0), 10, "webm")
    (root / "cut.webm").write_bytes(webm[: len(webm) // 2])
    (root / "cut.txt").write_text("a cut video")
    (root / "broken.mp4").write_bytes(b"no video here" * 10)
    (root / "broken.txt").write_text("a broken video")
    (root / "silent.mp4").write_bytes(encode_video(frames(4, 0), 10))  # no caption
    return root


def read_samples(folder: str) -> dict[str, dict]:
    dataset = wds.WebDataset(f"{folder}/train-000000.tar", shardshuffle=False)
    return {sample["__key__"]: sample for sample in dataset}


def test_videos_and_frame_folders_become_clip_samples(tmp_path: Path) -> None:
    report = convert_folder(str(clip_folder(tmp_path / "clips")), progress=False)
    assert report.written == 4
    assert sorted(report.skipped_files) == [
        ("corrupt_video", "broken.mp4"),
        ("corrupt_video", "cut.webm"),
        ("missing_caption", "silent.mp4"),
    ]
    samples = read_samples(report.output)
    assert {key: sorted(k for k in s if not k.startswith("__")) for key, s in samples.items()} == {
        "jump": ["avi", "json", "txt"],
        "run": ["json", "txt", "webm"],
        "walk": ["json", "mp4", "txt"],
        "wave": ["frames.tar", "json", "txt"],
    }
    assert json.loads(samples["run"]["json"]) == {"labels": {"speed": "fast"}, "source": "run.webm"}
    codec = VideoCodec(16, num_frames=12)
    wave = codec.decode(samples["wave"]["frames.tar"])
    assert [int(frame[0, 0, 0]) for frame in wave] == list(range(100, 112))
    assert codec.decode(samples["walk"]["mp4"]).shape == (12, 3, 16, 16)  # 8 frames, padded


def test_caption_file_lists_videos_and_frame_folders(tmp_path: Path) -> None:
    root = clip_folder(tmp_path / "clips")
    captions = tmp_path / "captions.jsonl"
    rows = [{"image": "walk.mp4", "caption": "a walk"}, {"image": "wave", "caption": "a wave"}]
    captions.write_text("\n".join(json.dumps(row) for row in rows))
    report = convert_folder(str(root), str(captions), str(tmp_path / "out"), progress=False)
    assert report.written == 2
    # The frames of the listed folder are not reported as images without captions.
    assert not any(name.startswith("wave/") for _, name in report.skipped_files)
    assert sorted(read_samples(report.output)) == ["walk", "wave"]
