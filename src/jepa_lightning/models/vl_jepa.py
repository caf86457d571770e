"""The VL-JEPA model core: encoders, predictor and projection, shared by training and inference."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_lightning.batch import Batch
from jepa_lightning.encoders.base import EncoderOutput, ModalityEncoder
from jepa_lightning.encoders.hf import ModelSource
from jepa_lightning.encoders.text import TextEncoder, collate_optional_texts, masked_mean
from jepa_lightning.predictor import DEFAULT_PREDICTOR_LM, Predictor


class VLJEPAModel(nn.Module):
    """VL-JEPA as a plain module: an X-encoder, a Y-encoder, a predictor and a projection.

    * ``x_tokens``: the X-encoder's tokens and padding mask of a batch of inputs;
    * ``predict``: ``ŝ``, the predictor's embedding of X tokens (and an optional query);
    * ``embed_text``: ``s``, the Y-encoder's embedding of texts (masked-mean pooled, projected);
    * ``embed_inputs`` / ``embed_texts``: unit-norm retrieval embeddings of raw inputs
      (optionally with text queries) and of texts.

    The LightningModules, the export and inference all run these; objectives read them
    through :class:`BatchForward`. ``predict`` and ``embed_text`` return unnormalised
    embeddings (the losses normalise); retrieval normalises both.

    Args:
        x_encoder: The X-encoder (frozen, normally).
        text_encoder: The Y-encoder; its tokenizer and input embeddings also serve queries.
        embed_dim: Width ``D`` of the shared embedding space.
        predictor_lm: Source of the predictor's transformer (hub name, folder, or config dict
            of a Llama-style LM).
        predictor_layers: Keep the LM's last this-many layers; default all.
        gradient_checkpointing: Recompute predictor and Y-encoder activations in backward
            (non-reentrant).
    """

    def __init__(
        self,
        x_encoder: ModalityEncoder,
        text_encoder: TextEncoder,
        embed_dim: int = 256,
        predictor_lm: ModelSource = DEFAULT_PREDICTOR_LM,
        predictor_layers: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.x_encoder = x_encoder
        self.text_encoder = text_encoder
        self.predictor = Predictor(
            visual_dim=x_encoder.output_dim,
            query_dim=text_encoder.output_dim,
            output_dim=embed_dim,
            num_visual_tokens=x_encoder.num_tokens,
            lm=predictor_lm,
            num_layers=predictor_layers,
            gradient_checkpointing=gradient_checkpointing,
        )
        if gradient_checkpointing and not text_encoder.frozen:
            text_encoder.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.text_projection = nn.Linear(text_encoder.output_dim, embed_dim)

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        return self.text_projection.out_features

    def x_tokens(self, x: object) -> EncoderOutput:
        """The X-encoder's tokens of raw inputs, or cached tokens as they are.

        Args:
            x: The X-encoder's batch (as its codec collates it), or an
                :class:`EncoderOutput` of cached tokens.

        Returns:
            Tokens in the predictor's dtype and their padding mask.
        """
        output = x if isinstance(x, EncoderOutput) else self.x_encoder(x)
        dtype = self.predictor.visual_proj.weight.dtype
        return EncoderOutput(output.tokens.to(dtype), output.mask.bool())

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``s``: masked-mean Y-encoder tokens, projected (not normalised).

        Each distinct row is encoded once and its embedding shared by its repeats: texts
        repeat within a batch (templated captions, short VQA answers), and the Y-encoder's
        forward and backward are a large part of a step. The embeddings and gradients are
        those of encoding every row (up to rounding); under dropout, repeats share a mask.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)`` mask of real tokens.

        Returns:
            ``(B, embed_dim)`` embeddings.
        """
        rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
        distinct, row_of = torch.unique(rows, dim=0, return_inverse=True)
        if len(distinct) == len(rows):
            return self._embed_rows(input_ids, attention_mask)
        length = input_ids.shape[1]
        mask = distinct[:, length:].to(attention_mask.dtype)
        return self._embed_rows(distinct[:, :length], mask)[row_of]

    def _embed_rows(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        tokens, mask = self.text_encoder({"input_ids": input_ids, "attention_mask": attention_mask})
        return self.text_projection(masked_mean(tokens, mask))

    def predict(
        self,
        x_tokens: EncoderOutput,
        query_ids: Tensor | None = None,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        """``ŝ``: the predictor's embedding of X tokens and an optional query (not normalised).

        Args:
            x_tokens: The X tokens and their padding mask (see :meth:`x_tokens`).
            query_ids: ``(B, Nq)`` query token ids (the Y-encoder's tokenizer), or None.
            query_mask: ``(B, Nq)`` mask of real query tokens.

        Returns:
            ``(B, embed_dim)`` embeddings.
        """
        query = None if query_ids is None else self.text_encoder.embed_tokens(query_ids)
        return self.predictor(x_tokens.tokens, x_tokens.mask, query, query_mask)

    def embed_inputs(self, x: object, queries: Sequence[str | None] | None = None) -> Tensor:
        """``ŝ`` of raw X inputs (or cached tokens), unit norm: the retrieval embedding.

        Args:
            x: As for :meth:`x_tokens`.
            queries: One query per row (None or ``""``: no query), or None: predict the
                caption, as for retrieval.

        Returns:
            ``(B, embed_dim)`` unit-norm embeddings.

        Raises:
            ValueError: If ``queries`` does not have one entry per row.
        """
        tokens = self.x_tokens(x)
        if queries is None:
            return F.normalize(self.predict(tokens), dim=-1)
        if len(queries) != tokens.tokens.shape[0]:
            raise ValueError(f"{len(queries)} queries for {tokens.tokens.shape[0]} inputs")
        query = collate_optional_texts(self.text_encoder.codec(), queries)
        device = tokens.tokens.device
        ids, mask = query["input_ids"].to(device), query["attention_mask"].to(device)
        return F.normalize(self.predict(tokens, ids, mask), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """``s`` of texts, unit norm: the retrieval embedding.

        Args:
            texts: The texts (truncated to the Y-encoder's ``max_length`` tokens).

        Returns:
            ``(len(texts), embed_dim)`` unit-norm embeddings.
        """
        tokens = self.text_encoder.tokenize(texts)
        device = self.text_projection.weight.device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        return F.normalize(self.embed_text(ids, mask), dim=-1)


class BatchForward:
    """The forward pieces of one batch, each computed at most once and shared.

    Objectives and evaluation read what they need: the X tokens are encoded once for the
    loss and the retrieval embeddings, and the caption pair of the caption objective is
    reused for retrieval when the batch has no query.

    Args:
        model: The model core.
        batch: The batch.
    """

    def __init__(self, model: VLJEPAModel, batch: Batch) -> None:
        self.model = model
        self.batch = batch

    @cached_property
    def x(self) -> EncoderOutput:
        """The X tokens and their padding mask."""
        return self.model.x_tokens(self.batch.x)

    @cached_property
    def predicted(self) -> Tensor:
        """``ŝ`` given the batch's query (none when it has none), not normalised."""
        return self.model.predict(self.x, self.batch.query_ids, self.batch.query_mask)

    @cached_property
    def target(self) -> Tensor:
        """``s`` of the captions, not normalised."""
        return self.model.embed_text(*self.batch.caption_tokens())

    @cached_property
    def retrieval(self) -> tuple[Tensor, Tensor]:
        """``ŝ`` with the empty query and ``s``, both unit norm, in float32.

        Float32 under bf16-mixed too: these are the embeddings that metrics, callbacks and
        ``predict`` hand on.
        """
        predicted = self.predicted if self.batch.query_ids is None else self.model.predict(self.x)
        return F.normalize(predicted.float(), dim=-1), F.normalize(self.target.float(), dim=-1)
