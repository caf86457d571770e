import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from jepa_lightning.cli import main
from jepa_lightning.data.index import read_shard_index
from jepa_lightning.tools.shapes import (
    POSITIONS,
    QUESTION_TYPES,
    SHAPES,
    ShapesSpec,
    answer_candidates,
    ensure_shapes_shards,
    generate_sample,
    shapes_captions,
    shapes_class_names,
    write_shapes_shards,
)
from jepa_lightning.tools.shards import ShardWriter

QA_DIGEST = "e04e24d2299e40e872a463dda24cd3a18053ae36575ee1365ce50af4d3d7c44b"
PHRASES = {"left": "on the left", "center": "in the center", "right": "on the right"}


def _caption_from_meta(meta: dict) -> str:
    shapes = meta["shapes"]
    if meta["relation"] is None:
        (s,) = shapes
        return f"a {s['size']} {s['colour']} {s['shape']} {PHRASES[s['position']]}"
    a, b = shapes
    relation = {"left of": "to the left of", "above": "above"}[meta["relation"]]
    return f"a {a['colour']} {a['shape']} {relation} a {b['colour']} {b['shape']}"


def test_default_caption_set() -> None:
    captions = shapes_captions()
    assert len(captions) == len(set(captions)) == 72 + 144
    assert "a small red circle on the left" in captions
    assert "a green triangle to the left of a yellow circle" in captions
    assert shapes_class_names() == {
        "shape": ["circle", "square", "triangle"],
        "colour": ["red", "green", "blue", "yellow"],
        "position": ["left", "center", "right"],
    }


def test_generate_sample_pure_and_balanced() -> None:
    spec = ShapesSpec()
    n = 600
    samples = [generate_sample(i, 0, spec) for i in range(n)]
    image, caption, meta = generate_sample(17, 0, spec)
    assert image.tobytes() == samples[17][0].tobytes() and caption == samples[17][1]
    assert image.size == (64, 64) and image.mode == "RGB"
    assert meta == samples[17][2]

    captions = [c for _, c, _ in samples]
    assert set(captions) == set(shapes_captions(spec))  # every caption is reached
    kinds = Counter(m["relation"] is not None for _, _, m in samples)
    assert kinds[True] == 180  # exactly 30% two-shape samples
    one = Counter(
        c for c, (_, _, m) in zip(captions, samples, strict=True) if m["relation"] is None
    )
    assert max(one.values()) - min(one.values()) <= 1  # balanced

    for _, caption, meta in samples:
        assert caption == _caption_from_meta(meta)
        first = meta["shapes"][0]
        assert meta["labels"]["shape"] == first["shape"]
        assert meta["labels"]["colour"] == first["colour"]
        assert "query" not in meta


def test_geometry_is_unambiguous() -> None:
    spec = ShapesSpec(shapes=SHAPES, positions=tuple(POSITIONS))
    size = spec.image_size
    for i in range(400):
        _, _, meta = generate_sample(i, 3, spec)
        boxes = [s["bbox"] for s in meta["shapes"]]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        centres = [((b[0] + b[2]) / 2 / size, (b[1] + b[3]) / 2 / size) for b in boxes]
        if meta["relation"] is None:
            (s,), (c,) = meta["shapes"], centres
            ax, ay = POSITIONS[s["position"]]
            assert abs(c[0] - ax) < 0.06 and abs(c[1] - ay) < 0.06
            extent = max(s["bbox"][2] - s["bbox"][0], s["bbox"][3] - s["bbox"][1]) / size
            assert (0.12 < extent < 0.21) if s["size"] == "small" else (0.28 < extent < 0.40)
        else:
            axis = 0 if meta["relation"] == "left of" else 1
            along = centres[1][axis] - centres[0][axis]
            across = abs(centres[1][1 - axis] - centres[0][1 - axis])
            assert along > 0.3 and across < 0.1
            a, b = boxes
            assert a[2 + axis] < b[axis]  # no overlap along the relation


def test_default_captions_layouts_and_images_are_those_of_generator_version_1() -> None:
    # The default run's data (no questions) is unchanged since version 1: a change here must
    # bump GENERATOR_VERSION. Images also depend on Pillow.
    rows = [generate_sample(i, 0, ShapesSpec()) for i in range(40)]
    digest = hashlib.sha256(json.dumps([row[1:] for row in rows], sort_keys=True).encode())
    assert digest.hexdigest() == "d1da33bf7010e7df47f236eee45a0e2c8e646ec2eef8deef6e51dd4751c26a3c"
    pixels = hashlib.sha256(b"".join(image.tobytes() for image, _, _ in rows)).hexdigest()
    assert pixels == "efece9d524c8add54db0ce34274b49b9e98ef179af96feea073f2c39ed645b14"


def test_question_samples_are_those_of_generator_version_2() -> None:
    rows = [generate_sample(i, 0, ShapesSpec(with_queries=True))[1:] for i in range(40)]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == QA_DIGEST


