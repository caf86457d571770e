"""The embeddings folder: parts joined in order, one line per row, NaN kept, loads in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jepa_lightning.embedding_table import TablePartWriter, load_table, merge_parts, write_table


def test_parts_join_in_the_given_order(tmp_path) -> None:
    rng = np.random.default_rng(0)
    expected_rows = []
    writers = {part: TablePartWriter(tmp_path, part, ["a", "b"]) for part in ("rank1", "rank0")}
    for part, sizes in (("rank0", [3, 2]), ("rank1", [4, 0, 1])):
        for size in sizes:
            values = rng.standard_normal((size, 5)).astype(np.float32)
            records = [{"key": f"{part}-{len(expected_rows) + i}"} for i in range(size)]
            writers[part].write(records, {"a": values, "b": -values})
            expected_rows.append((part, records, values))
    for writer in writers.values():
        writer.close()
    assert merge_parts(tmp_path, ["rank0", "rank1"], ["a", "b"]) == 10
    order = [entry for part in ("rank0", "rank1") for entry in expected_rows if entry[0] == part]
    records, arrays = load_table(tmp_path)
    assert records == [record for _, rows, _ in order for record in rows]
    values = np.concatenate([v for _, _, v in order])
    np.testing.assert_array_equal(arrays["a"], values)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), -values)  # one line, numpy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "samples.jsonl"]


def test_nan_rows_and_nulls_survive(tmp_path) -> None:
    values = np.array([[1.0, 2.0], [np.nan, np.nan]], dtype=np.float32)
    write_table(
        tmp_path, [{"key": "x", "caption": "c"}, {"key": "y", "caption": None}], {"s": values}
    )
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines][1] == {"key": "y", "caption": None}
    np.testing.assert_array_equal(load_table(tmp_path, mmap=False)[1]["s"], values)


def test_rows_must_match(tmp_path) -> None:
    writer = TablePartWriter(tmp_path, "p", ["a"])
    with pytest.raises(ValueError, match=r"a: expected \(2, D\) values"):
        writer.write([{"key": "x"}, {"key": "y"}], {"a": np.zeros((3, 4))})
    writer.close()
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        load_table(tmp_path / "nothing")
