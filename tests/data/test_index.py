import json
from pathlib import Path

import pytest

from jepa_lightning.data.index import INDEX_FILENAME, INDEX_FORMAT, ShardIndex, read_shard_index


def test_index_round_trip(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "b.tar").write_bytes(b"")
    written = ShardIndex(str(tmp_path), [("a.tar", 2), ("b.tar", 3)], 5, {"source": "x"})
    (tmp_path / INDEX_FILENAME).write_text(json.dumps(written.to_dict()))
    index = read_shard_index(tmp_path)
    assert index == written and index.num_shards == 2
    assert index.urls == [str(tmp_path.absolute() / name) for name in ("a.tar", "b.tar")]
    assert index.index_path == str(tmp_path.absolute() / INDEX_FILENAME)


def test_index_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_shard_index(tmp_path)
    index = tmp_path / INDEX_FILENAME
    index.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_shard_index(tmp_path)
    index.write_text(json.dumps({"format": "other", "shards": []}))
    with pytest.raises(ValueError, match="format 'other'"):
        read_shard_index(index)
    good = {
        "format": INDEX_FORMAT,
        "num_samples": 4,
        "shards": [{"name": "x.tar", "num_samples": 3}],
    }
    index.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="sum of the shard counts"):
        read_shard_index(index)
    good["num_samples"] = 3
    index.write_text(json.dumps(good))
    with pytest.raises(FileNotFoundError, match="missing shards"):
        read_shard_index(index)
    assert read_shard_index(index, check_files=False).urls == [str(tmp_path.absolute() / "x.tar")]
