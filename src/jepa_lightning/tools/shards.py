"""Writing WebDataset shards with a shard-size index (``index.json``).

See :mod:`jepa_lightning.data.index` for the index format. The index is written last, so a
folder with an index is complete; shards are written under a ``.tmp`` name and renamed only
once complete, so a crash never leaves a half-written shard that looks finished.

Each sample is a dict with ``__key__`` and, by convention in this package, an image (``jpg``,
or pass-through encoded bytes under one of
:data:`~jepa_lightning.encoders.vision.IMAGE_EXTENSIONS`), a caption (``txt``) and a JSON
dict (``json``). Use one folder per split: there is one index per folder.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import webdataset as wds
from PIL import Image

from jepa_lightning.data.index import INDEX_FILENAME, ShardIndex, read_shard_index
from jepa_lightning.encoders.vision import IMAGE_EXTENSIONS

__all__ = ["ShardWriter", "encode_jpeg", "holds_generated_shards", "validate_key"]

TMP_SUFFIX = ".tmp"
"""Suffix of a shard (or index) that is still being written."""

DEFAULT_MTIME = 946684800
"""Fixed tar member mtime (2000-01-01 UTC), so the same samples give byte-identical shards.

An integer on purpose: a float mtime makes :mod:`tarfile` add a 1 KiB PAX header per member."""

_KEY_RE = re.compile(r"^[^.\s/][^.]*$")


def validate_key(key: str) -> str:
    """Check that a string can be used as a WebDataset sample key.

    WebDataset splits tar member names at the first ``.`` of the base name to separate the key
    from the field (extension), so a key must not contain dots. It must also be non-empty, not
    start with ``/`` or whitespace, and not end with ``/``.

    Args:
        key: The candidate key.

    Returns:
        The key, unchanged.

    Raises:
        ValueError: If the key is not usable.
    """
    if not isinstance(key, str) or not _KEY_RE.match(key) or key.endswith("/"):
        raise ValueError(
            f"invalid sample key {key!r}: keys must be non-empty, contain no '.', and not "
            "start with '/' or whitespace or end with '/'"
        )
    return key


def holds_generated_shards(folder: str | Path, wanted: Mapping[str, Any], name: str) -> bool:
    """Whether ``folder`` already holds exactly the generated shards that ``wanted`` describes.

    For the generated data sets' ``ensure_*`` functions, which write their shards on first use:
    cheap when the data exist (reads ``index.json``).

    Args:
        folder: The split's shard folder.
        wanted: The metadata the generator records in ``index.json``, with ``generator`` and
            ``split`` keys.
        name: The data set's name, for errors.

    Returns:
        True when the index lists existing shards with metadata equal to ``wanted``; False
        when the shards must be (re)written: no or an unreadable index, a listed shard
        missing, or other metadata (another generator version or other parameters).

    Raises:
        ValueError: If the folder holds shards of another generator, or of another split.
    """
    folder = Path(folder).absolute()
    if not (folder / INDEX_FILENAME).is_file():
        return False
    try:
        index = read_shard_index(folder, check_files=True)
    except (OSError, ValueError):
        return False
    if index.metadata.get("generator") != wanted["generator"]:
        raise ValueError(
            f"{folder} holds shards that the {name} generator did not write; "
            "refusing to overwrite them (choose another folder)"
        )
    if index.metadata.get("split") != wanted["split"]:
        raise ValueError(
            f"{folder} holds the {name} {index.metadata.get('split')!r} split, not "
            f"{wanted['split']!r}; use one folder per split (e.g. {folder.parent}/train and "
            f"{folder.parent}/val)"
        )
    return bool(json.loads(json.dumps(index.metadata)) == json.loads(json.dumps(wanted)))


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Encode a PIL image as JPEG bytes.

    Chroma is not subsampled (4:4:4), which keeps colours of small objects crisp.

    Args:
        image: The image; converted to RGB unless it is RGB or greyscale (``L``).
        quality: JPEG quality, 1 to 100.

    Returns:
        The encoded JPEG file as bytes.
    """
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Write samples into size-capped WebDataset shards plus an ``index.json``.

    Shards are named ``{prefix}-{index:06d}.tar`` and hold at most ``samples_per_shard``
    samples each. A shard is written as ``<name>.tmp`` and renamed when complete; the index is
    written (atomically) by :meth:`close`. Used as a context manager, an exception inside the
    ``with`` block calls :meth:`abort` instead: the partial shard is deleted and no index is
    written, so the folder is never mistaken for a complete data set.

    Example::

        with ShardWriter("data/train", prefix="train", metadata={"source": "mine"}) as writer:
            writer.write_sample("000001", image, "a red circle", {"label": 3})
        index = writer.index

    Args:
        folder: Output folder (created if missing). One folder holds one index, so use one
            folder per split.
        prefix: Shard name prefix, e.g. ``"train"``.
        samples_per_shard: Maximum number of samples per shard.
        metadata: Free-form JSON-serialisable dict stored in the index.
        overwrite: If the folder already has an index or shards with this prefix, delete them
            first; otherwise raise ``FileExistsError``.
        jpeg_quality: JPEG quality used when a sample's image is given as a PIL image.
        mtime: Modification time stored for tar members; a fixed value (the default) makes the
            same samples give byte-identical shards. ``None`` uses the current time (whole seconds).

    Raises:
        ValueError: If ``samples_per_shard`` < 1 or the prefix is unusable.
        FileExistsError: If the folder already holds shards or an index and not ``overwrite``.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        prefix: str = "train",
        samples_per_shard: int = 1000,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        jpeg_quality: int = 95,
        mtime: int | None = DEFAULT_MTIME,
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        if not prefix or "/" in prefix or prefix.startswith(".") or "*" in prefix:
            raise ValueError(f"invalid shard prefix {prefix!r}")
        self.folder = Path(folder).absolute()
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.jpeg_quality = jpeg_quality
        self.mtime = int(time.time()) if mtime is None else int(mtime)
        json.dumps(self.metadata)  # fail early if the metadata cannot be written
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prepare_folder(overwrite)

        self._shards: list[tuple[str, int]] = []
        self._keys: set[str] = set()
        self._file: io.BufferedWriter | None = None
        self._tar: wds.TarWriter | None = None
        self._current_name: str | None = None
        self._current_count = 0
        self._closed = False
        self.index: ShardIndex | None = None

    # ----------------------------------------------------------------------------- folder
    def _existing(self) -> list[Path]:
        index = self.folder / INDEX_FILENAME
        found = [index] if index.exists() else []
        found += sorted(self.folder.glob(f"{glob.escape(self.prefix)}-*.tar"))
        found += sorted(self.folder.glob(f"{glob.escape(self.prefix)}-*.tar{TMP_SUFFIX}"))
        return found

    def _prepare_folder(self, overwrite: bool) -> None:
        existing = self._existing()
        if not existing:
            return
        if not overwrite:
            raise FileExistsError(
                f"{self.folder} already contains shards or an index "
                f"({', '.join(p.name for p in existing[:3])}); pass overwrite=True "
                "(--overwrite true) to replace them"
            )
        index_path = self.folder / INDEX_FILENAME
        old_shards: list[Path] = []
        if index_path.exists():
            try:
                old = read_shard_index(index_path, check_files=False)
                old_shards = [Path(url) for url in old.urls if Path(url).parent == self.folder]
            except ValueError:
                pass
            index_path.unlink()  # first, so an interrupted rewrite leaves no index behind
        for path in old_shards + existing:
            if path.exists() and path.suffix in (".tar", TMP_SUFFIX):
                path.unlink()

    # ----------------------------------------------------------------------------- writing
    @property
    def num_samples(self) -> int:
        """Number of samples written so far."""
        return sum(count for _, count in self._shards) + self._current_count

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{len(self._shards):06d}.tar"
        self._current_name = name
        self._file = open(self.folder / (name + TMP_SUFFIX), "wb")  # noqa: SIM115
        self._tar = wds.TarWriter(
            self._file, encoder=False, mtime=self.mtime, user="jepa", group="jepa"
        )
        self._current_count = 0

    def _finish_shard(self) -> None:
        if self._tar is None or self._file is None or self._current_name is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._current_name
        os.replace(self.folder / (name + TMP_SUFFIX), self.folder / name)
        self._shards.append((name, self._current_count))
        self._tar, self._file, self._current_name, self._current_count = None, None, None, 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Write one raw sample.

        Args:
            sample: A dict with a ``__key__`` (see :func:`validate_key`) and fields mapping an
                extension to ``bytes`` (written as is), ``str`` (UTF-8) or, for ``json``, a
                dict/list (UTF-8 JSON).

        Raises:
            RuntimeError: If the writer is closed.
            ValueError: If the key is invalid or repeated, or a field has an unsupported type.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        key = validate_key(sample.get("__key__", ""))
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        encoded: dict[str, Any] = {"__key__": key}
        for name, value in sample.items():
            if name == "__key__":
                continue
            if name.startswith("_") or not name or "/" in name:
                raise ValueError(f"invalid field name {name!r} in sample {key!r}")
            if isinstance(value, (bytes, bytearray, memoryview)):
                encoded[name] = bytes(value)
            elif isinstance(value, str):
                encoded[name] = value.encode("utf-8")
            elif name.endswith("json") and isinstance(value, (dict, list)):
                encoded[name] = json.dumps(value, ensure_ascii=False).encode("utf-8")
            else:
                raise ValueError(
                    f"field {name!r} of sample {key!r} must be bytes or str "
                    f"(or a dict for 'json'), got {type(value).__name__}"
                )
        if len(encoded) == 1:
            raise ValueError(f"sample {key!r} has no fields")
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None
        self._tar.write(encoded)
        self._keys.add(key)
        self._current_count += 1
        if self._current_count >= self.samples_per_shard:
            self._finish_shard()

    def write_sample(
        self,
        key: str,
        image: Image.Image | bytes,
        caption: str,
        meta: Mapping[str, Any] | None = None,
        image_ext: str = "jpg",
    ) -> None:
        """Write one image-caption sample (``jpg``/``png``/... + ``txt`` + ``json``).

        Args:
            key: Sample key (no dots).
            image: A PIL image (encoded as JPEG, field ``jpg``) or already encoded image bytes,
                stored as is under the field ``image_ext``.
            caption: Caption text, stored as UTF-8 ``txt``.
            meta: Optional JSON-serialisable dict stored as ``json``.
            image_ext: Field for encoded bytes: one of :data:`IMAGE_EXTENSIONS`.
                Ignored for PIL images.

        Raises:
            ValueError: If ``image_ext`` is unsupported, or as for :meth:`write`.
        """
        sample: dict[str, Any] = {"__key__": key}
        if isinstance(image, Image.Image):
            sample["jpg"] = encode_jpeg(image, self.jpeg_quality)
        else:
            ext = image_ext.lower().lstrip(".")
            if ext not in IMAGE_EXTENSIONS:
                raise ValueError(
                    f"unsupported image extension {image_ext!r} for sample {key!r}; "
                    f"expected one of {', '.join(IMAGE_EXTENSIONS)}"
                )
            sample[ext] = image
        sample["txt"] = caption
        if meta is not None:
            sample["json"] = dict(meta)
        self.write(sample)

    # ----------------------------------------------------------------------------- closing
    def close(self) -> ShardIndex:
        """Finish the last shard and write ``index.json``.

        Returns:
            The index that was written (also stored as ``self.index``). Calling ``close`` again
            returns the same index.

        Raises:
            RuntimeError: If the writer was aborted.
        """
        if self._closed:
            if self.index is None:
                raise RuntimeError("ShardWriter was aborted; no index was written")
            return self.index
        self._finish_shard()
        index = ShardIndex(
            folder=str(self.folder),
            shards=list(self._shards),
            num_samples=sum(count for _, count in self._shards),
            metadata=self.metadata,
        )
        _write_json_atomic(self.folder / INDEX_FILENAME, index.to_dict())
        self._closed = True
        self.index = index
        return index

    def abort(self) -> None:
        """Stop writing: delete the partially written shard and do not write an index.

        Completed shards are left in place; without an index the folder is incomplete.
        """
        if self._closed:
            return
        self._closed = True
        if self._tar is not None and self._file is not None:
            try:
                self._tar.close()
            finally:
                self._file.close()
        if self._current_name is not None:
            (self.folder / (self._current_name + TMP_SUFFIX)).unlink(missing_ok=True)
        self._tar, self._file, self._current_name = None, None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
