"""The Y-decoder: a small causal language model that turns a VL-JEPA embedding into words.

VL-JEPA predicts embeddings, not tokens. When text is needed, :class:`YDecoder` maps an
embedding (``ŝ`` or ``s``, L2-normalised) through a learned projection to a few *prefix*
embeddings of a ``transformers`` causal LM, which then writes the caption after them
(ClipCap-style prefix conditioning). It is trained with teacher forcing on captions while
VL-JEPA stays frozen (:class:`~jepa_lightning.modules.YDecoderModule`) and generates through
``transformers``' ``generate`` with ``inputs_embeds`` (greedy or beam search).

A decoder folder (:meth:`YDecoder.save_pretrained`) holds ``config.json`` (the LM's
``transformers`` config and the decoder's sizes), ``model.safetensors`` and ``tokenizer/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from jepa_lightning.assets import resolve_tokenizer
from jepa_lightning.encoders.hf import _DTYPE_KWARG, ModelSource, build_config, config_fields

DECODER_FORMAT = "jepa-lightning/y-decoder"
DECODER_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_DIR = "tokenizer"

DEFAULT_DECODER_LM: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}
"""A tiny random Llama-style LM (the vocabulary is the tokenizer's): no download."""

DEFAULT_DECODER_TOKENIZER = "jepa_lightning:bert-base-uncased"


def build_causal_lm(source: ModelSource, vocab_size: int) -> PreTrainedModel:
    """A ``transformers`` causal LM: pretrained from a name or folder, or random from a dict.

    Args:
        source: A hub name or local folder (``from_pretrained``, float32 weights), or a config
            dict with ``model_type`` (random weights; ``vocab_size`` defaults to the
            tokenizer's).
        vocab_size: The tokenizer's vocabulary size (for a config dict).

    Returns:
        The LM.

    Raises:
        ValueError: If a config dict is invalid (see
            :func:`~jepa_lightning.encoders.hf.build_config`).
    """
    if isinstance(source, Mapping):
        config = build_config({"vocab_size": vocab_size, **source})
        return AutoModelForCausalLM.from_config(config)
    # Float32 master weights, whatever dtype the checkpoint was saved in.
    return AutoModelForCausalLM.from_pretrained(source, **{_DTYPE_KWARG: torch.float32})


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int]:
    """The start, end and padding ids: BOS/EOS/PAD, or BERT's CLS/SEP/PAD, or GPT-2's one id.

    Raises:
        ValueError: If the tokenizer has neither an end-of-text nor a separator token.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise ValueError("the decoder's tokenizer needs an EOS (or SEP) token to end captions")
    start = end if start is None else start
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return int(start), int(end), int(pad)


class YDecoder(nn.Module):
    """A causal LM that writes the text of an embedding, after a learned prefix.

    Args:
        lm: The causal LM: a hub name or local folder (pretrained) or a config dict with
            ``model_type`` (random init; default a tiny Llama, :data:`DEFAULT_DECODER_LM`).
        tokenizer: Hub name, folder or packaged tokenizer (``jepa_lightning:<name>``); default
            the packaged BERT tokenizer for a config dict, ``lm`` itself for a pretrained LM.
        embed_dim: Width of the VL-JEPA embeddings it reads.
        prefix_length: Prefix embeddings per input embedding.
        max_length: Longest caption in tokens (training truncates, generation stops there).

    Raises:
        ValueError: If ``prefix_length`` or ``max_length`` is below 1, or the tokenizer has no
            end token.
    """

    def __init__(
        self,
        lm: ModelSource = DEFAULT_DECODER_LM,
        tokenizer: str | None = None,
        embed_dim: int = 128,
        prefix_length: int = 4,
        max_length: int = 32,
    ) -> None:
        super().__init__()
        if prefix_length < 1 or max_length < 1:
            raise ValueError(
                f"prefix_length and max_length must be >= 1, got {prefix_length}, {max_length}"
            )
        if tokenizer is None:
            tokenizer = DEFAULT_DECODER_TOKENIZER if isinstance(lm, Mapping) else lm
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            resolve_tokenizer(tokenizer)
        )
        self.start_id, self.end_id, self.pad_id = _special_ids(self.tokenizer)
        self.lm = build_causal_lm(lm, len(self.tokenizer))
        hidden = int(self.lm.config.hidden_size)
        self.prefix_length = prefix_length
        self.max_length = max_length
        # ClipCap's MLP: embedding -> prefix_length LM input embeddings.
        self.projection = nn.Sequential(
            nn.Linear(embed_dim, hidden * prefix_length),
            nn.GELU(),
            nn.Linear(hidden * prefix_length, hidden * prefix_length),
        )

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings it reads."""
        return int(cast(nn.Linear, self.projection[0]).in_features)

    def prefix(self, embeddings: Tensor) -> Tensor:
        """The LM input embeddings that condition on ``embeddings``.

        Args:
            embeddings: ``(B, embed_dim)`` embeddings (normalised here: VL-JEPA compares them
                by cosine, their norm means nothing).

        Returns:
            ``(B, prefix_length, hidden)`` prefix embeddings.

        Raises:
            ValueError: If the embeddings are not ``(B, embed_dim)``.
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"embeddings must be (B, {self.embed_dim}), got {tuple(embeddings.shape)}"
            )
        weight = next(self.projection.parameters())
        unit = F.normalize(embeddings.to(device=weight.device, dtype=weight.dtype), dim=-1)
        return self.projection(unit).view(len(embeddings), self.prefix_length, -1)

    def tokenize(self, captions: Sequence[str]) -> dict[str, Tensor]:
        """Caption token ids as the decoder reads them: start, the caption, end; padded.

        Args:
            captions: The captions (truncated to ``max_length`` tokens with the end token).

        Returns:
            ``input_ids`` and ``attention_mask``, each ``(B, L)``, on the LM's device.
        """
        pieces = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        rows = [[self.start_id, *ids[: self.max_length - 1], self.end_id] for ids in pieces]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row)
            mask[index, : len(row)] = 1
        device = next(self.projection.parameters()).device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def forward(self, embeddings: Tensor, captions: Sequence[str]) -> Tensor:
        """The teacher-forced next-token cross-entropy of the captions after their prefixes.

        Args:
            embeddings: ``(B, embed_dim)`` embeddings.
            captions: One caption per embedding.

        Returns:
            The mean loss over the caption tokens and the end token.

        Raises:
            ValueError: If the counts differ.
        """
        if len(captions) != len(embeddings):
            raise ValueError(f"{len(captions)} captions for {len(embeddings)} embeddings")
        prefix = self.prefix(embeddings)
        tokens = self.tokenize(captions)
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        text = self.lm.get_input_embeddings()(ids)
        inputs = torch.cat([prefix, text], dim=1)
        attention = torch.cat([mask.new_ones(len(ids), self.prefix_length), mask], dim=1)
        # Predict every token after the start token; the prefix and padding are not targets.
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, 0] = -100
        labels = torch.cat([labels.new_full((len(ids), self.prefix_length), -100), labels], dim=1)
        return self.lm(inputs_embeds=inputs, attention_mask=attention, labels=labels).loss

    @torch.no_grad()
    def generate(
        self,
        embeddings: Tensor,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Captions of embeddings: greedy (``num_beams=1``) or beam search.

        Args:
            embeddings: ``(B, embed_dim)`` embeddings.
            num_beams: Beams (1: greedy decoding).
            max_new_tokens: Longest caption in tokens; default ``max_length``.

        Returns:
            One caption per embedding (special tokens removed).

        Raises:
            ValueError: If ``num_beams`` is below 1 or the embeddings have the wrong shape.
        """
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if len(embeddings) == 0:
            return []
        prefix = self.prefix(embeddings)
        start = torch.full((len(prefix), 1), self.start_id, device=prefix.device)
        inputs = torch.cat([prefix, self.lm.get_input_embeddings()(start)], dim=1)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens or self.max_length,
            num_beams=num_beams,
            do_sample=False,
            bos_token_id=self.start_id,
            eos_token_id=self.end_id,
            pad_token_id=self.pad_id,
        )
        attention = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        # With inputs_embeds alone, a decoder-only LM returns the new tokens only.
        tokens = self.lm.generate(  # type: ignore[operator]
            inputs_embeds=inputs, attention_mask=attention, generation_config=config
        )
        texts = self.tokenizer.batch_decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=True
        )
        return [" ".join(text.split()) for text in texts]

    def config_dict(self) -> dict[str, Any]:
        """What rebuilds this decoder (its LM as a config dict: random weights, same shape)."""
        return {
            "format": DECODER_FORMAT,
            "format_version": DECODER_FORMAT_VERSION,
            "lm": {"model_type": self.lm.config.model_type, **config_fields(self.lm.config)},
            "embed_dim": self.embed_dim,
            "prefix_length": self.prefix_length,
            "max_length": self.max_length,
        }

    def save_pretrained(self, folder: str | Path) -> str:
        """Writes the decoder folder: ``config.json``, ``model.safetensors``, ``tokenizer/``.

        Args:
            folder: The folder (created; files in it are overwritten).

        Returns:
            The folder.
        """
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(root / TOKENIZER_DIR))
        (root / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        save_model(self, str(root / WEIGHTS_NAME), metadata={"format": "pt"})
        return str(root)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> YDecoder:
        """Loads a decoder folder written by :meth:`save_pretrained`.

        Args:
            folder: The folder.

        Returns:
            The decoder, on the CPU, in eval mode.

        Raises:
            ValueError: If the folder does not hold a Y-decoder of a known version.
        """
        root = Path(folder)
        config = json.loads((root / CONFIG_NAME).read_text())
        if (
            config.get("format") != DECODER_FORMAT
            or config.get("format_version") != DECODER_FORMAT_VERSION
        ):
            raise ValueError(
                f"{root / CONFIG_NAME} is not a {DECODER_FORMAT} version "
                f"{DECODER_FORMAT_VERSION} config"
            )
        decoder = cls(
            config["lm"],
            tokenizer=str(root / TOKENIZER_DIR),
            embed_dim=config["embed_dim"],
            prefix_length=config["prefix_length"],
            max_length=config["max_length"],
        )
        load_model(decoder, str(root / WEIGHTS_NAME))
        return decoder.eval()
