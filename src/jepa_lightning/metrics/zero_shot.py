"""Zero-shot classification accuracy (top-k) against class embeddings, as a torchmetrics metric.

Each class is represented by one embedding (typically the normalised mean of the text
embeddings of its prompts, e.g. ``"a circle"``, ``"a small circle"``). An image embedding is
classified by cosine similarity to the class embeddings; it is a hit at ``k`` when its true
class is among the ``k`` most similar classes. The states are per-``k`` hit counts and a row
count, summed across processes, so memory is ``O(1)`` in the number of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from jepa_lightning.metrics.recall import _check_embedding, _check_top_k, _math_dtype

__all__ = ["ZeroShotAccuracy"]


class ZeroShotAccuracy(Metric):
    """Top-k accuracy of classifying embeddings by their nearest class embedding.

    **Hit test.** Let ``p`` be the cosine similarity of an image to its true class and ``c``
    the number of classes scoring *strictly* higher. The image is a hit at ``k`` iff ``c < k``
    (ties are resolved in favour of the true class). With ``k`` at least the number of
    classes every image is a hit.

    The class embeddings are not a state: they are a fixed input of the metric (the same on
    every process), set at construction or with :meth:`set_class_embeddings` (for example once
    per validation epoch, from the current text encoder). Rows whose label is ``ignore_index``
    are skipped (e.g. a sample without a label for this task).

    Args:
        class_embeddings: ``(C, D)`` class embeddings, or None to set them later.
        top_k: The ``k`` values.
        ignore_index: Label value of rows to skip.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``top_k`` holds a non-int.
        ValueError: If ``top_k`` is empty or holds a value below 1.

    Example:
        >>> import torch
        >>> metric = ZeroShotAccuracy(torch.eye(3), top_k=(1, 2))
        >>> metric.update(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.9]]), torch.tensor([0, 2]))
        >>> metric.compute()
        {'top1': tensor(0.5000), 'top2': tensor(1.)}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits: Tensor
    total: Tensor

    def __init__(
        self,
        class_embeddings: Tensor | None = None,
        top_k: int | Sequence[int] = (1, 5),
        ignore_index: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.top_k = _check_top_k(top_k)
        self.ignore_index = ignore_index
        self.class_embeddings: Tensor | None = None
        if class_embeddings is not None:
            self.set_class_embeddings(class_embeddings)
        self.add_state(
            "hits", default=torch.zeros(len(self.top_k), dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def set_class_embeddings(self, class_embeddings: Tensor) -> None:
        """Set the class embeddings (stored detached and L2-normalised).

        Args:
            class_embeddings: ``(C, D)`` embeddings, row ``c`` for class ``c``.

        Raises:
            TypeError: If it is not a floating point tensor.
            ValueError: If it is not 2-D or has no rows.
        """
        _check_embedding("class_embeddings", class_embeddings)
        if class_embeddings.shape[0] == 0:
            raise ValueError("`class_embeddings` must have at least one class.")
        x = class_embeddings.detach()
        self.class_embeddings = F.normalize(x.to(_math_dtype(x.dtype)), dim=-1)

    def update(self, image_emb: Tensor, labels: Tensor) -> None:
        """Classify a batch of embeddings and count the hits at each ``k``.

        Args:
            image_emb: ``(B, D)`` embeddings to classify.
            labels: ``(B,)`` integer class indices in ``[0, C)`` or ``ignore_index``.

        Raises:
            RuntimeError: If no class embeddings were set.
            TypeError: If an argument has the wrong kind of dtype.
            ValueError: If shapes disagree or a label is out of range.
        """
        if self.class_embeddings is None:
            raise RuntimeError(
                "ZeroShotAccuracy.update() needs class embeddings: pass `class_embeddings` or "
                "call `set_class_embeddings` first."
            )
        _check_embedding("image_emb", image_emb)
        num_classes, dim = self.class_embeddings.shape
        if image_emb.shape[1] != dim:
            raise ValueError(
                f"`image_emb` has dim {image_emb.shape[1]}, the class embeddings have dim {dim}."
            )
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
            raise TypeError("`labels` must be an integer tensor.")
        if labels.shape != (image_emb.shape[0],):
            raise ValueError(
                f"`labels` must have shape ({image_emb.shape[0]},), got {tuple(labels.shape)}."
            )
        labels = labels.to(device=image_emb.device, dtype=torch.int64)
        keep = labels != self.ignore_index
        labels = labels[keep]
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(
                f"`labels` must be in [0, {num_classes}) or {self.ignore_index}, got "
                f"{labels.unique().tolist()}."
            )
        dtype = _math_dtype(torch.promote_types(image_emb.dtype, self.class_embeddings.dtype))
        images = F.normalize(image_emb.detach()[keep].to(dtype), dim=-1)
        sims = images @ self.class_embeddings.to(images).T  # (B, C)
        true_score = sims.gather(1, labels[:, None])
        n_better = (sims > true_score).sum(dim=1)
        ks = torch.tensor(self.top_k, device=sims.device)
        self.hits += (n_better[:, None] < ks[None, :]).sum(dim=0).to(self.hits)
        self.total += labels.numel()

    def compute(self) -> dict[str, Tensor]:
        """Return the top-k accuracy over all rows seen (on all processes).

        Returns:
            ``{"top{k}": accuracy}`` float32 scalars, for each ``k``.

        Raises:
            ValueError: If no (non-ignored) rows were seen.
        """
        if int(self.total) == 0:
            raise ValueError(
                "ZeroShotAccuracy.compute() called with no data: call `update` with labelled "
                "rows first."
            )
        accuracy = (self.hits.double() / self.total).to(torch.float32)
        return {f"top{k}": accuracy[i] for i, k in enumerate(self.top_k)}
