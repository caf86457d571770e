"""Writing the frozen-feature cache: an X-encoder run once over image shards.

The cache's format, and how training reads it, are described in
:mod:`jepa_lightning.data.features`. Only deterministic transforms can be cached; this
package's image path has no random augmentation (centre crop, resize), so the cache is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.seed import seed_everything
from torch import Tensor
from torch.utils.data import DataLoader

from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.features import DTYPES, FEATURE_FIELD, METADATA_KEY, encoder_fingerprint
from jepa_lightning.data.index import ShardIndex
from jepa_lightning.data.pipeline import (
    Shard,
    ShardSource,
    ShardStream,
    count_samples,
    resolve_shards,
)
from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.encoders.registry import load_plugins, resolve_names
from jepa_lightning.tools.shards import ShardWriter

__all__ = ["cache_features", "write_feature_cache"]


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

    Returns:
        The index written; unreadable samples are skipped and counted in its metadata
        (``feature_cache.skipped``).

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
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = encoder.to(device).eval()
    record: dict[str, Any] = {
        "fingerprint": encoder_fingerprint(encoder),
        "dtype": dtype,
        "source": [shard.url for shard in shards],
        "skipped": 0,
    }
    written: set[str] = set()
    batches: Any = loader
    if progress:
        from rich.progress import track

        batches = track(loader, total=len(stream), description="caching features")
    with ShardWriter(output, "features", samples_per_shard, overwrite=overwrite) as writer:
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
