"""search build/query: exact top-k (against brute force), chunked, from files or shards; grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from inference_data import shapes_pngs, tiny_export
from PIL import Image

from jepa_lightning.cli import main
from jepa_lightning.embedding_table import load_table
from jepa_lightning.inference import PretrainedVLJEPA
from jepa_lightning.search import build_index, search, top_k_matches
from jepa_lightning.tools.shapes import ShapesSpec, write_shapes_shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("search")
    export = tiny_export(root / "export")
    images = shapes_pngs(root / "pngs", 24)
    index = build_index(export, str(root / "pngs"), str(root / "index"), batch_size=7)
    return {"root": root, "export": export, "images": images, "index": index}


def test_chunked_top_k_equals_a_full_sort() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(5, 8, generator=generator)
    items = torch.randn(103, 8, generator=generator).numpy()
    expected = (queries @ torch.from_numpy(items).T).topk(7, dim=1)
    for chunk in (1, 10, 103, 1000):
        scores, rows = top_k_matches(queries, items, 7, chunk_size=chunk)
        torch.testing.assert_close(scores, expected.values)
        assert torch.equal(rows, expected.indices)
    assert top_k_matches(queries, items[:3], 7)[1].shape == (5, 3)


def test_index_of_image_files_holds_every_image(setup) -> None:
    records, arrays = load_table(setup["index"])
    assert [r["path"] for r in records] == [m["path"] for m in setup["images"]]
    assert [r["caption"] for r in records] == [m["caption"] for m in setup["images"]]
    model = PretrainedVLJEPA.from_pretrained(setup["export"])
    expected = model.encode_images([m["path"] for m in setup["images"]])
    np.testing.assert_allclose(arrays["image_embeddings"], expected.numpy(), atol=1e-5)
    with pytest.raises(FileExistsError, match="already holds an index"):
        build_index(setup["export"], str(setup["root"] / "pngs"), setup["index"])


def test_query_returns_the_brute_force_top_k_and_writes_a_grid(setup) -> None:
    queries = [setup["images"][0]["caption"], "a large blue square in the center"]
    grid = setup["root"] / "grid.png"
    output = setup["root"] / "hits.jsonl"
    hits = search(setup["index"], query=queries[0], top_k=4, grid=str(grid), output=str(output))
    path = setup["root"] / "queries.txt"
    path.write_text("\n".join(queries) + "\n")
    both = search(setup["index"], queries_file=str(path), top_k=4, quiet=True)
    assert [h.key for h in both[0]] == [h.key for h in hits[0]]
    model = PretrainedVLJEPA.from_pretrained(setup["export"])
    _, arrays = load_table(setup["index"])
    scores = model.encode_texts(queries) @ torch.from_numpy(np.array(arrays["image_embeddings"])).T
    for row, expected in zip(both, scores, strict=True):
        top = expected.topk(4)
        assert [h.score for h in row] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert [h.record["path"] for h in row] == [setup["images"][i]["path"] for i in top.indices]
    with Image.open(grid) as picture:
        assert picture.size == (4 * 100, 2 * 12 + 96 + 4)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="give a --query"):
        search(setup["index"])


def test_index_of_shards_from_the_command_line(setup, tmp_path, capsys) -> None:
    shards = write_shapes_shards(str(tmp_path / "shards"), 10, ShapesSpec(), samples_per_shard=4)
    index = str(tmp_path / "index")
    main(["search", "build", setup["export"], shards, index, "--batch_size", "3"])
    records, arrays = load_table(index)
    assert len(records) == arrays["image_embeddings"].shape[0] == 10
    main(["search", "query", index, "--query", "a red circle", "--top_k", "2"])
    out = capsys.readouterr().out
    assert "indexed 10 images" in out and "a red circle" in out
    main(["search", "query", index, "--query", "x", "--grid", str(tmp_path / "g.png")])
    assert (tmp_path / "g.png").is_file()  # pictures found in the shards
    with pytest.raises(SystemExit):
        main(["search", "query", str(tmp_path / "nothing"), "--query", "x"])
    assert "not an embeddings folder" in capsys.readouterr().err
