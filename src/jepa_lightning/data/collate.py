"""Turning raw WebDataset samples into VL-JEPA batches, in data loader workers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jepa_lightning.encoders.base import SampleCodec
from jepa_lightning.encoders.text import collate_optional_texts


class SampleError(ValueError):
    """A sample that cannot be used (corrupt image, missing caption...).

    Args:
        key: The sample's ``__key__``.
        url: The shard it came from.
        reason: What is wrong.
    """

    def __init__(self, key: str, url: str, reason: str) -> None:
        super().__init__(f"sample {key!r} in shard {url!r}: {reason}")
        self.key = key
        self.url = url
        self.reason = reason


def caption_id(text: str) -> int:
    """A stable signed 64-bit id of a caption: equal texts get equal ids on every rank.

    Args:
        text: The caption.

    Returns:
        The id.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def decode_caption(data: bytes) -> str:
    """Decodes a caption without tokenising it.

    Args:
        data: UTF-8 bytes.

    Returns:
        The stripped text.

    Raises:
        ValueError: If the text is empty or not UTF-8.
    """
    text = data.decode("utf-8").strip()
    if not text:
        raise ValueError("empty text")
    return text


@dataclass(frozen=True)
class PairCollator:
    """Decodes and batches (X-modality, caption[, query]) samples.

    Args:
        inputs: The X-modality codec (an image codec for VL-JEPA, or a feature codec for
            cached X-encoder tokens).
        text: The caption/query codec (the Y-encoder's tokenizer); None keeps captions as
            text without token ids (for tools such as the feature cache).
        inputs_key: The batch key of the collated X-modality (``inputs``, or ``features``
            for cached X-encoder tokens, which the model uses instead of its X-encoder).
    """

    inputs: SampleCodec
    text: SampleCodec | None = None
    inputs_key: str = "inputs"

    def decode_sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Decodes one raw WebDataset sample.

        Args:
            sample: ``__key__``, ``__url__`` and the raw bytes per extension.

        Returns:
            ``key``, ``url``, ``inputs`` (decoded X-modality), ``caption``,
            ``query`` (or None) and ``meta`` (the ``json`` dict or ``{}``).

        Raises:
            SampleError: If the X-modality data or the caption is missing or corrupt.
        """
        key = str(sample.get("__key__", "?"))
        url = str(sample.get("__url__", "?"))
        extension = next((e for e in self.inputs.extensions if e in sample), None)
        if extension is None:
            raise SampleError(key, url, f"no {'/'.join(self.inputs.extensions)} member")
        if "txt" not in sample:
            raise SampleError(key, url, "no txt member (caption)")
        try:
            inputs = self.inputs.decode(sample[extension])
        except Exception as error:  # decoders raise many types for corrupt data
            raise SampleError(key, url, f"unreadable {extension}: {error}") from error
        try:
            text = sample["txt"]
            caption = decode_caption(text) if self.text is None else self.text.decode(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise SampleError(key, url, f"bad caption: {error}") from error
        meta: dict[str, Any] = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError as error:
                raise SampleError(key, url, f"bad json: {error}") from error
        query = meta.get("query") if isinstance(meta, dict) else None
        return {
            "key": key,
            "url": url,
            "inputs": inputs,
            "caption": caption,
            "query": query,
            "meta": meta,
        }

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Batches decoded samples.

        Args:
            samples: Outputs of :meth:`decode_sample`.

        Returns:
            The X-modality batch under :attr:`inputs_key`, ``pair_ids`` (stable caption ids:
            equal captions are positives), ``captions``, ``keys``, ``meta`` and, with a text
            codec, ``caption_ids``/``caption_mask`` and, when any sample has a query,
            ``query_ids``/``query_mask`` (all-False rows for samples without one).
        """
        captions = [s["caption"] for s in samples]
        batch: dict[str, Any] = {
            self.inputs_key: self.inputs.collate([s["inputs"] for s in samples]),
            "pair_ids": torch.tensor([caption_id(c) for c in captions], dtype=torch.int64),
            "captions": captions,
            "keys": [s["key"] for s in samples],
            "meta": [s["meta"] for s in samples],
        }
        if self.text is None:
            return batch
        tokens = self.text.collate(captions)
        batch["caption_ids"] = tokens["input_ids"]
        batch["caption_mask"] = tokens["attention_mask"].bool()
        queries = [s["query"] for s in samples]
        if any(queries):
            query_tokens = collate_optional_texts(self.text, queries)
            batch["query_ids"] = query_tokens["input_ids"]
            batch["query_mask"] = query_tokens["attention_mask"]
        return batch


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Number of samples in a collated batch."""
    captions: Tensor = batch["caption_ids"]
    return int(captions.shape[0])
