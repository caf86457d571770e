"""The moving-shapes data module: clip shards, train/eval clip sampling, corrupt videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER
from transformers import AutoTokenizer

from jepa_lightning.data import MovingShapesDataModule, PairCollator
from jepa_lightning.data.pipeline import ShardStream, resolve_shards
from jepa_lightning.encoders.text import TextCodec
from jepa_lightning.encoders.video import VideoCodec, encode_video
from jepa_lightning.tools.moving_shapes import MovingShapesSpec, generate_clip
from jepa_lightning.tools.shards import ShardWriter

SIDE = 32


@pytest.fixture(scope="module")
def collator() -> PairCollator:
    text = TextCodec(AutoTokenizer.from_pretrained(TOKENIZER), 16)
    return PairCollator(VideoCodec(SIDE, num_frames=4, frame_stride=5), text)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moving_shapes")
    module = MovingShapesDataModule(
        root=str(root), train_samples=24, val_samples=8, image_size=SIDE, num_workers=0
    )
    module.prepare_data()
    return root


def data_module(root: Path, collator: PairCollator, **kwargs) -> MovingShapesDataModule:  # type: ignore[no-untyped-def]
    settings = {"train_samples": 24, "val_samples": 8, "image_size": SIDE, "num_workers": 0}
    settings.update(kwargs)
    return MovingShapesDataModule(
        root=str(root), collator=collator, batch_size=8, shuffle_buffer=8, **settings
    )


def test_training_draws_clip_starts_and_validation_is_the_centred_clip(
    data_root: Path, collator: PairCollator
) -> None:
    module = data_module(data_root, collator)
    train = module.train_dataloader()
    val = module.val_dataloader()
    assert train.dataset.collator.x.train and not val.dataset.collator.x.train  # type: ignore[attr-defined]
    first, second = list(val), list(val)
    assert [b.keys for b in first] == [b.keys for b in second]
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, second, strict=True))
    assert first[0].x.shape == (8, 4, 3, SIDE, SIDE)
    torch.manual_seed(0)
    clips = {}
    for _ in range(4):  # the same sample seen in several epochs: different starts
        for batch in train:
            for key, clip in zip(batch.keys, batch.x, strict=True):
                clips.setdefault(key, []).append(clip)
    assert any(
        not all(torch.equal(views[0], other) for other in views[1:])
        for views in clips.values()
        if len(views) > 1
    )


def test_val_frames_feeds_the_middle_frame(data_root: Path, collator: PairCollator) -> None:
    module = data_module(data_root, collator, val_frames=1)
    single = next(iter(module.val_dataloader()))
    assert single.x.shape == (8, 1, 3, SIDE, SIDE)
    assert module.collator is collator  # the model's collator is left as it was
    # The middle frame: what a one-frame clip codec reads from the same files.
    one_frame = PairCollator(VideoCodec(SIDE, num_frames=1), collator.text)
    module = data_module(data_root, one_frame)
    reference = next(iter(module.val_dataloader()))
    assert torch.equal(single.x, reference.x)


def test_train_frames_trains_on_single_frames(data_root: Path, collator: PairCollator) -> None:
    module = data_module(data_root, collator, train_frames=1)
    loader = module.train_dataloader()
    assert loader.dataset.collator.x == VideoCodec(SIDE, 1, 5, train=True)  # type: ignore[attr-defined]
    assert next(iter(loader)).x.shape == (8, 1, 3, SIDE, SIDE)
    assert next(iter(module.val_dataloader())).x.shape == (8, 4, 3, SIDE, SIDE)
    with pytest.raises(ValueError, match="train_frames must be >= 1"):
        data_module(data_root, collator, train_frames=0)


def test_corrupt_video_is_skipped_and_counted(tmp_path: Path, collator: PairCollator) -> None:
    spec = MovingShapesSpec(image_size=SIDE)
    with ShardWriter(str(tmp_path), prefix="val", samples_per_shard=10) as writer:
        for index in range(6):
            frames, caption, meta = generate_clip(index, spec=spec, split="val")
            video = encode_video(frames, spec.fps)
            if index == 2:
                video = video[: len(video) // 2]  # truncated
            if index == 4:
                video = b"not a video at all" * 20  # corrupt
            writer.write({"__key__": f"v{index}", "mp4": video, "txt": caption, "json": meta})
    stream = ShardStream(resolve_shards(str(tmp_path)), collator, 2, "eval")
    batches = list(stream)
    keys = [key for batch in batches for key in batch.valid_rows().keys]
    assert keys == ["v0", "v1", "v3", "v5"]
    assert sum(batch.skipped for batch in batches) == 2