def test_questions_are_answered_by_the_image() -> None:
    spec = ShapesSpec(with_queries=True)
    candidates = answer_candidates(spec)
    assert candidates["position"] == ["left", "center", "right", "top", "bottom"]
    kinds = Counter()
    for index in range(200):
        plain = generate_sample(index, 0, ShapesSpec())
        image, answer, meta = generate_sample(index, 0, spec)
        assert image.tobytes() == plain[0].tobytes()  # same images, same caption in meta
        assert meta["caption"] == plain[1] and answer == meta["answer"]
        assert meta["query"].endswith("?") and answer in meta["candidates"]
        assert meta["candidates"] == candidates[meta["question_type"]]
        kinds[meta["question_type"]] += 1
        named = {(s["colour"], s["shape"]): s for s in meta["shapes"]}
        if meta["question_type"] == "count":
            assert answer == ["one", "two"][len(meta["shapes"]) - 1]
        elif meta["question_type"] == "colour":
            shape = meta["query"].removeprefix("what colour is the ").removesuffix("?")
            assert (answer, shape) in named
        elif meta["question_type"] == "shape":
            colour = meta["query"].split(" the ")[-1].removesuffix(" object?")
            assert (colour, answer) in named
        else:
            colour, shape = meta["query"].removeprefix("where is the ").removesuffix("?").split()
            assert named[(colour, shape)]["position"] == answer
    assert set(kinds) == set(QUESTION_TYPES) and min(kinds.values()) > 30


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown colours"):
        ShapesSpec(colours=("red", "pink"))
    with pytest.raises(ValueError, match="two colours"):
        ShapesSpec(colours=("red",))
    ShapesSpec(colours=("red",), two_shape_fraction=0.0)
    with pytest.raises(ValueError, match="image_size"):
        ShapesSpec(image_size=16)


def test_write_deterministic_and_readable(tmp_path: Path) -> None:
    a = write_shapes_shards(str(tmp_path / "a"), 30, samples_per_shard=12, seed=1)
    b = write_shapes_shards(str(tmp_path / "b"), 30, samples_per_shard=12, seed=1)
    c = write_shapes_shards(str(tmp_path / "c"), 30, samples_per_shard=12, seed=2)
    index = read_shard_index(a)
    assert [n for _, n in index.shards] == [12, 12, 6]
    assert index.metadata["seed"] == 1 and index.metadata["split"] == "train"
    for name, _ in index.shards:
        assert Path(a, name).read_bytes() == Path(b, name).read_bytes()
    assert Path(a, "train-000000.tar").read_bytes() != Path(c, "train-000000.tar").read_bytes()

    samples = list(wds.WebDataset(index.urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 30
    for i, sample in enumerate(samples):
        assert sample["__key__"] == f"train_{i:06d}"
        image, caption, meta = generate_sample(i, 1, ShapesSpec(), "train")
        assert sample["txt"] == caption and sample["json"] == meta
        assert sample["jpg"].size == (64, 64)


def test_cli_takes_the_spec_as_dotted_options(tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(["data", "shapes", str(out), "6", "--spec.image_size=32", "--spec.colours=[red, black]"])
    metadata = read_shard_index(out).metadata
    assert metadata["spec"] == ShapesSpec(image_size=32, colours=("red", "black")).to_dict()
    assert metadata["num_samples"] == 6


def test_train_and_val_differ() -> None:
    spec = ShapesSpec()
    train = [generate_sample(i, 0, spec, "train")[0].tobytes() for i in range(20)]
    val = [generate_sample(i, 0, spec, "val")[0].tobytes() for i in range(20)]
    assert not set(train) & set(val)


def test_ensure_writes_once_then_noop_then_rewrites(tmp_path: Path) -> None:
    out = str(tmp_path / "train")
    ensure_shapes_shards(out, 20, samples_per_shard=8)
    shard = Path(out, "train-000000.tar")
    stamp = (os.stat(shard).st_mtime_ns, os.stat(Path(out, "index.json")).st_mtime_ns)
    time.sleep(0.02)
    ensure_shapes_shards(out, 20, samples_per_shard=8)
    assert (os.stat(shard).st_mtime_ns, os.stat(Path(out, "index.json")).st_mtime_ns) == stamp

    half = ShapesSpec(two_shape_fraction=0.5)
    ensure_shapes_shards(out, 20, half, samples_per_shard=8)
    assert os.stat(shard).st_mtime_ns != stamp[0]
    assert read_shard_index(out).metadata["spec"]["two_shape_fraction"] == 0.5
    ensure_shapes_shards(out, 10, half, samples_per_shard=8)
    index = read_shard_index(out)
    assert index.num_samples == 10 and sorted(p.name for p in Path(out).glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]

    Path(out, "train-000001.tar").unlink()  # a missing shard triggers a rewrite
    ensure_shapes_shards(out, 10, half, samples_per_shard=8)
    assert read_shard_index(out).num_samples == 10

    with pytest.raises(ValueError, match="one folder per split"):
        ensure_shapes_shards(out, 10, split="val")


def test_ensure_refuses_foreign_shards(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, metadata={"converter": "mine"}) as writer:
        writer.write({"__key__": "a", "txt": "x"})
    with pytest.raises(ValueError, match="did not write"):
        ensure_shapes_shards(str(tmp_path), 10)
    assert read_shard_index(tmp_path).metadata == {"converter": "mine"}
