"""Writing the frozen-feature cache: an X-encoder run once over image shards.

The cache's format, and how training reads it, are described in
:mod:`jepa_lightning.data.features`. Only deterministic transforms can be cached; this
package's image path has no random augmentation (centre crop, resize), so the cache is exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.rank_zero import rank_zero_info
from lightning.fabric.utilities.seed import seed_everything
from torch import Tensor
from torch.utils.data import DataLoader

from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.features import DTYPES, FEATURE_FIELD, METADATA_KEY, encoder_fingerprint
from jepa_lightning.data.index import INDEX_FILENAME, ShardIndex, read_shard_index
from jepa_lightning.data.pipeline import (
    Shard,
    ShardSource,
    ShardStream,
    count_samples,
    resolve_shards,
)
from jepa_lightning.data.shard_reader import is_local_file
from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.registry import load_plugins, resolve_names
from jepa_lightning.tools.shards import ShardWriter

__all__ = ["cache_features", "ensure_feature_cache", "write_feature_cache"]

SHARD_PREFIX = "features"
"""Name prefix of the feature shards (``features-000000.tar``...)."""


def write_feature_cache(
    source: ShardSource,
    output: str,
    encoder: ModalityEncoder,
    dtype: str = "float16",
    batch_size: int = 64,
    samples_per_shard: int = 1000,
    num_workers: int = 2,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    multiprocessing_context: str | None = None,
) -> ShardIndex:
    """Runs a frozen X-encoder once over image shards and writes feature shards.

    Args:
        source: The image shards (folder, brace pattern, ``pipe:`` command, or a list).
        output: Output folder for the feature shards and their ``index.json``.
        encoder: The X-encoder, as the model to be trained builds it.
        dtype: Storage dtype: ``float16`` (default), ``bfloat16`` (for tokens beyond the
            float16 range) or ``float32``.
        batch_size: Images per encoder forward.
        samples_per_shard: Maximum number of samples per feature shard.
        num_workers: Data loader workers decoding images.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        overwrite: Replace feature shards already in ``output``.
        progress: Show a progress bar.
        multiprocessing_context: How the workers start (``forkserver``, ``spawn``,
            ``fork``); default: PyTorch's.

    Returns:
        The index written; unreadable samples are skipped and counted in its metadata
        (``feature_cache.skipped``). Its record lists the source shards, with the size and
        modification time of local ones (``source_files``), so that
        :func:`ensure_feature_cache` sees when they change.

    Raises:
        ValueError: If ``dtype`` is unknown, or the tokens overflow float16.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    shards = [
        shard if shard.num_samples is not None else Shard(shard.url, count_samples(shard.url))
        for shard in resolve_shards(source, "source")
    ]
    stream = ShardStream(shards, PairCollator(encoder.codec()), batch_size, mode="eval")
    context = multiprocessing_context if num_workers > 0 else None
    loader = DataLoader(
        stream, batch_size=None, num_workers=num_workers, multiprocessing_context=context
    )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = encoder.to(device).eval()
    record: dict[str, Any] = {
        "fingerprint": encoder_fingerprint(encoder),
        "dtype": dtype,
        "source": [shard.url for shard in shards],
        "source_files": _source_files(shards),
        "skipped": 0,
    }
    written: set[str] = set()
    batches: Any = loader
    if progress:
        from rich.progress import track

        batches = track(loader, total=len(stream), description="caching features")
    with ShardWriter(output, SHARD_PREFIX, samples_per_shard, overwrite=overwrite) as writer:
        for batch in batches:
            with torch.no_grad():
                tokens, mask = encoder(move_data_to_device(batch.x, device))
            stored = tokens.to(DTYPES[dtype])
            if not torch.isfinite(stored).all():
                raise ValueError(f"the tokens overflow {dtype}; use dtype=bfloat16")
            record["dim"] = tokens.shape[2]
            record["num_tokens"] = encoder.num_tokens
            record["skipped"] += batch.skipped
            rows = zip(
                batch.keys, batch.captions, batch.meta, stored.cpu(), mask.cpu(), strict=True
            )
            for key, caption, meta, row, real in rows:
                if key in written:  # a repeated sample (see ShardStream's eval mode)
                    continue
                sample = {"__key__": key, FEATURE_FIELD: _raw_bytes(row[real]), "txt": caption}
                if meta:
                    sample["json"] = meta
                writer.write(sample)
                written.add(key)
        writer.metadata[METADATA_KEY] = record
    assert writer.index is not None
    return writer.index


