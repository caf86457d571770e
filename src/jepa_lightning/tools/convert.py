"""Convert a folder of users' images or clips with captions into WebDataset shards + ``index.json``.

Media: images (``jpg``, ``png``, ``webp``), video files (``mp4``, ``webm``, ``avi``: decoded in
full with PyAV as a check, stored as their original bytes under their extension) and frame
folders (a folder of images, one per frame, in natural name order: ``frame_2`` before
``frame_10``), packed as an uncompressed ``frames.tar`` member (``000000.jpg``, ...). With
side-car captions, ``clip/`` (a frame folder) is captioned by ``clip.txt`` beside it.

Captions come from one of:

* side-car text files: ``photo.jpg`` is captioned by ``photo.txt`` next to it (when no caption
  file is given); the folder is searched recursively;
* a CSV (or TSV) file with a header row, with a column holding the image path relative to the
  image folder and a column holding the caption;
* a JSONL file (one JSON object per line) or a JSON file (a list of objects) with the same
  two fields.

A row per caption: a file listed with several captions gives several samples (keys get a
``_1``, ``_2``... suffix). Images are verified by decoding them with PIL and stored as their
original bytes (no re-encoding) under ``jpg``, ``png`` or ``webp`` according to their actual
format; captions are stored as ``txt`` and ``{"source": <relative path>}`` as ``json``, with
every other column (CSV) or field (JSON/JSONL) of the row, or the fields of a side-car
``photo.json``: e.g. ``labels`` (``{"colour": "red"}``, read by the zero-shot callback),
``query``, ``answer`` and ``candidates`` (questions, for VQA). A CSV cell holding a JSON object
or list is parsed. Files that cannot be used are skipped and listed in the returned
:class:`ConvertReport`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from jepa_lightning.data.index import INDEX_FILENAME
from jepa_lightning.encoders.video import FRAMES_FIELD, VIDEO_EXTENSIONS, probe_video
from jepa_lightning.encoders.vision import IMAGE_EXTENSIONS
from jepa_lightning.tools.shards import TMP_SUFFIX, ShardWriter

__all__ = ["SKIP_REASONS", "ConvertReport", "convert_folder", "key_from_path"]

_FORMAT_TO_FIELD = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}  # MPO: camera JPEG

SKIP_REASONS: dict[str, str] = {
    "unsupported_extension": "unsupported file extension",
    "missing_image": "image file listed in the captions does not exist",
    "corrupt_image": "image cannot be decoded (corrupt, truncated or not an image)",
    "unsupported_format": "image decodes but is not JPEG, PNG or WebP",
    "missing_caption": "no caption for the image",
    "empty_caption": "caption is empty",
    "unreadable_caption": "caption file is not UTF-8 text",
    "invalid_record": "caption file entry without an image path, or a bad side-car .json",
    "corrupt_video": "video cannot be decoded (corrupt, truncated or no video stream)",
    "corrupt_frames": "frame folder without images, or with an image that cannot be decoded",
}
"""Reasons for skipping a file, as used in :attr:`ConvertReport.skipped_files`."""

_CAPTION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json"}
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]+")
_MAX_KEY_LENGTH = 90


@dataclass
class ConvertReport:
    """What :func:`convert_folder` did.

    Attributes:
        output: Absolute path of the output folder.
        written: Number of samples written.
        num_shards: Number of shards written.
        skipped_files: ``(reason, file)`` for every skipped file or caption entry; reasons are
            keys of :data:`SKIP_REASONS`, files are relative to the image folder (or a caption
            file location such as ``captions.jsonl:12``).
    """

    output: str
    written: int = 0
    num_shards: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Number of skipped files or caption entries."""
        return len(self.skipped_files)

    @property
    def reasons(self) -> Counter[str]:
        """Number of skipped items per reason."""
        return Counter(reason for reason, _ in self.skipped_files)

    def summary(self, max_files: int = 3) -> str:
        """Return a short human-readable summary.

        Args:
            max_files: How many example file names to show per skip reason.

        Returns:
            A few lines of text.
        """
        lines = [
            f"wrote {self.written} samples in {self.num_shards} shard(s) to {self.output}",
        ]
        if self.skipped:
            lines.append(f"skipped {self.skipped}:")
            for reason, count in sorted(self.reasons.items()):
                names = [name for why, name in self.skipped_files if why == reason]
                shown = ", ".join(names[:max_files]) + (", ..." if len(names) > max_files else "")
                lines.append(f"  {count} x {SKIP_REASONS.get(reason, reason)}: {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def key_from_path(relative_path: str) -> str:
    """Derive a WebDataset sample key from an image path relative to the image folder.

    The extension is removed and every run of characters other than ASCII letters, digits,
    ``_`` and ``-`` (including dots, which WebDataset would take as an extension separator) is
    replaced by ``_``; sub-folders are kept as ``/``-separated key parts. Very long keys are
    shortened and made unique with a hash.

    Args:
        relative_path: Path such as ``"holidays/img.001.jpg"`` (``/`` or OS separators).

    Returns:
        A key such as ``"holidays/img_001"``.
    """
    path = Path(relative_path)
    stem_parts = list(path.parent.parts) + [path.stem]
    parts = [_UNSAFE_KEY_CHARS.sub("_", part).strip("_") or "_" for part in stem_parts]
    parts = [part for part in parts if part not in ("", ".")] or ["_"]
    key = "/".join(parts)
    if len(key) > _MAX_KEY_LENGTH:
        digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=6).hexdigest()
        key = f"{key[: _MAX_KEY_LENGTH - 13].rstrip('/')}_{digest}"
    return key


