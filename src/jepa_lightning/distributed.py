"""Cross-rank gathers for contrastive losses: the one place that talks to ``torch.distributed``.

Contrastive losses (InfoNCE / CLIP) want every rank's embeddings as negatives. This module
provides the gathers with gradient they need (no-grad gathers use torchmetrics'
``gather_all_tensors``):

* :func:`gather_with_grad`: concatenation over ranks along dim 0 whose backward returns to each
  rank the gradient of the *sum of all ranks' losses* with respect to its own slice. Under
  ``DistributedDataParallel`` (which averages parameter gradients over ranks) a loss whose
  per-rank values average to the global-batch loss therefore yields exactly the gradient of the
  global-batch loss.

It is the identity when ``torch.distributed`` is unavailable, not initialised, or the world
size is 1, so single-process code pays nothing.

Unequal sizes: ranks may hold different numbers of rows (e.g. the last, smaller batch of an
epoch with ``drop_last=False``). The gathers first exchange the shapes (one small collective,
:func:`gather_sizes`), pad every rank to the largest size, gather, and strip the padding.
Pass ``sizes`` (from :func:`gather_sizes`) to skip that exchange when it is already known. All
dimensions but the first, the number of dimensions and the dtype must agree across ranks; a
mismatch of the trailing dimensions raises :class:`ValueError` on every rank (the shapes are
exchanged first, so no rank is left waiting in a collective).

Collectives: forward uses ``all_gather_single`` (``all_gather_into_tensor`` on older torch).
Backward uses ``reduce_scatter_single`` on NCCL/XCCL; other backends (gloo) ``all_reduce`` the
full gradient and keep their own slice, which every backend supports (about twice the traffic
of a reduce-scatter, irrelevant for CPU tests). Every rank must run the same
sequence of gathers and backward passes, and a gathered tensor must require grad on all ranks or
on none, otherwise the backward collectives do not match up and the job hangs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "gather_sizes",
    "gather_with_grad",
    "is_distributed",
    "rank_and_world_size",
]

ProcessGroup = Any  # ``dist.ProcessGroup`` is missing when torch is built without distributed.


def is_distributed() -> bool:
    """Return whether ``torch.distributed`` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size(group: ProcessGroup | None = None) -> tuple[int, int]:
    """Return this process's rank and the world size, read from ``torch.distributed`` now.

    Args:
        group: Process group; the default (world) group if ``None``.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` when not running distributed.
    """
    if not is_distributed():
        return 0, 1
    return dist.get_rank(group=group), dist.get_world_size(group=group)


def _all_gather_single(output: Tensor, tensor: Tensor, group: ProcessGroup | None) -> None:
    # torch >= 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single.
    fn: Callable[..., Any] = getattr(dist, "all_gather_single", None) or (
        dist.all_gather_into_tensor
    )
    fn(output, tensor, group=group)


def _reduce_scatter_single(output: Tensor, tensor: Tensor, group: ProcessGroup | None) -> None:
    fn: Callable[..., Any] = getattr(dist, "reduce_scatter_single", None) or (
        dist.reduce_scatter_tensor
    )
    fn(output, tensor, op=dist.ReduceOp.SUM, group=group)


def _use_reduce_scatter(group: ProcessGroup | None, device: torch.device) -> bool:
    """Whether backward uses reduce-scatter (NCCL/XCCL device tensors), else all-reduce + slice.

    ``get_backend`` may name several backends (``"cpu:gloo,cuda:nccl"``), hence the substring
    test together with the device.
    """
    backend = str(dist.get_backend(group)).lower()
    return device.type != "cpu" and ("nccl" in backend or "xccl" in backend)


def gather_sizes(tensor: Tensor, group: ProcessGroup | None = None) -> list[int]:
    """Exchange shapes and return every rank's size along dim 0.

    Args:
        tensor: This rank's tensor; at least one dimension.
        group: Process group; the default group if ``None``.

    Returns:
        ``sizes[r]`` is rank ``r``'s ``tensor.shape[0]``; ``[tensor.shape[0]]`` when not
        distributed.

    Raises:
        ValueError: If ``tensor`` is 0-d, or (on every rank) if the trailing dimensions differ
            between ranks.
    """
    if tensor.dim() == 0:
        raise ValueError("cannot gather a 0-d tensor along dim 0")
    rank, world_size = rank_and_world_size(group)
    if world_size == 1:
        return [tensor.shape[0]]
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = torch.empty(world_size * shape.numel(), dtype=torch.long, device=tensor.device)
    _all_gather_single(shapes, shape, group)
    rows: list[list[int]] = shapes.view(world_size, -1).tolist()
    if any(row[1:] != rows[rank][1:] for row in rows):
        raise ValueError(
            "gather: all dimensions but the first must agree across ranks; got shapes "
            + ", ".join(f"rank {r}: {tuple(row)}" for r, row in enumerate(rows))
        )
    return [row[0] for row in rows]