def _raw_bytes(tokens: Tensor) -> bytes:
    return bytes(tokens.contiguous().view(torch.uint8).numpy())


def _source_files(shards: list[Shard]) -> list[list[Any]]:
    """Each local shard's path, size and modification time: a rewritten shard changes them."""
    files = []
    for shard in shards:
        if is_local_file(shard.url):
            stat = os.stat(shard.url)
            files.append([shard.url, stat.st_size, stat.st_mtime_ns])
    return files


def _stale_reason(folder: Path, wanted: dict[str, Any], name: str) -> str | None:
    """Why ``folder`` does not hold the feature cache ``wanted`` describes; None if it does.

    Raises:
        ValueError: If ``folder`` holds shards that are not a feature cache.
    """
    if not (folder / INDEX_FILENAME).is_file():
        others = sorted(
            p.name for p in folder.glob("*.tar") if not p.name.startswith(f"{SHARD_PREFIX}-")
        )
        if others:
            raise ValueError(
                f"{name}: {folder} holds other shards ({', '.join(others[:3])}); refusing to "
                "write a feature cache among them (choose another folder)"
            )
        return "no complete cache there yet"
    try:
        index = read_shard_index(folder, check_files=True)
    except (OSError, ValueError) as error:
        return f"its index is unusable ({error})"
    record = index.metadata.get(METADATA_KEY)
    if record is None:
        raise ValueError(
            f"{name}: {folder} holds shards that are not a feature cache; refusing to "
            "overwrite them (choose another folder)"
        )
    if record.get("fingerprint", {}).get("hash") != wanted["fingerprint"]["hash"]:
        return "the X-encoder changed"
    if record.get("dtype") != wanted["dtype"]:
        return f"its dtype is {record.get('dtype')}, not {wanted['dtype']}"
    if record.get("source") != wanted["source"]:
        return "the training shards are others"
    if record.get("source_files") != wanted["source_files"]:
        return "a training shard was rewritten"
    return None


