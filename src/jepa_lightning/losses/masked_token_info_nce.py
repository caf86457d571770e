"""Token-level InfoNCE for the masked visual-token objective, with gathered negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

from jepa_lightning.distributed import (
    gather_sizes,
    gather_with_grad,
    rank_and_world_size,
)
from jepa_lightning.losses.precision import autocast_disabled, loss_dtype

__all__ = ["MaskedTokenInfoNCELoss", "sample_negative_columns"]


def sample_negative_columns(
    candidates: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``num_samples`` distinct entries of ``candidates`` uniformly, without replacement.

    Args:
        candidates: 1-D tensor of column indices to draw from.
        num_samples: How many to draw; at most ``candidates.numel()``.
        generator: Random generator; the global RNG of its device if ``None``. The permutation
            is drawn on the generator's device (CPU for ``None``) and moved to ``candidates``'s.

    Returns:
        1-D tensor of ``num_samples`` entries of ``candidates``, in random order.

    Raises:
        ValueError: If ``num_samples`` exceeds the number of candidates.
    """
    n = candidates.numel()
    if num_samples > n:
        raise ValueError(f"cannot draw {num_samples} of {n} candidates")
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=device)[:num_samples]
    return candidates[perm.to(candidates.device)]


class MaskedTokenInfoNCELoss(nn.Module):
    """InfoNCE over hidden visual tokens: predict each hidden token among all hidden tokens.

    For every hidden position ``m`` of sample ``b`` the prediction ``pred_tokens[b, m]`` must
    pick out its true token ``target_tokens[b, m]`` among all hidden target tokens of the
    *global* batch (other positions of the same sample, and all positions of the other samples
    on every rank). Similarities are cosine similarities divided by a fixed ``temperature``;
    the cross entropy is one-directional (pred -> target) and averaged over the valid tokens of
    the global batch.

    Distributed: targets are gathered with
    :func:`~jepa_lightning.distributed.gather_with_grad` (gradients reach the target tower if it
    is trainable; a frozen one simply produces no gradient), the ``valid`` masks without
    gradient. Each rank returns ``world_size * (sum of its token losses) / (valid tokens
    globally)``: the mean of the per-rank values, and the gradient after DDP's averaging, are
    those of the global mean over valid tokens, however the valid tokens are spread over ranks.
    Without distribution this is the plain mean over valid tokens.

    Memory: the logits are ``(B*M) x (W*B*M)`` per rank (``W`` ranks), e.g. 256 samples with
    ``M = 100`` hidden tokens on 8 ranks: ``25_600 x 204_800`` floats = 21 GB in float32, plus
    as much again for the softmax gradient. Set ``max_negatives`` to bound it: each rank then
    draws one shared set of ``max_negatives`` columns from the valid global targets (uniformly,
    without replacement; reproducible with ``generator``) and each query is scored against its
    own positive plus those columns (its positive is masked out if drawn, leaving
    ``max_negatives - 1`` negatives), i.e. ``(B*M) x (1 + max_negatives)`` logits. When
    ``max_negatives`` is at least the number of valid global targets the full loss is used.

    Args:
        temperature: Fixed softmax temperature.
        max_negatives: Bound on the number of negative columns; ``None`` uses all.

    Raises:
        ValueError: If ``temperature`` is not positive or ``max_negatives`` is not positive.
    """

    def __init__(self, temperature: float = 0.1, max_negatives: int | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if max_negatives is not None and max_negatives < 1:
            raise ValueError(f"max_negatives must be positive or None, got {max_negatives}")
        self.temperature = float(temperature)
        self.max_negatives = max_negatives

    def forward(
        self,
        pred_tokens: Tensor,
        target_tokens: Tensor,
        valid: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Compute the loss for this rank's hidden tokens.

        Args:
            pred_tokens: Predicted tokens at the hidden positions, shape ``(B, M, D)``.
            target_tokens: True tokens at the same positions, shape ``(B, M, D)``.
            valid: Boolean mask ``(B, M)``; ``False`` marks padding, excluded both as query
                and as negative. All positions valid if ``None``.
            generator: Random generator for the ``max_negatives`` draw.

        Returns:
            Scalar loss (float32, or float64 for float64 inputs). Zero (still attached to the
            graph) if no token is valid anywhere.

        Raises:
            ValueError: On mismatched shapes, or (distributed) if ``M`` or ``D`` differ across
                ranks.
        """
        if pred_tokens.dim() != 3 or pred_tokens.shape != target_tokens.shape:
            raise ValueError(
                "pred_tokens and target_tokens must both have shape (batch, tokens, dim); got "
                f"{tuple(pred_tokens.shape)} and {tuple(target_tokens.shape)}"
            )
        batch, tokens, dim = pred_tokens.shape
        if valid is not None and valid.shape != (batch, tokens):
            raise ValueError(f"valid must have shape {(batch, tokens)}, got {tuple(valid.shape)}")
        device = pred_tokens.device
        rank, world_size = rank_and_world_size()
        dtype = loss_dtype(pred_tokens, target_tokens)
        with autocast_disabled(device.type):
            query = F.normalize(pred_tokens.reshape(batch * tokens, dim).to(dtype), dim=-1)
            key = F.normalize(target_tokens.reshape(batch * tokens, dim).to(dtype), dim=-1)
            if valid is None:
                valid_flat = torch.ones(batch * tokens, dtype=torch.bool, device=device)
            else:
                valid_flat = valid.reshape(-1).to(device=device, dtype=torch.bool)

            if world_size == 1:
                offset = 0
                all_key, all_valid = key, valid_flat
            else:
                # Token rows (batch * tokens) per rank; also checks that dim agrees.
                sizes = gather_sizes(key)
                all_key = gather_with_grad(key, sizes)
                all_valid = torch.cat(gather_all_tensors(valid_flat.to(torch.uint8))).bool()
                offset = sum(sizes[:rank])
            num_valid_global = int(all_valid.sum())
            if num_valid_global == 0:
                return (query.sum() + key.sum()) * 0.0
            labels = torch.arange(offset, offset + batch * tokens, device=device)

            if self.max_negatives is None or self.max_negatives >= num_valid_global:
                logits = query @ all_key.T / self.temperature
                logits = logits.masked_fill(~all_valid, float("-inf"))
                token_loss = F.cross_entropy(logits, labels, reduction="none")
            else:
                columns = sample_negative_columns(
                    all_valid.nonzero().squeeze(1), self.max_negatives, generator
                )
                positive = (query * key).sum(-1, keepdim=True) / self.temperature
                negative = query @ all_key[columns].T / self.temperature
                negative = negative.masked_fill(columns == labels[:, None], float("-inf"))
                logits = torch.cat([positive, negative], dim=1)
                zeros = torch.zeros(batch * tokens, dtype=torch.long, device=device)
                token_loss = F.cross_entropy(logits, zeros, reduction="none")

            # Invalid queries have a -inf positive (inf loss): select, do not multiply by 0.
            loss = token_loss[valid_flat].sum()
            return loss * (world_size / num_valid_global)
