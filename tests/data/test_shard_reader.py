from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any
from unittest.mock import ANY

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


def write_tar(path: Path, names: list[str], tar_format: int, **kwargs: Any) -> str:
    """A tar file of the named members: ``dir/`` a directory, ``link->target`` a symlink,
    any other name a file of a few (name-dependent) bytes; ``kwargs`` go to ``TarFile``."""
    with tarfile.open(path, "w", format=tar_format, **kwargs) as archive:
        for number, name in enumerate(names):
            info = tarfile.TarInfo(name.split("->")[0].rstrip("/"))
            info.mtime = 1.7e9 + 0.5  # fractional, as WebDataset writes it: a pax header
            content = None
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            elif "->" in name:
                info.type, info.linkname = tarfile.SYMTYPE, name.split("->")[1]
            else:
                content = f"{name} ".encode() * (number * 37 % 40)  # sizes around 512 too
                info.size = len(content)
            archive.addfile(info, None if content is None else io.BytesIO(content))
    return str(path)


LONG_DIR = "a" * 60 + "/" + "b" * 60
MEMBERS = [
    "s0.jpg",
    "s0.txt",
    "empty.txt",
    "folder/",
    "folder/s1.jpg",
    "s1->folder/s1.jpg",
    f"{LONG_DIR}/s2.jpg",  # a ustar prefix; GNU and pax write an extended header
    f"{LONG_DIR}/s2.txt",
    "ñandú/s3.txt",  # not ASCII: a pax header in pax format
    "s4.cls",
    "s4.txt",
]


@pytest.mark.parametrize(
    "tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
)
def test_every_kind_of_header_reads_as_webdataset_does(tmp_path: Path, tar_format: int) -> None:
    path = write_tar(tmp_path / "shard.tar", MEMBERS, tar_format)
    ours, errors = our_read(path)
    assert not errors
    assert contents(ours) == contents(webdataset_read(path)[0])
    assert sum(len(sample) - 2 for sample in ours) == len(MEMBERS) - 2  # but folder, link


def test_global_pax_header_applies_to_the_members_after_it(tmp_path: Path) -> None:
    # TarFile applies a global header's fields to every later member, here their names:
    # every plain member is "same.txt", a duplicate in the one sample after the first.
    names = ["s0.jpg", "s0.txt", "s1.jpg", "s1.txt"]
    path = write_tar(
        tmp_path / "shard.tar", names, tarfile.PAX_FORMAT, pax_headers={"path": "same.txt"}
    )
    ours, errors = our_read(path)
    theirs, their_errors = webdataset_read(path)
    assert contents(ours) == contents(theirs) == [{"__key__": "same", "txt": ANY}]
    assert [str(e) for e in errors] == [str(e) for e in their_errors]
    assert len(errors) == len(names) - 1


def rewrite_header(path: str, member: str, change: Any) -> None:
    """Passes the header of ``member`` through ``change`` and fixes its checksum."""
    data = bytearray(Path(path).read_bytes())
    with tarfile.open(path) as archive:
        start = archive.getmember(member).offset
    header = change(bytearray(data[start : start + 512]))
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    data[start : start + 512] = header
    Path(path).write_bytes(bytes(data))


def test_base256_size_reads_as_webdataset_does(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "shard.tar", MEMBERS[:5], tarfile.USTAR_FORMAT)
    size = len(MEMBERS[1].encode() + b" ") * 37

    def base256(header: bytearray) -> bytearray:
        header[124:136] = b"\x80" + size.to_bytes(11, "big")
        return header

    rewrite_header(path, "s0.txt", base256)
    ours, errors = our_read(path)
    assert not errors
    assert contents(ours) == contents(webdataset_read(path)[0])
    assert len(ours[0]["txt"]) == size


def test_malformed_pax_header_reads_as_webdataset_does(tmp_path: Path) -> None:
    (path,) = write_shards(tmp_path, [4])
    data = Path(path).read_bytes()
    with tarfile.open(path) as archive:
        offset = archive.getmember("s00002.jpg").offset
    # A record of length 0, which TarFile takes for the end of the archive.
    record = data.index(b" mtime=", offset)
    Path(path).write_bytes(data[: record - 2] + b"00" + data[record:])
    ours, errors = our_read(path)
    assert contents(ours) == contents(webdataset_read(path)[0])
    assert [sample["__key__"] for sample in ours] == ["s00000", "s00001"]
    # Where WebDataset's reader ends the shard without a word.
    assert [str(error) for error in errors] == [f"unreadable tar header at byte {offset}"]


def test_corrupt_or_cut_header_is_a_read_error(tmp_path: Path) -> None:
    # WebDataset's reader (TarFile) takes either for the end of the shard, without an error.
    path = write_tar(tmp_path / "shard.tar", MEMBERS, tarfile.USTAR_FORMAT)
    with tarfile.open(path) as archive:
        offset = archive.getmember("folder/s1.jpg").offset
    data = bytearray(Path(path).read_bytes())
    data[offset + 3] ^= 1  # the name, under a checksum that no longer matches
    for damaged in (bytes(data), bytes(data[: offset + 100])):
        Path(path).write_bytes(damaged)
        ours, errors = our_read(path)
        theirs, their_errors = webdataset_read(path)
        assert contents(ours) == contents(theirs)
        assert [sample["__key__"] for sample in ours] == ["s0", "empty"]
        assert not their_errors
        assert [str(error) for error in errors] == [f"unreadable tar header at byte {offset}"]


def test_plain_headers_are_read_without_tarfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = write_shards(tmp_path, [20])  # WebDataset's writer: a pax mtime per member
    expected = contents(webdataset_read(path)[0])
    calls = []
    real_next = tarfile.TarFile.next

    def counted(archive: tarfile.TarFile) -> tarfile.TarInfo | None:
        calls.append(archive.offset)
        return real_next(archive)

    monkeypatch.setattr(tarfile.TarFile, "next", counted)
    assert contents(our_read(path)[0]) == expected
    # The first header (read at open, which tries each compression from the start), and the
    # end of the archive: not the other 59 members.
    assert len(set(calls)) == 3
