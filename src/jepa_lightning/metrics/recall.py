"""Cross-modal retrieval recall (image→text and text→image Recall@K) as a torchmetrics metric.

The metric follows the CLIP / COCO retrieval protocol: every query is ranked against *all*
candidates of the other modality seen so far (on all processes), and a query counts as a hit
at ``k`` when **any** of its positives is among its ``k`` most similar candidates.

The computation never materialises the ``N × N`` similarity matrix: query rows are processed
in chunks of ``chunk_size`` rows, so the extra memory is ``O(chunk_size · N)`` on top of the
``O(N · D)`` stored embeddings, and the result is exact for every ``N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["CrossModalRecall"]

#: Target number of similarity entries per chunk when ``chunk_size`` is ``None`` (64 MiB of fp32).
_AUTO_CHUNK_ELEMENTS = 1 << 24
#: Lower bound on automatic chunk rows (keeps the matmul efficient for very large ``N``).
_MIN_AUTO_CHUNK = 32


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype used for the arithmetic: at least float32, float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_embedding(name: str, x: Any) -> Tensor:
    """Validate that ``x`` is a 2-D floating point tensor.

    Args:
        name: Argument name used in error messages.
        x: Value to validate.

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: If ``x`` is not a floating point tensor.
        ValueError: If ``x`` is not 2-D.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {x.dtype}.")
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D with shape (batch, dim), got {x.ndim}-D shape {tuple(x.shape)}."
        )
    return x


def _check_top_k(top_k: int | Sequence[int]) -> tuple[int, ...]:
    """Validates ``top_k`` and returns its distinct values, ascending."""
    ks = (top_k,) if isinstance(top_k, int) else tuple(top_k)
    if len(ks) == 0:
        raise ValueError("`top_k` must contain at least one value.")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"`top_k` values must be ints, got {k!r}.")
        if k < 1:
            raise ValueError(f"`top_k` values must be positive, got {k}.")
    return tuple(sorted(set(ks)))


def _normalize(x: Tensor) -> Tensor:
    """L2-normalise rows of ``x`` in (at least) float32 and return them detached in ``x.dtype``."""
    x = x.detach()
    return F.normalize(x.to(_math_dtype(x.dtype)), dim=-1).to(x.dtype)


def _cat_state(state: list[Tensor] | Tensor) -> Tensor | None:
    """Concatenate a ``cat`` list state (a tensor after a distributed sync); ``None`` if empty."""
    if isinstance(state, list) and len(state) == 0:
        return None
    return dim_zero_cat(state)


