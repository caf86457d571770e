import csv
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from jepa_lightning.data.index import read_shard_index
from jepa_lightning.tools.convert import convert_folder, key_from_path


def _save(path: Path, colour: tuple[int, int, int], fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _save(root / "a.jpg", (255, 0, 0))
    _save(root / "b.png", (0, 255, 0))
    _save(root / "sub" / "c.v2.jpeg", (0, 0, 255))
    _save(root / "d.webp", (10, 10, 10))
    good = root / "e.jpg"
    _save(good, (9, 9, 9))
    (root / "corrupt.jpg").write_bytes(good.read_bytes()[:40])  # truncated JPEG
    _save(root / "nocaption.jpg", (1, 2, 3))
    _save(root / "empty.jpg", (1, 2, 3))
    _save(root / "anim.gif", (1, 2, 3), "GIF")
    return root


def _sidecars(root: Path) -> None:
    for name, caption in {
        "a": "a red image",
        "b": "a green image",
        "sub/c.v2": "a blue image",
        "d": "a dark image",
        "e": "another dark image",
        "corrupt": "broken",
        "empty": "  \n",
        "anim": "a gif",
    }.items():
        (root / f"{name}.txt").write_text(caption, encoding="utf-8")


def _read(output: Path) -> dict[str, dict]:
    index = read_shard_index(output)
    samples = wds.WebDataset(index.urls, shardshuffle=False).decode("pil")
    return {s["__key__"]: s for s in samples}


def test_sidecar(folder: Path, tmp_path: Path) -> None:
    _sidecars(folder)
    out = tmp_path / "out"
    report = convert_folder(str(folder), output=str(out), samples_per_shard=2, progress=False)
    assert report.written == 5 and report.num_shards == 3
    assert report.reasons == {
        "corrupt_image": 1,
        "missing_caption": 1,
        "empty_caption": 1,
        "unsupported_extension": 1,
    }
    assert ("corrupt_image", "corrupt.jpg") in report.skipped_files
    assert ("missing_caption", "nocaption.jpg") in report.skipped_files
    assert "skipped 4" in report.summary()

    samples = _read(out)
    assert sorted(samples) == ["a", "b", "d", "e", "sub/c_v2"]
    assert samples["a"]["txt"] == "a red image"
    assert samples["a"]["jpg"].convert("RGB").getpixel((5, 5))[0] > 240
    assert samples["b"]["png"].convert("RGB").getpixel((5, 5)) == (0, 255, 0)
    assert samples["sub/c_v2"]["txt"] == "a blue image" and "jpg" in samples["sub/c_v2"]
    assert samples["sub/c_v2"]["json"] == {"source": "sub/c.v2.jpeg"}
    assert "webp" in samples["d"]
    raw = list(wds.WebDataset(read_shard_index(out).urls, shardshuffle=False))
    by_key = {s["__key__"]: s for s in raw}
    assert by_key["a"]["jpg"] == (folder / "a.jpg").read_bytes()  # not re-encoded


def test_csv_and_jsonl(folder: Path, tmp_path: Path) -> None:
    rows = [
        {"file": "a.jpg", "text": "red"},
        {"file": "a.jpg", "text": "also red"},
        {"file": "sub/c.v2.jpeg", "text": "blue"},
        {"file": "missing.jpg", "text": "ghost"},
        {"file": "corrupt.jpg", "text": "broken"},
        {"file": "e.jpg", "text": ""},
        {"file": "anim.gif", "text": "gif"},
    ]
    csv_path = tmp_path / "captions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "text"])
        writer.writeheader()
        writer.writerows(rows)
    jsonl_path = tmp_path / "captions.jsonl"
    lines = [json.dumps(r) for r in rows] + ["", "not json", json.dumps({"text": "no image"})]
    jsonl_path.write_text("\n".join(lines), encoding="utf-8")

    for i, path in enumerate([csv_path, jsonl_path]):
        out = tmp_path / f"out{i}"
        report = convert_folder(
            str(folder),
            str(path),
            output=str(out),
            image_column="file",
            caption_column="text",
            shuffle=True,
            progress=False,
        )
        assert report.written == 3
        expected = {
            "missing_image": 1,
            "corrupt_image": 1,
            "empty_caption": 1,
            "unsupported_extension": 1,
            "missing_caption": 4,  # b.png, d.webp, nocaption.jpg, empty.jpg are not listed
        }
        if path == jsonl_path:
            expected["invalid_record"] = 2
        assert report.reasons == expected
        samples = _read(out)
        assert sorted(samples) == ["a", "a_1", "sub/c_v2"]
        assert {samples["a"]["txt"], samples["a_1"]["txt"]} == {"red", "also red"}
        assert read_shard_index(out).metadata["shuffle"] is True


def test_fatal_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_folder(str(tmp_path / "nowhere"), output=str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="caps.csv"):
        convert_folder(str(folder), str(tmp_path / "caps.csv"), output=str(tmp_path / "o"))
    (tmp_path / "caps.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unknown caption file format"):
        convert_folder(str(folder), str(tmp_path / "caps.xml"), output=str(tmp_path / "o"))
    (tmp_path / "caps.csv").write_text("path,caption\na.jpg,x\n")
    with pytest.raises(ValueError, match="no column"):
        convert_folder(str(folder), str(tmp_path / "caps.csv"), output=str(tmp_path / "o"))
    # no side-car captions at all: zero usable samples, and nothing left behind
    with pytest.raises(ValueError, match="no usable samples"):
        convert_folder(str(folder), output=str(tmp_path / "o"), progress=False)
    assert not list((tmp_path / "o").iterdir())

    _sidecars(folder)
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert_folder(str(folder), output=str(out), progress=False)
    report = convert_folder(str(folder), output=str(out), progress=False, overwrite=True)
    assert report.written == 5


def test_default_output_and_progress(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sidecars(folder)
    report = convert_folder(str(folder), progress=True)
    assert Path(report.output) == folder.parent / "photos-shards"
    assert read_shard_index(report.output).num_samples == 5
    assert "wrote 5 samples" in capsys.readouterr().out


def test_key_from_path() -> None:
    assert key_from_path("img.001.jpg") == "img_001"
    assert key_from_path("a b/c.d/é.png") == "a_b/c_d/_"
    long = key_from_path("x" * 200 + ".jpg")
    assert len(long) <= 90 and "." not in long


def test_extra_columns_and_fields_are_carried_into_json(folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "captions.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "labels", "query", "answer"])
        writer.writerow(["a.jpg", "a red image", '{"colour": "red"}', "what colour?", "red"])
        writer.writerow(["b.png", "a green image", "", "", ""])
    out = tmp_path / "csv"
    convert_folder(str(folder), str(table), output=str(out), progress=False)
    samples = _read(out)
    assert samples["a"]["json"] == {
        "source": "a.jpg",
        "labels": {"colour": "red"},  # a JSON cell is parsed
        "query": "what colour?",
        "answer": "red",
    }
    lines = tmp_path / "captions.jsonl"
    row = {"image": "d.webp", "caption": "dark", "labels": {"tone": "dark"}, "candidates": ["a"]}
    lines.write_text(json.dumps(row) + "\n", encoding="utf-8")
    convert_folder(str(folder), str(lines), output=str(tmp_path / "jsonl"), progress=False)
    assert _read(tmp_path / "jsonl")["d"]["json"] == {
        "source": "d.webp",
        "labels": {"tone": "dark"},
        "candidates": ["a"],
    }
    _sidecars(folder)
    (folder / "a.json").write_text('{"labels": {"colour": "red"}}', encoding="utf-8")
    (folder / "b.json").write_text("[1]", encoding="utf-8")
    report = convert_folder(str(folder), output=str(tmp_path / "side"), progress=False)
    side = _read(tmp_path / "side")
    assert side["a"]["json"] == {"labels": {"colour": "red"}, "source": "a.jpg"}
    assert "b" not in side and ("invalid_record", "b.json") in report.skipped_files
