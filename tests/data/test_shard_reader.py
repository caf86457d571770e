from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds
from shard_factory import TRUNCATED, write_shards
from webdataset.tariterators import tarfile_samples

from jepa_lightning.data.shard_reader import is_local_file, shard_samples


def webdataset_read(url: str) -> tuple[list[dict[str, Any]], list[Exception]]:
    errors: list[Exception] = []
    samples = list(tarfile_samples([{"url": url}], handler=lambda e: errors.append(e) or True))
    return samples, errors


def our_read(url: str) -> tuple[list[dict[str, Any]], list[Exception]]:
    errors: list[Exception] = []
    return list(shard_samples(url, handler=lambda e: errors.append(e) or True)), errors


def contents(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples without the shard's name."""
    return [{k: v for k, v in s.items() if k != "__url__"} for s in samples]


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("/data/shard-0000.tar", True),
        ("shards/train-0001.tar", True),
        ("pipe:cat /data/shard.tar", False),
        ("https://host/shard.tar", False),
        ("file:///data/shard.tar", False),
        ("-", False),
        ("C:\\shards\\train-0001.tar", True),
        ("c:/shards/train-0001.tar", True),
    ],
)
def test_is_local_file(url: str, local: bool) -> None:
    assert is_local_file(url) is local


def test_local_shard_reads_as_webdataset_does(tmp_path: Path) -> None:
    (path,) = write_shards(tmp_path, [9])
    # A metadata member, which both readers leave out.
    with tarfile.open(path, "a") as archive:
        info = tarfile.TarInfo("__index__")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"{}"))
    ours, errors = our_read(path)
    theirs, _ = webdataset_read(path)
    assert not errors
    assert [s["__key__"] for s in ours] == [f"s{n:05d}" for n in range(9)]
    assert contents(ours) == contents(theirs)


def test_compressed_local_shard(tmp_path: Path) -> None:
    (path,) = write_shards(tmp_path, [5])
    compressed = tmp_path / "shard.tar.gz"
    compressed.write_bytes(gzip.compress(Path(path).read_bytes()))
    ours, errors = our_read(str(compressed))
    assert not errors
    assert contents(ours) == contents(webdataset_read(path)[0])


def test_pipe_url_is_streamed_by_webdataset(tmp_path: Path) -> None:
    (path,) = write_shards(tmp_path, [4])
    ours, errors = our_read(f"pipe:cat {path}")
    assert not errors
    assert contents(ours) == contents(webdataset_read(path)[0])


def test_truncated_shard_keeps_the_samples_before_the_cut(tmp_path: Path) -> None:
    (path,) = write_shards(tmp_path, [8], bad={5: TRUNCATED})
    ours, errors = our_read(path)
    theirs, their_errors = webdataset_read(path)
    # One error for the shard (WebDataset's reader reports the same one twice).
    assert len(errors) == 1 and isinstance(errors[0], tarfile.ReadError)
    assert their_errors
    assert contents(ours) == contents(theirs)
    assert [s["__key__"] for s in ours[:5]] == [f"s{n:05d}" for n in range(5)]


def test_truncated_streamed_shard_reports_one_error(tmp_path: Path) -> None:
    (path,) = write_shards(tmp_path, [8], bad={5: TRUNCATED})
    ours, errors = our_read(f"pipe:cat {path}")
    assert len(webdataset_read(f"pipe:cat {path}")[1]) == 2  # the same error, twice
    assert len(errors) == 1
    assert contents(ours) == contents(our_read(path)[0])


def test_missing_or_corrupt_file_goes_to_the_handler(tmp_path: Path) -> None:
    samples, errors = our_read(str(tmp_path / "missing.tar"))
    assert samples == [] and isinstance(errors[0], FileNotFoundError)
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(b"not a tar file" * 100)
    samples, errors = our_read(str(corrupt))
    assert samples == [] and isinstance(errors[0], tarfile.ReadError)


def test_handler_that_raises_stops_the_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(shard_samples(str(tmp_path / "missing.tar"), handler=wds.reraise_exception))
