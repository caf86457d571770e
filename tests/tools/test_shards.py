import json
import os
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from jepa_lightning.data.index import INDEX_FILENAME, INDEX_FORMAT, read_shard_index
from jepa_lightning.tools.shards import ShardWriter, encode_jpeg, validate_key


def _image(i: int) -> Image.Image:
    return Image.new("RGB", (16, 16), (i * 20 % 256, 100, 200))


def _write(folder: Path, n: int, per_shard: int, **kwargs) -> None:
    with ShardWriter(folder, prefix="train", samples_per_shard=per_shard, **kwargs) as writer:
        for i in range(n):
            writer.write_sample(f"s{i:04d}", _image(i), f"caption {i} é", {"i": i})


def test_shard_counts_index_and_readback(tmp_path: Path) -> None:
    _write(tmp_path, 25, 10, metadata={"source": "test"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["index.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))

    document = json.loads((tmp_path / INDEX_FILENAME).read_text())
    assert document["format"] == INDEX_FORMAT
    assert document["num_samples"] == 25
    assert [s["num_samples"] for s in document["shards"]] == [10, 10, 5]
    assert document["metadata"] == {"source": "test"}

    index = read_shard_index(tmp_path)
    assert index.num_samples == 25 and index.num_shards == 3
    assert index.shards[0] == ("train-000000.tar", 10)
    assert all(os.path.isabs(url) and os.path.isfile(url) for url in index.urls)
    assert read_shard_index(tmp_path / INDEX_FILENAME).urls == index.urls

    samples = list(wds.WebDataset(index.urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"s{i:04d}" for i in range(25)]
    for i, sample in enumerate(samples):
        assert sample["txt"] == f"caption {i} é"
        assert sample["json"] == {"i": i}
        assert sample["jpg"].size == (16, 16)
        red = sample["jpg"].convert("RGB").getpixel((8, 8))[0]
        assert abs(red - i * 20 % 256) <= 3


def test_exact_multiple_has_no_empty_shard(tmp_path: Path) -> None:
    _write(tmp_path, 20, 10)
    assert [count for _, count in read_shard_index(tmp_path).shards] == [10, 10]


def test_passthrough_bytes_and_deterministic(tmp_path: Path) -> None:
    png = tmp_path / "img.png"
    _image(3).save(png)
    for folder in ("a", "b"):
        with ShardWriter(tmp_path / folder, prefix="val") as writer:
            writer.write_sample("k", png.read_bytes(), "x", image_ext="png")
            writer.write({"__key__": "raw", "txt": "y", "json": {"a": 1}, "cls": b"3"})
    a = (tmp_path / "a" / "val-000000.tar").read_bytes()
    assert a == (tmp_path / "b" / "val-000000.tar").read_bytes()
    samples = list(wds.WebDataset(str(tmp_path / "a" / "val-000000.tar"), shardshuffle=False))
    assert samples[0]["png"] == png.read_bytes()
    assert samples[1]["cls"] == b"3"


def test_abort_on_exception_leaves_no_tmp_and_no_index(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, samples_per_shard=2) as writer:
            for i in range(3):
                writer.write_sample(f"s{i}", _image(i), "c")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    with pytest.raises(FileNotFoundError, match="index"):
        read_shard_index(tmp_path)


def test_existing_folder_requires_overwrite(tmp_path: Path) -> None:
    _write(tmp_path, 5, 2)
    with pytest.raises(FileExistsError, match="overwrite"):
        ShardWriter(tmp_path, prefix="train")
    _write(tmp_path, 3, 10, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "train-000000.tar"]
    assert read_shard_index(tmp_path).num_samples == 3


def test_bad_samples_rejected(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        writer.write_sample("a", _image(0), "c")
        with pytest.raises(ValueError, match="duplicate"):
            writer.write_sample("a", _image(0), "c")
        with pytest.raises(ValueError, match="invalid sample key"):
            writer.write_sample("a.b", _image(0), "c")
        with pytest.raises(ValueError, match="unsupported image extension"):
            writer.write_sample("b", b"xx", "c", image_ext="gif")
        with pytest.raises(ValueError, match="must be bytes or str"):
            writer.write({"__key__": "c", "txt": 3})
    assert read_shard_index(tmp_path).num_samples == 1


def test_validate_key() -> None:
    assert validate_key("dir/sub_1-x") == "dir/sub_1-x"
    for bad in ["", "a.b", "/abs", " lead", "dir.x/b", "trail/"]:
        with pytest.raises(ValueError):
            validate_key(bad)


def test_encode_jpeg_converts_rgba() -> None:
    data = encode_jpeg(Image.new("RGBA", (8, 8), (1, 2, 3, 4)))
    assert data[:2] == b"\xff\xd8"


def test_prefix_with_glob_characters_is_matched_literally(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, prefix="set[1]") as writer:
        writer.write_sample("a", _image(0), "c")
    with pytest.raises(FileExistsError, match="overwrite"):
        ShardWriter(tmp_path, prefix="set[1]")
    with ShardWriter(tmp_path, prefix="set[1]", overwrite=True) as writer:
        writer.write_sample("b", _image(1), "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "set[1]-000000.tar"]
