"""The bidirectional predictor: visual tokens (+ an optional query) to a text embedding."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa_lightning.encoders.hf import ModelSource, attention_kernel, build_model
from jepa_lightning.encoders.text import masked_mean

DEFAULT_PREDICTOR_LM: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 8,
    "max_position_embeddings": 512,
}
"""A tiny random Llama-style transformer: the predictor for smoke tests."""


class Predictor(nn.Module):
    """A bidirectional transformer over ``[projected visual tokens + positions ; query]``.

    The transformer is the last ``num_layers`` decoder layers of a
    ``transformers`` language model (Llama, Qwen, Mistral: any model whose
    base has ``layers``, ``norm`` and ``rotary_emb``) with the causal mask off:
    every token attends to every real token. Built from a config dict it is a
    random transformer of that shape; from a hub name or folder it starts from
    the pretrained layers, as the VL-JEPA paper does with Llama-3.2-1B. The LM's
    token embeddings are dropped: inputs arrive as features.

    Each visual token carries its grid index as its rotary position and, for an
    X-encoder with a fixed number of tokens, as a learned position embedding too,
    so a subset of tokens (the visible ones of a mask) keeps its geometry. A
    variable-length X-encoder (``num_visual_tokens=None``) gets rotary positions
    only. Padded visual tokens (``visual_mask`` False) are never attended to and
    never pooled. Query tokens come after the last visual position: the grid's
    size, or a row's count of real tokens for a variable-length X-encoder.

    Args:
        visual_dim: Width of the X-encoder's tokens.
        query_dim: Width of the query token embeddings.
        output_dim: Width of the predicted embedding.
        num_visual_tokens: Number of visual token positions (the X-encoder's grid), or
            None for a variable-length X-encoder.
        lm: The language model source (hub name, folder, or config dict).
        num_layers: How many of the LM's last layers to keep; default all.
        gradient_checkpointing: Recompute each layer in backward (non-reentrant).

    Raises:
        ValueError: If the LM lacks ``layers``/``norm``/``rotary_emb`` or
            ``num_layers`` is out of range.
    """

    def __init__(
        self,
        visual_dim: int,
        query_dim: int,
        output_dim: int,
        num_visual_tokens: int | None,
        lm: ModelSource = DEFAULT_PREDICTOR_LM,
        num_layers: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        language_model = build_model(lm, attn_implementation="sdpa")
        missing = [n for n in ("layers", "norm", "rotary_emb") if not hasattr(language_model, n)]
        if missing:
            raise ValueError(
                f"predictor LM {type(language_model).__name__} lacks {missing}; "
                "use a Llama-style decoder (llama, qwen2, qwen3, mistral)"
            )
        lm_layers = cast(nn.ModuleList, language_model.layers)
        total = len(lm_layers)
        num_layers = total if num_layers is None else num_layers
        if not 1 <= num_layers <= total:
            raise ValueError(f"predictor num_layers must be in [1, {total}], got {num_layers}")
        self.layers = nn.ModuleList(lm_layers[total - num_layers :])
        for layer in self.layers:
            attention: Any = layer.self_attn
            attention.is_causal = False
        self.norm = cast(nn.Module, language_model.norm)
        self.rotary_emb = cast(nn.Module, language_model.rotary_emb)
        width = int(language_model.config.hidden_size)
        self.width = width
        self.num_visual_tokens = num_visual_tokens
        self.gradient_checkpointing = gradient_checkpointing
        self.visual_proj = nn.Linear(visual_dim, width)
        self.query_proj = nn.Linear(query_dim, width)
        self.position_embedding: nn.Parameter | None = None
        if num_visual_tokens is not None:
            self.position_embedding = nn.Parameter(torch.zeros(num_visual_tokens, width))
            nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.output_proj = nn.Linear(width, output_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _at(self, features: Tensor, positions: Tensor) -> Tensor:
        """Adds the learned position embedding of ``positions`` (when there is a table)."""
        if self.position_embedding is None:
            return features
        return features + self.position_embedding[positions]

    def encode(
        self,
        visual_tokens: Tensor,
        visual_mask: Tensor | None = None,
        visual_positions: Tensor | None = None,
        query_embeds: Tensor | None = None,
        query_mask: Tensor | None = None,
        mask_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Runs the transformer over ``[visual ; mask tokens ; query]``.

        Args:
            visual_tokens: ``(B, Nv, visual_dim)`` visual tokens.
            visual_mask: ``(B, Nv)`` boolean mask of real visual tokens; default all.
            visual_positions: ``(B, Nv)`` grid indices of the visual tokens;
                default ``0..Nv-1``.
            query_embeds: ``(B, Nq, query_dim)`` query token embeddings, or None.
            query_mask: ``(B, Nq)`` boolean mask of real query tokens; default all.
            mask_positions: ``(B, M)`` grid indices of hidden tokens to predict;
                a learned mask token is placed at each.

        Returns:
            The final normalised hidden states ``(B, Nv + M + Nq, width)`` and
            their ``(B, Nv + M + Nq)`` boolean mask of real tokens.
        """
        batch, num_visual = visual_tokens.shape[:2]
        device = visual_tokens.device
        if visual_positions is None:
            visual_positions = torch.arange(num_visual, device=device).expand(batch, -1)
        if visual_mask is None:
            visual_mask = torch.ones(batch, num_visual, dtype=torch.bool, device=device)
        parts = [self._at(self.visual_proj(visual_tokens), visual_positions)]
        if self.training and torch.is_grad_enabled():
            # Every step must give every trainable parameter a gradient (DDP with
            # find_unused_parameters=False): an absent query or mask token joins with weight 0.
            unused: list[Tensor] = []
            if query_embeds is None:
                unused += [p.sum() for p in self.query_proj.parameters()]
            if mask_positions is None:
                unused.append(self.mask_token.sum())
            if unused:
                parts[0] = parts[0] + 0.0 * torch.stack(unused).sum()
        positions = [visual_positions]
        masks = [visual_mask.bool()]
        if mask_positions is not None:
            parts.append(
                self._at(self.mask_token.expand(*mask_positions.shape, -1), mask_positions)
            )
            positions.append(mask_positions)
            masks.append(torch.ones(mask_positions.shape, dtype=torch.bool, device=device))
        if query_embeds is not None:
            num_query = query_embeds.shape[1]
            parts.append(self.query_proj(query_embeds))
            if self.num_visual_tokens is not None:
                offset = torch.full((batch, 1), self.num_visual_tokens, device=device)
            else:
                offset = visual_mask.sum(dim=1, keepdim=True)
            positions.append(offset + torch.arange(num_query, device=device))
            if query_mask is None:
                query_mask = torch.ones(batch, num_query, dtype=torch.bool, device=device)
            masks.append(query_mask.bool())
        hidden = torch.cat(parts, dim=1)
        position_ids = torch.cat(positions, dim=1)
        valid = torch.cat(masks, dim=1)
        # Bidirectional: every query position attends to every real token.
        attention_mask = valid[:, None, None, :]
        position_embeddings = self.rotary_emb(hidden, position_ids)
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            # The rotary tables come in the residual stream's float32 while the projected
            # queries and keys are in the autocast dtype: rotating in float32 would cast every
            # query and key there and back. A model with bf16 weights rotates in bf16 too.
            dtype = torch.get_autocast_dtype(device_type)
            cos, sin = position_embeddings
            position_embeddings = (cos.to(dtype), sin.to(dtype))
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(
                    self._run_layer,
                    layer,
                    hidden,
                    attention_mask,
                    position_ids,
                    position_embeddings,
                    use_reentrant=False,
                )
            else:
                hidden = self._run_layer(
                    layer, hidden, attention_mask, position_ids, position_embeddings
                )
        return self.norm(hidden), valid

    @staticmethod
    def _run_layer(
        layer: nn.Module,
        hidden: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
    ) -> Tensor:
        # Inside the (checkpointed) layer, so that a recomputation picks the same kernel.
        with attention_kernel(cast(Any, layer).self_attn.config, hidden.device, hidden.dtype):
            output = layer(
                hidden,
                attention_mask=attention_mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
        # Older transformers releases return a tuple from decoder layers.
        return output[0] if isinstance(output, tuple) else output

    def forward(
        self,
        visual_tokens: Tensor,
        visual_mask: Tensor | None = None,
        query_embeds: Tensor | None = None,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        """Predicts the target text embedding ``ŝ = W_o · masked_mean(h)``.

        Args:
            visual_tokens: ``(B, Nv, visual_dim)`` visual tokens.
            visual_mask: ``(B, Nv)`` boolean mask of real visual tokens; default all.
            query_embeds: ``(B, Nq, query_dim)`` query token embeddings, or None
                (then it predicts the caption).
            query_mask: ``(B, Nq)`` mask of real query tokens.

        Returns:
            ``(B, output_dim)`` predicted embeddings (not normalised).
        """
        hidden, valid = self.encode(
            visual_tokens, visual_mask, query_embeds=query_embeds, query_mask=query_mask
        )
        return self.output_proj(masked_mean(hidden, valid))
