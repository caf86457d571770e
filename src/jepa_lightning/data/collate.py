"""Turning raw WebDataset samples into typed batches, in data loader workers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from jepa_lightning.batch import Batch
from jepa_lightning.encoders.base import SampleCodec
from jepa_lightning.encoders.text import collate_optional_texts, decode_text


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


@dataclass(frozen=True)
class PairCollator:
    """Decodes and batches (X-modality, caption[, query]) samples into a :class:`Batch`.

    Args:
        x: The X-modality codec (e.g. an image codec, or the feature codec of a feature
            cache, which collates cached tokens as an ``EncoderOutput``).
        text: The caption/query codec (the Y-encoder's tokenizer); None keeps captions as
            text without token ids (for tools such as the feature cache).
        x_fingerprint: The fingerprint of the model's X-encoder
            (:func:`~jepa_lightning.data.features.encoder_fingerprint`), which a feature
            cache must match; None where no model is involved.
        captions_required: Skip samples without a caption (training, evaluation); False
            keeps them with the caption ``""`` and no caption token (prediction, search).
    """

    x: SampleCodec
    text: SampleCodec | None = None
    x_fingerprint: dict[str, Any] | None = field(default=None, compare=False)
    captions_required: bool = True

    def for_training(self) -> PairCollator:
        """The collator of the training loader: the X codec's training variant, if it has one.

        A codec with a ``for_training()`` method (the clip codec: random clip starts instead
        of the centred clip) returns its training variant from it; other codecs are the same
        in training and evaluation.

        Returns:
            This collator, with the X codec's training variant.
        """
        for_training = getattr(self.x, "for_training", None)
        return self if for_training is None else replace(self, x=for_training())

    def decode_sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Decodes one raw WebDataset sample.

        Args:
            sample: ``__key__``, ``__url__`` and the raw bytes per extension.

        Returns:
            ``key``, ``url``, ``x`` (decoded X-modality), ``caption``, ``query`` (or None)
            and ``meta`` (the ``json`` dict or ``{}``).

        Raises:
            SampleError: If the X-modality data is missing or corrupt, or the caption is
                corrupt, or missing while ``captions_required``.
        """
        key = str(sample.get("__key__", "?"))
        url = str(sample.get("__url__", "?"))
        extension = next((e for e in self.x.extensions if e in sample), None)
        if extension is None:
            raise SampleError(key, url, f"no {'/'.join(self.x.extensions)} member")
        if "txt" not in sample and self.captions_required:
            raise SampleError(key, url, "no txt member (caption)")
        try:
            x = self.x.decode(sample[extension])
        except Exception as error:  # decoders raise many types for corrupt data
            raise SampleError(key, url, f"unreadable {extension}: {error}") from error
        try:
            caption = decode_text(sample["txt"]) if "txt" in sample else ""
        except (ValueError, UnicodeDecodeError) as error:
            raise SampleError(key, url, f"bad caption: {error}") from error
        meta: dict[str, Any] = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError as error:
                raise SampleError(key, url, f"bad json: {error}") from error
        query = meta.get("query") if isinstance(meta, dict) else None
        return {"key": key, "url": url, "x": x, "caption": caption, "query": query, "meta": meta}

    def collate(self, samples: Sequence[Mapping[str, Any]], skipped: int = 0) -> Batch:
        """Batches decoded samples.

        Args:
            samples: Outputs of :meth:`decode_sample`.
            skipped: Unreadable samples skipped since the previous batch.

        Returns:
            The batch; with a text codec, with caption tokens and, when any sample has a
            query, query tokens (all-False rows for samples without one).
        """
        captions = [s["caption"] for s in samples]
        batch = Batch(
            x=self.x.collate([s["x"] for s in samples]),
            pair_ids=torch.tensor([caption_id(c) for c in captions], dtype=torch.int64),
            keys=[s["key"] for s in samples],
            captions=captions,
            meta=[s["meta"] for s in samples],
            skipped=skipped,
        )
        if self.text is None:
            return batch
        tokens = collate_optional_texts(self.text, captions)
        batch.caption_ids = tokens["input_ids"]
        batch.caption_mask = tokens["attention_mask"].bool()
        queries = [s["query"] for s in samples]
        if any(queries):
            query_tokens = collate_optional_texts(self.text, queries)
            batch.query_ids = query_tokens["input_ids"]
            batch.query_mask = query_tokens["attention_mask"]
        return batch