def _auto_chunk_size(n: int) -> int:
    """Return the rows per chunk so that a chunk holds about ``_AUTO_CHUNK_ELEMENTS`` entries."""
    return max(_MIN_AUTO_CHUNK, _AUTO_CHUNK_ELEMENTS // max(n, 1))


class CrossModalRecall(Metric):
    """Image→text and text→image Recall@K with support for several positives per query.

    Row ``i`` of ``image_emb`` and row ``i`` of ``text_emb`` form a positive pair. When
    ``pair_ids`` is given, every image and every text that share an id are positives of each
    other (e.g. several captions per image, or repeated captions). Similarity is the cosine
    similarity (inputs are L2-normalised inside).

    **Hit test.** For each query, let ``p`` be the score of its best-scoring positive and ``c``
    the number of candidates scoring *strictly* higher than ``p``. The query is a hit at ``k``
    iff ``c < k``. This equals "some positive is in the top ``k``" (exact, no sort needed);
    ties between the best positive and negatives are resolved in favour of the positive. When
    fewer than ``k`` candidates exist, the top ``k`` covers all of them and every query is a hit.

    **Default ids.** Rows from updates without ``pair_ids`` are each their own id. This is
    stored as a per-row flag (not as a generated number), and ids are resolved in
    :meth:`compute` after the states of all processes are gathered: explicit ids are remapped
    to ``0..U-1`` and flagged rows get ``U + global_row_index``. Default ids therefore never
    collide with each other (across updates or ranks) nor with explicit ids, and explicit ids
    may be any int64 values. Explicit ids are only compared with each other, across all
    updates and ranks (the same id in two batches means positives of each other).

    **Duplicate rows.** Every row is a separate query and a separate candidate. If the same
    image is fed once per caption, its copies are separate negatives for the other captions'
    text→image queries (R@1 is unaffected; R@k for k > 1 can be lower than COCO's protocol,
    which ranks against unique images), and the image→text average is over rows rather than
    unique images. The same holds for samples duplicated by a padding ``DistributedSampler``.

    **Distributed.** States are lists concatenated across processes (``dist_reduce_fx="cat"``).
    As with every torchmetrics ``cat`` state, each process must call :meth:`update` at least
    once before a synced :meth:`compute` (an empty ``(0, D)`` batch is fine).

    Args:
        top_k: The ``k`` values to report, positive integers (a single int is accepted).
        chunk_size: Query rows per similarity chunk. ``None`` picks it so that a chunk holds
            about 16M similarities (``chunk_size = max(32, 2**24 // N)``). The memory of
            :meth:`compute` is ``O(chunk_size · N + N · D)``.
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If ``top_k`` is empty or holds a non-positive value, or ``chunk_size`` is
            not a positive integer.
        TypeError: If ``top_k`` or ``chunk_size`` have the wrong type.

    Example:
        >>> import torch
        >>> metric = CrossModalRecall(top_k=(1, 5))
        >>> emb = torch.eye(8)
        >>> metric.update(emb, 2 * emb)
        >>> metric.compute()["t2i/R@1"]
        tensor(1.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    image_emb: list[Tensor]
    text_emb: list[Tensor]
    pair_ids: list[Tensor]
    has_pair_id: list[Tensor]

    def __init__(
        self,
        top_k: int | Sequence[int] = (1, 5, 10),
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
                raise TypeError(f"`chunk_size` must be an int or None, got {chunk_size!r}.")
            if chunk_size < 1:
                raise ValueError(f"`chunk_size` must be positive, got {chunk_size}.")
        self.top_k = _check_top_k(top_k)
        self.chunk_size = chunk_size

        self.add_state("image_emb", default=[], dist_reduce_fx="cat")
        self.add_state("text_emb", default=[], dist_reduce_fx="cat")
        self.add_state("pair_ids", default=[], dist_reduce_fx="cat")
        # uint8 rather than bool: every collective backend can gather it.
        self.add_state("has_pair_id", default=[], dist_reduce_fx="cat")

    def update(self, image_emb: Tensor, text_emb: Tensor, pair_ids: Tensor | None = None) -> None:
        """Store a batch of paired embeddings.

        Args:
            image_emb: Image embeddings, shape ``(B, D)``, floating point.
            text_emb: Text embeddings, shape ``(B, D)``; row ``i`` is a positive of
                ``image_emb[i]``.
            pair_ids: Optional integer ids, shape ``(B,)``. Rows (of either modality) with the
                same id are positives of each other, across all updates and processes. If
                ``None``, each row is its own id.

        Raises:
            TypeError: If an argument is not a tensor of the right kind of dtype.
            ValueError: If shapes are inconsistent with each other or with earlier updates.
        """
        _check_embedding("image_emb", image_emb)
        _check_embedding("text_emb", text_emb)
        if image_emb.shape != text_emb.shape:
            raise ValueError(
                "`image_emb` and `text_emb` must have the same shape (B, D), got "
                f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}."
            )
        batch, dim = image_emb.shape
        if isinstance(self.image_emb, list) and self.image_emb:
            expected = self.image_emb[0].shape[1]
            if dim != expected:
                raise ValueError(
                    f"`image_emb` and `text_emb` have embedding dim {dim}, but earlier updates "
                    f"had dim {expected}."
                )
        if pair_ids is None:
            ids = torch.zeros(batch, dtype=torch.int64, device=image_emb.device)
            flag = torch.zeros(batch, dtype=torch.uint8, device=image_emb.device)
        else:
            if not isinstance(pair_ids, Tensor):
                raise TypeError(
                    f"`pair_ids` must be a torch.Tensor or None, got {type(pair_ids).__name__}."
                )
            if (
                pair_ids.is_floating_point()
                or pair_ids.is_complex()
                or pair_ids.dtype == torch.bool
            ):
                raise TypeError(f"`pair_ids` must be an integer tensor, got {pair_ids.dtype}.")
            if pair_ids.shape != (batch,):
                raise ValueError(
                    f"`pair_ids` must have shape ({batch},) to match `image_emb`, got "
                    f"{tuple(pair_ids.shape)}."
                )
            ids = pair_ids.detach().to(device=image_emb.device, dtype=torch.int64)
            flag = torch.ones(batch, dtype=torch.uint8, device=image_emb.device)

        self.image_emb.append(_normalize(image_emb))
        self.text_emb.append(_normalize(text_emb))
        self.pair_ids.append(ids)
        self.has_pair_id.append(flag)

    def compute(self) -> dict[str, Tensor]:
        """Compute Recall@K in both directions over everything seen (on all processes).

        Returns:
            Dict with float32 scalars ``"i2t/R@{k}"`` and ``"t2i/R@{k}"`` for each ``k`` and
            ``"mean"``, the average of all of them.

        Raises:
            ValueError: If no rows were seen.
        """
        ids_raw = _cat_state(self.pair_ids)
        if ids_raw is None or ids_raw.numel() == 0:
            raise ValueError(
                "CrossModalRecall.compute() called with no data: call `update` with non-empty "
                "`image_emb` / `text_emb` first."
            )
        image = dim_zero_cat(self.image_emb)
        text = dim_zero_cat(self.text_emb)
        ids = self._resolve_ids(ids_raw.long(), dim_zero_cat(self.has_pair_id).bool())

        n = ids.numel()
        chunk = self.chunk_size if self.chunk_size is not None else _auto_chunk_size(n)
        math_dtype = _math_dtype(torch.promote_types(image.dtype, text.dtype))
        image = image.to(math_dtype)
        text = text.to(math_dtype)

        result: dict[str, Tensor] = {}
        values = []
        for name, queries, candidates in (("i2t", image, text), ("t2i", text, image)):
            hits = _count_hits(queries, candidates, ids, self.top_k, chunk)
            for k, h in zip(self.top_k, hits.tolist(), strict=True):
                value = torch.tensor(h / n, dtype=torch.float32, device=image.device)
                result[f"{name}/R@{k}"] = value
                values.append(value)
        result["mean"] = torch.stack(values).mean()
        return result

    @staticmethod
    def _resolve_ids(ids: Tensor, has_id: Tensor) -> Tensor:
        """Turn explicit ids + "own id" flags into one collision-free id per row."""
        if bool(has_id.all()):
            return ids
        resolved = torch.arange(ids.numel(), device=ids.device, dtype=torch.int64)
        if bool(has_id.any()):
            uniq, inverse = torch.unique(ids[has_id], return_inverse=True)
            resolved += uniq.numel()
            resolved[has_id] = inverse
        return resolved


def _count_hits(
    queries: Tensor, candidates: Tensor, ids: Tensor, top_k: tuple[int, ...], chunk: int
) -> Tensor:
    """Count queries whose best positive has fewer than ``k`` strictly better candidates.

    Args:
        queries: Normalised query embeddings ``(N, D)``.
        candidates: Normalised candidate embeddings ``(N, D)``.
        ids: Pair id of each row ``(N,)``; equal ids are positives.
        top_k: The ``k`` values.
        chunk: Query rows per chunk.

    Returns:
        int64 tensor of shape ``(len(top_k),)`` with the number of hits at each ``k``.
    """
    ks = torch.tensor(top_k, device=queries.device)
    hits = torch.zeros(len(top_k), dtype=torch.int64, device=queries.device)
    cand_t = candidates.T
    neg_inf = torch.tensor(float("-inf"), dtype=queries.dtype, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ cand_t  # (c, N)
        positive = ids[start : start + chunk, None] == ids[None, :]  # (c, N)
        best_pos = torch.where(positive, sims, neg_inf).amax(dim=1, keepdim=True)
        n_better = (sims > best_pos).sum(dim=1)  # (c,)
        hits += (n_better[:, None] < ks[None, :]).sum(dim=0)
    return hits
