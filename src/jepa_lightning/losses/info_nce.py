"""Symmetric InfoNCE (CLIP) loss with a learnable temperature and gathered negatives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_lightning.distributed import gather_sizes, gather_with_grad, rank_and_world_size
from jepa_lightning.losses.precision import autocast_disabled, loss_dtype

__all__ = ["InfoNCELoss"]


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE between predicted and target embeddings (the CLIP loss).

    Both inputs are L2-normalised; the logits are ``scale * pred @ target.T`` with
    ``scale = exp(logit_scale)``. Row ``i`` of ``pred`` and row ``i`` of ``target`` are a positive
    pair, every other row of the *global* batch is a negative. The loss is the mean of the
    cross entropies pred -> targets and target -> preds.

    Distributed: embeddings are gathered from all ranks with
    :func:`~jepa_lightning.distributed.gather_with_grad` and each rank computes only its own rows
    against all columns ("local loss": two ``B_local x B_global`` logit matrices instead of one
    ``B_global x B_global``). Each rank's value is scaled by ``world_size * B_local / B_global``
    (exactly 1 when the ranks hold equal batches), so that the mean of the per-rank values, and
    the gradients after DDP's averaging, are those of the global-batch loss, also when the last
    batch of an epoch is split unevenly.

    Precision: the logits and the loss are computed in (at least) float32 with autocast
    disabled, whatever the input dtype and autocast state; float64 inputs stay float64.

    Temperature clamp: ``scale`` is ``exp(min(logit_scale, log(max_logit_scale)))``. Above the
    cap the gradient with respect to ``logit_scale`` is zero (at exactly the cap it is passed
    through), so a parameter pushed past it by an optimizer step receives no gradient and only
    weight decay moves it back. CLIP instead clamps the parameter itself after every step; call
    :meth:`clamp_logit_scale_` (e.g. in ``on_before_zero_grad`` / after ``optimizer.step``) to do
    the same and keep the parameter where its gradient is alive.

    Args:
        init_temperature: Initial temperature ``tau``; ``logit_scale`` starts at ``log(1/tau)``.
        max_logit_scale: Cap on the effective scale ``1/tau``.
        learnable_temperature: If ``False``, ``logit_scale`` is a buffer, not a parameter.

    Raises:
        ValueError: If ``init_temperature`` or ``max_logit_scale`` is not positive, or the
            initial scale exceeds ``max_logit_scale``.
    """

    logit_scale: Tensor

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable_temperature: bool = True,
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be positive, got {init_temperature}")
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be positive, got {max_logit_scale}")
        if 1.0 / init_temperature > max_logit_scale * (1 + 1e-6):
            raise ValueError(
                f"initial scale 1/init_temperature = {1.0 / init_temperature:g} exceeds "
                f"max_logit_scale = {max_logit_scale:g}"
            )
        self.max_logit_scale = float(max_logit_scale)
        self._max_log_scale = math.log(max_logit_scale)
        init = torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    def scale(self) -> Tensor:
        """Return the effective, clamped logit scale ``exp(min(logit_scale, log(max)))``."""
        return self.logit_scale.clamp(max=self._max_log_scale).exp()

    @property
    def temperature(self) -> float:
        """Effective temperature ``1 / scale`` (after the clamp), as a Python float."""
        return float(1.0 / self.scale().detach())

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the ``logit_scale`` parameter in place to ``[0, log(max_logit_scale)]`` (CLIP)."""
        self.logit_scale.clamp_(0.0, self._max_log_scale)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Compute the loss for this rank's pairs.

        Args:
            pred: Predicted embeddings, shape ``(B_local, D)``.
            target: Target embeddings, shape ``(B_local, D)``; row ``i`` is the positive of
                ``pred[i]``.

        Returns:
            Scalar loss (float32, or float64 for float64 inputs).

        Raises:
            ValueError: If the inputs are not 2-D with equal shapes, or (distributed) if ``D``
                differs across ranks.
        """
        if pred.dim() != 2 or pred.shape != target.shape:
            raise ValueError(
                "pred and target must both have shape (batch, dim); got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        rank, world_size = rank_and_world_size()
        dtype = loss_dtype(pred, target)
        with autocast_disabled(pred.device.type):
            pred = F.normalize(pred.to(dtype), dim=-1)
            target = F.normalize(target.to(dtype), dim=-1)
            scale = self.scale().to(dtype)
            n_local = pred.shape[0]
            if world_size == 1:
                # One matrix serves both directions: rows are pred -> targets, columns
                # target -> preds. (Written as logsumexps minus the diagonal, it was 4% faster
                # at a batch of 4096 on the CPU but 5% slower at 256: more autograd nodes.)
                logits = (scale * pred) @ target.T
                labels = torch.arange(n_local, device=pred.device)
                return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

            sizes = gather_sizes(pred)
            all_pred = gather_with_grad(pred, sizes)
            all_target = gather_with_grad(target, sizes)
            offset = sum(sizes[:rank])
            labels = torch.arange(offset, offset + n_local, device=pred.device)
            logits_pred = (scale * pred) @ all_target.T
            logits_target = (scale * target) @ all_pred.T
            loss = (
                F.cross_entropy(logits_pred, labels, reduction="sum")
                + F.cross_entropy(logits_target, labels, reduction="sum")
            ) / 2
            # sum_local * W / B_global: equals the local mean when all ranks hold B_local rows.
            return loss * (world_size / sum(sizes))