def ensure_feature_cache(
    source: ShardSource,
    output: str,
    encoder: ModalityEncoder,
    dtype: str = "float16",
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    multiprocessing_context: str | None = None,
    name: str = "feature cache",
) -> str:
    """Writes the feature cache of ``encoder`` over ``source`` unless ``output`` holds it.

    Cheap when the cache is current (reads ``index.json`` and stats the source shards), so a
    data module's ``prepare_data`` can call it every run. The cache is (re)written when there
    is none, its index is unreadable or lists a missing shard, or it was made by another
    encoder (fingerprint), in another dtype, from other shards, or from a local shard since
    rewritten (size or modification time). A streamed source (URL, ``pipe:``) is compared
    by its URLs only.

    Args:
        source: The image shards (folder, brace pattern, ``pipe:`` command, or a list).
        output: The cache's folder.
        encoder: The frozen X-encoder, as the model being trained holds it.
        dtype: Storage dtype: ``float16``, ``bfloat16`` or ``float32``.
        batch_size: Images per encoder forward.
        num_workers: Data loader workers decoding images.
        device: Where the encoder runs: ``auto`` (CUDA when available), ``cpu``, ``cuda:1``...
        multiprocessing_context: How the workers start; default: PyTorch's.
        name: The config key of ``output``, named in messages and errors.

    Returns:
        The absolute path of the cache's folder.

    Raises:
        ValueError: If the encoder is not frozen (its tokens change as it trains), ``dtype``
            is unknown, or ``output`` holds shards that are not a feature cache.
        FileNotFoundError: If a local source shard does not exist.
    """
    if not encoder.frozen:
        raise ValueError(
            f"{name}: the X-encoder trains, so its tokens change every step; only a frozen "
            "X-encoder's tokens can be cached"
        )
    if dtype not in DTYPES:
        raise ValueError(f"{name}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    shards = resolve_shards(source, "source")
    folder = Path(output).absolute()
    wanted = {
        "fingerprint": encoder_fingerprint(encoder),
        "dtype": dtype,
        "source": [shard.url for shard in shards],
        "source_files": _source_files(shards),
    }
    reason = _stale_reason(folder, wanted, name)
    if reason is None:
        return str(folder)
    rank_zero_info(f"{name}: writing the X-encoder's tokens to {folder} ({reason})")
    index = write_feature_cache(
        source,
        str(folder),
        encoder,
        dtype=dtype,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        overwrite=True,
        progress=True,
        multiprocessing_context=multiprocessing_context,
    )
    record = index.metadata[METADATA_KEY]
    rank_zero_info(
        f"{name}: {index.num_samples} samples cached ({record['skipped']} unreadable skipped)"
    )
    return str(folder)


def cache_features(
    training_config: str,
    source: ShardSource,
    output: str,
    dtype: str = "float16",
    batch_size: int = 64,
    samples_per_shard: int = 1000,
    num_workers: int = 2,
    device: str = "auto",
    overwrite: bool = False,
) -> str:
    """Writes the frozen-feature cache of a training config's X-encoder.

    The X-encoder is built from ``model.init_args.x_encoder`` of the config, after
    seeding with its ``seed_everything`` (a random-init encoder is then the one ``fit``
    builds; if not, the training run refuses the cache). Point ``data.train_shards`` (and
    ``data.val_shards``) at the output folders to train on the cache.

    Args:
        training_config: The training config (LightningCLI YAML).
        source: The image shards (folder, brace pattern, ``pipe:`` command, or a list).
        output: Output folder of the feature shards.
        dtype: Storage dtype: ``float16``, ``bfloat16`` or ``float32``.
        batch_size: Images per encoder forward.
        samples_per_shard: Maximum number of samples per feature shard.
        num_workers: Data loader workers decoding images.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        overwrite: Replace feature shards already in ``output``.

    Returns:
        The path of the written ``index.json``.

    Raises:
        ValueError: If the config has no ``model.init_args.x_encoder``.
    """
    document = yaml.safe_load(Path(training_config).read_text(encoding="utf-8")) or {}
    section = (document.get("model") or {}).get("init_args", {}).get("x_encoder")
    if section is None:
        raise ValueError(f"{training_config} has no model.init_args.x_encoder")
    seed = document.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        seed_everything(seed, verbose=False)
    load_plugins()  # installed encoders, by class name too
    parser = ArgumentParser()
    parser.add_subclass_arguments(ModalityEncoder, "encoder", required=True)
    config = parser.parse_object({"encoder": resolve_names(section)})
    encoder = parser.instantiate_classes(config).encoder
    index = write_feature_cache(
        source,
        output,
        encoder,
        dtype=dtype,
        batch_size=batch_size,
        samples_per_shard=samples_per_shard,
        num_workers=num_workers,
        device=device,
        overwrite=overwrite,
    )
    record = index.metadata[METADATA_KEY]
    print(
        f"wrote {index.num_samples} samples in {index.num_shards} feature shards to "
        f"{index.folder} ({record['num_tokens'] or 'variable'}x{record['dim']} {dtype} tokens; "
        f"{record['skipped']} unreadable samples skipped)"
    )
    return index.index_path
