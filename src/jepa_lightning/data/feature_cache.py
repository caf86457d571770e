"""The frozen-feature cache: the X-encoder's tokens, computed once and read instead of images.

A frozen X-encoder gives the same tokens for an image every epoch, so they can be computed once
(:func:`write_feature_cache`, or ``jepa-lightning data cache``) and written as feature shards:
each sample keeps its key, caption (``txt``) and ``json`` and replaces the image by the tokens
(``feat``: the raw ``(n, dim)`` real tokens, little-endian float16/bfloat16/float32). The folder's
``index.json`` records, under ``metadata["feature_cache"]``, the dtype and shape and the
*fingerprint* of the encoder that made them: a hash of the encoder's class, model source
(hub name, folder or config dict), input transforms (codec: resize and crop), normalisation
mean/std and weights (rounded to bfloat16, so the check survives a precision change and two
random inits differ). :class:`~jepa_lightning.data.datamodule.WebDataModule` recognises feature
folders by that metadata, checks the fingerprint against the model's X-encoder and yields
``features`` batches, for which ``VLJEPA`` skips its X-encoder.

Only deterministic transforms can be cached; this package's image path has no random
augmentation (resize the shorter side, centre crop), so the cache is exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.seed import seed_everything
from torch import Tensor
from torch.utils.data import DataLoader

from jepa_lightning.data.collate import PairCollator
from jepa_lightning.data.pipeline import (
    Shard,
    ShardSource,
    ShardStream,
    count_samples,
    resolve_shards,
)
from jepa_lightning.data.shards import ShardIndex, ShardWriter
from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder

METADATA_KEY = "feature_cache"
"""Key of the feature-cache record in a shard folder's ``index.json`` metadata."""

FEATURE_FIELD = "feat"
"""Sample field (tar member extension) holding the raw token bytes."""

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
"""Storage dtypes of cached tokens, by name."""


def encoder_fingerprint(encoder: ModalityEncoder) -> dict[str, Any]:
    """Identifies an X-encoder: what it computes from a sample, weights included.

    Args:
        encoder: The X-encoder (e.g. a :class:`~jepa_lightning.encoders.VisionEncoder`).

    Returns:
        ``hash`` (hex digest of everything below) and ``encoder``: its
        :meth:`~jepa_lightning.encoders.ModalityEncoder.describe` plus the hash of its weights.
    """
    weights = hashlib.blake2b(digest_size=16)
    for name, value in sorted(encoder.state_dict().items()):
        flat = value.detach().reshape(-1)
        if flat.is_floating_point():
            flat = flat.to(torch.bfloat16)
        weights.update(f"{name}:{tuple(value.shape)}:{flat.dtype}".encode())
        weights.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    description = {**encoder.describe(), "weights": weights.hexdigest()}
    text = json.dumps(description, sort_keys=True, default=str)
    return {"hash": hashlib.sha256(text.encode()).hexdigest(), "encoder": description}


@dataclass(frozen=True)
class FeatureCodec:
    """Decodes cached tokens (the ``feat`` field) and pads them into an ``EncoderOutput``.

    A sample stores only its real tokens, so variable-length X-encoders cache too.

    Args:
        dtype: Storage dtype name (a key of :data:`DTYPES`).
        dim: Width of one token.
        num_tokens: Tokens per sample for a fixed-length X-encoder; None when it varies.
    """

    dtype: str
    dim: int
    num_tokens: int | None = None
    extensions: tuple[str, ...] = (FEATURE_FIELD,)

    def decode(self, data: bytes) -> Tensor:
        """Decodes one sample's tokens.

        Args:
            data: The raw bytes.

        Returns:
            ``(n, dim)`` tokens in the storage dtype.

        Raises:
            ValueError: If the byte count is not a whole number of tokens, or not the fixed
                count (a truncated member).
        """
        dtype = DTYPES[self.dtype]
        row = self.dim * dtype.itemsize
        count, rest = divmod(len(data), row)
        if rest or count == 0 or (self.num_tokens is not None and count != self.num_tokens):
            expected = "a whole number of" if self.num_tokens is None else str(self.num_tokens)
            raise ValueError(f"{len(data)} bytes of tokens, expected {expected} x {row}")
        return torch.frombuffer(bytearray(data), dtype=dtype).view(count, self.dim)

    def collate(self, items: Sequence[Tensor]) -> EncoderOutput:
        """Pads tokens to the longest into ``(B, N, dim)`` with their padding mask."""
        tokens = torch.nn.utils.rnn.pad_sequence(list(items), batch_first=True)
        lengths = torch.tensor([len(item) for item in items])
        return EncoderOutput(tokens, torch.arange(tokens.shape[1]) < lengths[:, None])


def feature_cache_of(shards: list[Shard], name: str) -> dict[str, Any] | None:
    """The feature-cache record shared by ``shards``, or None for image shards.

    Args:
        shards: Resolved shards (their index metadata).
        name: The config key, named in errors.

    Returns:
        The ``metadata["feature_cache"]`` record of the shards' indexes, or None.

    Raises:
        ValueError: If feature and image shards are mixed, or caches of different encoders,
            dtypes or shapes are.
    """
    records = [shard.metadata.get(METADATA_KEY) for shard in shards]
    if all(record is None for record in records):
        return None
    if any(record is None for record in records):
        raise ValueError(
            f"{name} mixes feature-cache shards with image shards (or feature shards not "
            "given by their folder, whose index.json records the encoder); use one kind"
        )
    first = records[0]
    assert first is not None
    for record in records[1:]:
        assert record is not None
        fields = ("fingerprint", "dtype", "dim")
        if any(record[f] != first[f] for f in fields):
            raise ValueError(f"{name} mixes feature caches made differently")
    return first


def check_feature_cache(
    record: dict[str, Any], fingerprint: dict[str, Any] | None, name: str
) -> None:
    """Refuses a feature cache made by another X-encoder than the model's.

    Args:
        record: The cache's metadata record (see :func:`feature_cache_of`).
        fingerprint: The model's X-encoder fingerprint (:func:`encoder_fingerprint`).
        name: The config key, named in errors.

    Raises:
        ValueError: If there is no fingerprint to check against, or the fingerprints
            differ; the message shows both descriptions.
    """
    if fingerprint is None:
        raise ValueError(
            f"{name} is a feature cache, which needs the model's X-encoder fingerprint to be "
            "checked: pass the data module the model's batch_collator()"
        )
    if record["fingerprint"]["hash"] != fingerprint["hash"]:
        raise ValueError(
            f"{name} is a feature cache made by another X-encoder than the model's: "
            f"cache {json.dumps(record['fingerprint']['encoder'], default=str)}, model "
            f"{json.dumps(fingerprint['encoder'], default=str)}; rebuild it with "
            "`jepa-lightning data cache` for this encoder, or train on the image shards"
        )


def feature_codec(record: dict[str, Any]) -> FeatureCodec:
    """The codec of a feature cache.

    Args:
        record: The cache's metadata record.

    Returns:
        A codec for its ``feat`` fields.
    """
    num_tokens = record["fingerprint"]["encoder"].get("num_tokens")
    return FeatureCodec(record["dtype"], int(record["dim"]), num_tokens)


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
                tokens, mask = encoder(batch.x.to(device))
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
    parser = ArgumentParser()
    parser.add_subclass_arguments(ModalityEncoder, "encoder", required=True)
    encoder = parser.instantiate_classes(parser.parse_object({"encoder": section})).encoder
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