def _check_sizes(tensor: Tensor, sizes: Sequence[int], rank: int, world_size: int) -> list[int]:
    sizes = [int(s) for s in sizes]
    if len(sizes) != world_size:
        raise ValueError(f"sizes has {len(sizes)} entries, expected world size {world_size}")
    if sizes[rank] != tensor.shape[0]:
        raise ValueError(
            f"sizes[{rank}] = {sizes[rank]} but this rank's tensor has {tensor.shape[0]} rows"
        )
    return sizes


def _gather_padded(tensor: Tensor, sizes: list[int], group: ProcessGroup | None) -> Tensor:
    """All-gather ``tensor`` (rows ``sizes[rank]``) into the concatenation over ranks."""
    world_size = len(sizes)
    max_size = max(sizes)
    tensor = tensor.contiguous()
    if tensor.shape[0] < max_size:
        pad = tensor.new_zeros((max_size - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    out = tensor.new_empty((world_size * max_size, *tensor.shape[1:]))
    _all_gather_single(out, tensor, group)
    if all(s == max_size for s in sizes):
        return out
    chunks = out.split(max_size)
    return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: sum over ranks, keep own slice."""

    @staticmethod
    def forward(
        ctx: Any,
        tensor: Tensor,
        sizes: list[int],
        rank: int,
        group: ProcessGroup | None,
    ) -> Tensor:
        ctx.sizes = sizes
        ctx.rank = rank
        ctx.group = group
        return _gather_padded(tensor, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        sizes: list[int] = ctx.sizes
        rank: int = ctx.rank
        group = ctx.group
        world_size = len(sizes)
        max_size = max(sizes)
        # A fresh, contiguous (padded) copy: the collectives below write into it, and the
        # incoming gradient must not be modified in place.
        padded = grad_output.new_zeros((world_size * max_size, *grad_output.shape[1:]))
        for r, chunk in enumerate(grad_output.split(sizes)):
            padded[r * max_size : r * max_size + sizes[r]] = chunk
        if _use_reduce_scatter(group, padded.device):
            grad = padded.new_empty((max_size, *padded.shape[1:]))
            _reduce_scatter_single(grad, padded, group)
        else:
            dist.all_reduce(padded, op=dist.ReduceOp.SUM, group=group)
            grad = padded[rank * max_size : (rank + 1) * max_size]
        return grad[: sizes[rank]], None, None, None


def gather_with_grad(
    tensor: Tensor,
    sizes: Sequence[int] | None = None,
    group: ProcessGroup | None = None,
) -> Tensor:
    """Concatenate ``tensor`` over ranks along dim 0, differentiably.

    The backward pass hands each rank the gradient of the sum of all ranks' losses with respect
    to its own rows (the gathered copies of this rank's rows are used by every rank's loss).
    With DDP's gradient averaging, parameter gradients then equal those of the mean of the
    per-rank losses.

    Args:
        tensor: This rank's tensor, shape ``(n_rank, ...)``.
        sizes: Every rank's ``n_rank`` (from :func:`gather_sizes`); exchanged if ``None``.
        group: Process group; the default group if ``None``.

    Returns:
        Tensor of shape ``(sum(sizes), ...)``, rank ``r``'s rows at offset ``sum(sizes[:r])``.
        ``tensor`` itself when not distributed.

    Raises:
        ValueError: If the trailing dimensions differ across ranks or ``sizes`` is inconsistent.
    """
    rank, world_size = rank_and_world_size(group)
    if world_size == 1:
        return tensor
    sizes = gather_sizes(tensor, group) if sizes is None else sizes
    sizes = _check_sizes(tensor, sizes, rank, world_size)
    out: Tensor = _GatherWithGrad.apply(tensor, sizes, rank, group)
    return out
