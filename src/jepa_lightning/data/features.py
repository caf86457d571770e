"""Reading the frozen-feature cache: the X-encoder's tokens, computed once, read instead of images.

A frozen X-encoder gives the same tokens for an input every epoch, so they can be computed once
(:func:`~jepa_lightning.tools.feature_cache.write_feature_cache`, or ``jepa-lightning data
cache``) and written as feature shards: each sample keeps its key, caption (``txt``) and
``json`` and replaces the input by the tokens (``feat``: the raw ``(n, dim)`` real tokens,
little-endian float16/bfloat16/float32). The folder's ``index.json`` records, under
``metadata["feature_cache"]``, the dtype and width and the *fingerprint* of the encoder that
made them: a hash of its :meth:`~jepa_lightning.encoders.ModalityEncoder.describe` (class,
token count and grid, and what subclasses add: source, image size, normalisation) and of its
weights (rounded to bfloat16, so the check survives a precision change and two random inits
differ). :class:`~jepa_lightning.data.datamodule.WebDataModule` recognises feature folders by
that metadata, checks the fingerprint against the model's X-encoder and collates the cached
tokens as the batch's ``x`` (an ``EncoderOutput``), for which the model skips its X-encoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jepa_lightning.data.pipeline import Shard
from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder

__all__ = [
    "DTYPES",
    "FEATURE_FIELD",
    "METADATA_KEY",
    "FeatureCodec",
    "check_feature_cache",
    "encoder_fingerprint",
    "feature_cache_of",
    "feature_codec",
]

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