def _is_image(path: Path) -> bool:
    """Whether the file's extension (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    return path.suffix.lower().removeprefix(".") in IMAGE_EXTENSIONS


def _is_video(path: Path) -> bool:
    """Whether the file's extension (any case) is one of the video formats."""
    return path.suffix.lower().removeprefix(".") in VIDEO_EXTENSIONS


def _is_media(path: Path) -> bool:
    """An image or video file, or a folder (of frames)."""
    return path.is_dir() or _is_image(path) or _is_video(path)


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _pack_frames(folder: Path) -> bytes:
    """A frame folder's images, checked, as an uncompressed tar (``000000.<ext>``, ...).

    Raises:
        ValueError: If the folder holds no image or an image cannot be decoded.
    """
    frames = sorted(
        (p for p in folder.iterdir() if _is_image(p)), key=lambda p: _natural_key(p.name)
    )
    if not frames:
        raise ValueError(f"no images in {folder}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for number, frame in enumerate(frames):
            data = frame.read_bytes()
            frame_field = _check_image(data)
            if not frame_field:
                raise ValueError(f"frame {frame.name} cannot be decoded")
            info = tarfile.TarInfo(f"{number:06d}.{frame_field}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_media(path: Path) -> tuple[str, bytes]:
    """The sample field and bytes of an image, video or frame folder.

    Returns:
        ``(field, data)``; ``field`` is a skip reason of :data:`SKIP_REASONS` with empty
        ``data`` when the file cannot be used.
    """
    if path.is_dir():
        try:
            return FRAMES_FIELD, _pack_frames(path)
        except (OSError, ValueError):
            return "corrupt_frames", b""
    try:
        data = path.read_bytes()
    except OSError:
        return ("corrupt_video" if _is_video(path) else "corrupt_image"), b""
    if _is_video(path):
        try:
            probe_video(data)
        except ImportError:
            raise
        except Exception:  # noqa: BLE001 - FFmpeg raises many kinds of errors for bad files
            return "corrupt_video", b""
        return path.suffix.lower().removeprefix("."), data
    image_field = _check_image(data)
    if image_field is None:
        return "corrupt_image", b""
    return (image_field or "unsupported_format"), (data if image_field else b"")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _scan(root: Path, exclude: Path | None) -> list[Path]:
    """All non-hidden files under ``root`` (sorted), except those under ``exclude``.

    A folder captioned by a side-car ``<folder>.txt`` is a frame folder: listed itself, not
    its files.
    """
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        kept = sorted(
            name
            for name in subdirs
            if not name.startswith(".") and (exclude is None or (here / name) != exclude)
        )
        clips = [name for name in kept if (here / f"{name}.txt").is_file()]
        subdirs[:] = [name for name in kept if name not in clips]
        found.extend(here / name for name in sorted(files) if not name.startswith("."))
        found.extend(here / name for name in clips)
    return found


_Record = tuple[str, object, object, dict[str, object]]
"""A caption file's row: its location, image path, caption and other fields."""


def _cell(value: str | None) -> object:
    """A CSV cell; one that holds a JSON object or list is parsed."""
    text = (value or "").strip()
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def _records_csv(
    path: Path, delimiter: str, image_column: str, caption_column: str
) -> Iterator[_Record]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        missing = [c for c in (image_column, caption_column) if c not in columns]
        if missing:
            raise ValueError(
                f"caption file {path} has no column(s) {missing}; found {columns}. "
                "Set image_column / caption_column."
            )
        for row in reader:
            location = f"{path.name}:{reader.line_num}"
            extra = {k: _cell(v) for k, v in row.items() if k not in (image_column, caption_column)}
            yield location, row.get(image_column), row.get(caption_column), extra


def _records_json(
    path: Path, lines: bool, image_column: str, caption_column: str
) -> Iterator[_Record]:
    text = path.read_text(encoding="utf-8-sig")
    entries: Iterable[tuple[str, object]]
    if lines:
        parsed: list[tuple[str, object]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parsed.append((f"{path.name}:{number}", json.loads(line)))
            except json.JSONDecodeError:
                parsed.append((f"{path.name}:{number}", None))
        entries = parsed
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"caption file {path} is not valid JSON: {error}") from error
        if not isinstance(document, list):
            raise ValueError(f"caption file {path} must hold a JSON list of objects")
        entries = [(f"{path.name}[{i}]", entry) for i, entry in enumerate(document)]
    for location, entry in entries:
        if not isinstance(entry, dict):
            yield location, None, None, {}
        else:
            extra = {k: v for k, v in entry.items() if k not in (image_column, caption_column)}
            yield location, entry.get(image_column), entry.get(caption_column), extra


def _caption_records(captions: Path, image_column: str, caption_column: str) -> Iterator[_Record]:
    kind = _CAPTION_FORMATS.get(captions.suffix.lower())
    if kind is None:
        raise ValueError(
            f"unknown caption file format {captions}: expected one of "
            f"{', '.join(sorted(_CAPTION_FORMATS))} (or no caption file for side-car .txt files)"
        )
    if kind in ("csv", "tsv"):
        yield from _records_csv(
            captions, "," if kind == "csv" else "\t", image_column, caption_column
        )
    else:
        yield from _records_json(captions, kind == "jsonl", image_column, caption_column)


@dataclass
class _Item:
    path: Path
    relative: str
    caption: str
    meta: dict[str, object] = field(default_factory=dict)


def _collect_sidecar(root: Path, files: list[Path], report: ConvertReport) -> list[_Item]:
    items = []
    for path in files:
        relative = _relative(path, root)
        if path.suffix.lower() in (".txt", ".json"):  # side-car captions and metadata
            continue
        if not _is_media(path):
            report.skipped_files.append(("unsupported_extension", relative))
            continue
        caption_path = (
            path.with_name(path.stem + ".txt")
            if path.is_file()
            else path.with_name(path.name + ".txt")
        )
        if not caption_path.is_file():
            alternative = path.with_name(path.name + ".txt")  # photo.jpg.txt
            if not alternative.is_file():
                report.skipped_files.append(("missing_caption", relative))
                continue
            caption_path = alternative
        try:
            caption = caption_path.read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError:
            report.skipped_files.append(("unreadable_caption", _relative(caption_path, root)))
            continue
        if not caption:
            report.skipped_files.append(("empty_caption", relative))
            continue
        meta_path = caption_path.with_suffix(".json")
        meta: object = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = None
        if not isinstance(meta, dict):  # a side-car .json that holds no object
            report.skipped_files.append(("invalid_record", _relative(meta_path, root)))
            continue
        items.append(_Item(path, relative, caption, meta))
    return items


def _collect_listed(
    root: Path,
    files: list[Path],
    captions: Path,
    image_column: str,
    caption_column: str,
    report: ConvertReport,
) -> list[_Item]:
    items = []
    listed: set[Path] = set()
    for location, image, caption, extra in _caption_records(captions, image_column, caption_column):
        if not isinstance(image, str) or not image.strip():
            report.skipped_files.append(("invalid_record", location))
            continue
        path = (root / image.strip()).resolve()
        relative = _relative(path, root)
        listed.add(path)
        if not path.is_dir() and not _is_media(path):
            report.skipped_files.append(("unsupported_extension", relative))
        elif not path.exists():
            report.skipped_files.append(("missing_image", relative))
        elif caption is None:
            report.skipped_files.append(("missing_caption", relative))
        elif not str(caption).strip():
            report.skipped_files.append(("empty_caption", relative))
        else:
            items.append(_Item(path, relative, str(caption).strip(), extra))
    for path in files:  # media in the folder that the caption file does not mention
        resolved = path.resolve()
        in_frame_folder = any(parent in listed for parent in resolved.parents)
        if _is_media(path) and resolved not in listed and not in_frame_folder:
            report.skipped_files.append(("missing_caption", _relative(path, root)))
    return items


def _check_image(data: bytes) -> str | None:
    """Return the field for JPEG/PNG/WebP bytes, ``""`` for other formats, ``None`` if corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or ""
                image.load()
    except Exception:  # noqa: BLE001 - PIL raises many kinds of errors for bad files
        return None
    return _FORMAT_TO_FIELD.get(image_format, "")


def _checked_paths(
    images: str, captions: str | None, output: str | None, overwrite: bool
) -> tuple[Path, Path | None, Path]:
    """The image folder, caption file and output folder of :func:`convert_folder`, checked.

    A non-empty output folder is cleared of shards and ``index.json`` (with ``overwrite``).

    Returns:
        The resolved image folder, caption file (None for side-car captions) and output.

    Raises:
        FileNotFoundError: If the image folder or the caption file does not exist.
        ValueError: If the caption file has an unknown format, or the output folder is not
            empty (without ``overwrite``), is not a folder or is the image folder.
    """
    root = Path(images).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    caption_path = None
    if captions is not None:
        caption_path = Path(captions).expanduser().resolve()
        if not caption_path.is_file():
            raise FileNotFoundError(f"caption file not found: {caption_path}")
        if caption_path.suffix.lower() not in _CAPTION_FORMATS:
            raise ValueError(
                f"unknown caption file format {caption_path}: expected one of "
                f"{', '.join(sorted(_CAPTION_FORMATS))}, or no caption file for side-car .txt"
            )
    out = Path(output).expanduser().resolve() if output else root.with_name(root.name + "-shards")
    if out == root:
        raise ValueError(f"output folder {out} must differ from the image folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {out} is not empty; pass overwrite=True (--overwrite true) "
                "to replace"
            )
        for child in out.iterdir():
            if child.is_file() and (
                child.suffix in (".tar", TMP_SUFFIX) or child.name == INDEX_FILENAME
            ):
                child.unlink()
    return root, caption_path, out


def _write_items(items: Iterable[_Item], writer: ShardWriter, report: ConvertReport) -> None:
    """Writes every readable item as a sample with a unique key; counts it in ``report``."""
    used_keys: set[str] = set()
    for item in items:
        media_field, data = _read_media(item.path)
        if not data:
            report.skipped_files.append((media_field, item.relative))
            continue
        base = key_from_path(item.relative)
        key, suffix = base, 0
        while key in used_keys:  # several captions per image, or sanitised names clash
            suffix += 1
            key = f"{base}_{suffix}"
        used_keys.add(key)
        meta = {**item.meta, "source": item.relative}
        writer.write({"__key__": key, media_field: data, "txt": item.caption, "json": meta})
        report.written += 1


def convert_folder(
    images: str,
    captions: str | None = None,
    output: str | None = None,
    samples_per_shard: int = 1000,
    prefix: str = "train",
    caption_column: str = "caption",
    image_column: str = "image",
    shuffle: bool = False,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> ConvertReport:
    """Convert a folder of images with captions into WebDataset shards plus ``index.json``.

    Args:
        images: Folder with the images (searched recursively; hidden files are ignored).
        captions: Caption file: ``.csv``/``.tsv`` (with a header row), ``.jsonl`` or ``.json``
            (a list of objects), with image paths relative to ``images``. ``None``: read the
            caption of ``photo.jpg`` from a side-car ``photo.txt`` (or ``photo.jpg.txt``).
        output: Output folder for the shards and ``index.json``; created if missing. Default:
            a sibling of the image folder named ``<images>-shards``.
        samples_per_shard: Maximum number of samples per shard.
        prefix: Shard name prefix (shards are ``{prefix}-000000.tar``, ...), e.g. the split.
        caption_column: Caption column (CSV) or field (JSON/JSONL).
        image_column: Image path column (CSV) or field (JSON/JSONL).
        shuffle: Shuffle the samples (with ``seed``) before writing; otherwise they are written
            in caption-file order, or sorted by path for side-car captions.
        seed: Random seed for ``shuffle``.
        progress: Show a progress bar while writing.
        overwrite: Accept a non-empty output folder; shards and ``index.json`` already in it
            are deleted (other files are kept).

    Returns:
        A report with the number of written samples and the skipped files with reasons. Its
        summary is also printed.

    Raises:
        FileNotFoundError: If the image folder or the caption file does not exist.
        ValueError: If the caption file has an unknown format or lacks the columns, the output
            folder is not empty (without ``overwrite``) or is the image folder, or no sample
            can be converted.
    """
    root, caption_path, out = _checked_paths(images, captions, output, overwrite)
    report = ConvertReport(output=str(out))
    files = _scan(root, exclude=out)
    if caption_path is None:
        items = _collect_sidecar(root, files, report)
    else:
        items = _collect_listed(root, files, caption_path, image_column, caption_column, report)
    if shuffle:
        random.Random(seed).shuffle(items)

    metadata = {
        "converter": "jepa-lightning/convert",
        "source": str(root),
        "captions": str(caption_path) if caption_path else "side-car .txt",
        "shuffle": shuffle,
        "seed": seed,
    }
    writer = ShardWriter(
        out, prefix=prefix, samples_per_shard=samples_per_shard, metadata=metadata, overwrite=True
    )
    failed = True
    try:
        tracked: Iterable[_Item] = items
        if progress and items:
            from rich.progress import track

            tracked = track(items, description="converting", total=len(items))
        _write_items(tracked, writer, report)
        if report.written == 0:
            raise ValueError(
                f"no usable samples in {root}"
                + (f" with captions from {caption_path}" if caption_path else " (side-car .txt)")
                + f"\n{report.summary()}"
            )
        index = writer.close()
        failed = False
    finally:
        if failed:
            writer.abort()
    report.num_shards = index.num_shards
    print(report.summary())
    return report
