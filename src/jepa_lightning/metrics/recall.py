"""Cross-modal retrieval recall (image→text and text→image Recall@K) as a torchmetrics metric.

The metric follows the CLIP / COCO retrieval protocol: every query is ranked against *all*
candidates of the other modality seen so far (on all processes), and a query counts as a hit
at ``k`` when **any** of its positives is among its ``k`` most similar candidates.

The computation never materialises the ``N × N`` similarity matrix: image rows are processed
in chunks of ``chunk_size`` rows, each chunk's scores against every text serving both
directions, so the extra memory is ``O(chunk_size · N)`` on top of the ``O(N · D)`` stored
embeddings, and the result is exact for every ``N``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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


def _parts(state: list[Tensor] | Tensor) -> list[Tensor]:
    """A ``cat`` state as its pieces (one tensor after a distributed sync)."""
    return [state] if isinstance(state, Tensor) else list(state)


def _row_blocks(parts: list[Tensor], rows: int, dtype: torch.dtype) -> Iterator[Tensor]:
    """Consecutive blocks of ``rows`` rows of the pieces' concatenation, in ``dtype``.

    Only a block is copied, never the whole concatenation (a block within one piece is a view
    of it). The last block may be shorter.
    """
    pending: list[Tensor] = []
    count = 0
    for part in parts:
        start = 0
        while start < part.shape[0]:
            take = part[start : start + rows - count]
            pending.append(take)
            count += take.shape[0]
            start += take.shape[0]
            if count == rows:
                yield (pending[0] if len(pending) == 1 else torch.cat(pending)).to(dtype)
                pending, count = [], 0
    if pending:
        yield (pending[0] if len(pending) == 1 else torch.cat(pending)).to(dtype)


def _auto_chunk_size(n: int) -> int:
    """Return the rows per chunk so that a chunk holds about ``_AUTO_CHUNK_ELEMENTS`` entries."""
    return max(_MIN_AUTO_CHUNK, _AUTO_CHUNK_ELEMENTS // max(n, 1))


def _distinct_first(ids: Tensor) -> tuple[Tensor, int]:
    """A row order with the first row of each distinct id first (in id order), then the rest.

    Returns:
        The order (a permutation of ``0..N-1``) and the number ``U`` of distinct ids.
    """
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full_like(unique, ids.numel()).scatter_reduce(0, inverse, positions, "amin")
    is_first = torch.zeros_like(ids, dtype=torch.bool).index_fill_(0, first, True)
    return torch.cat([first, positions[~is_first]]), unique.numel()


def _concat_rows(parts: list[Tensor], dtype: torch.dtype, order: Tensor | None) -> Tensor:
    """The pieces' concatenation in ``dtype``, its rows in ``order`` when given.

    The rows are copied piece by piece into one new tensor, so no second full copy is made.
    """
    if order is None:
        return dim_zero_cat(parts).to(dtype)
    position = torch.empty_like(order).index_copy_(
        0, order, torch.arange(order.numel(), device=order.device)
    )
    out = parts[0].new_empty(order.numel(), parts[0].shape[1], dtype=dtype)
    start = 0
    for part in parts:
        out.index_copy_(0, position[start : start + part.shape[0]], part.to(dtype))
        start += part.shape[0]
    return out


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

    **Distinct texts.** With ``distinct_texts=True`` image→text ranks one text per pair id
    (the first seen): when ids identify captions (equal captions share an id, as VL-JEPA's do),
    that is caption-level retrieval, where copies of a caption are one candidate. Text→image
    is unchanged (every text row is a query).

    **Distributed.** States are lists concatenated across processes (``dist_reduce_fx="cat"``).
    As with every torchmetrics ``cat`` state, each process must call :meth:`update` at least
    once before a synced :meth:`compute` (an empty ``(0, D)`` batch is fine).

    Args:
        top_k: The ``k`` values to report, positive integers (a single int is accepted).
        chunk_size: Image rows per similarity chunk. ``None`` picks it so that a chunk holds
            about 16M similarities (``chunk_size = max(32, 2**24 // N)``). The memory of
            :meth:`compute` is ``O(chunk_size · N + N · D)``: on top of the stored
            embeddings, the texts' concatenated copy (image rows are read from the stored
            batches), ``8 · chunk_size · N`` bytes for a chunk's float32 scores and their
            comparison with each text's best positive, and under 128 bytes a row of ids and
            counts. Texts whose scores must be recounted (see :meth:`compute`; normally
            none) add their rows again.
        distinct_texts: Rank one text per pair id for image→text (see above).
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
        distinct_texts: bool = False,
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
        self.distinct_texts = distinct_texts

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

        One matrix product of each chunk of images with every text serves both directions.
        Text→image needs each text's best positive score before the first chunk; it is
        computed first from small products and confirmed by the chunks' own scores. A text
        whose two scores differ (the matrix library summed the pair in another order) is
        recounted against every image on its own, so the result stays exact.

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
        ids = self._resolve_ids(ids_raw.long(), dim_zero_cat(self.has_pair_id).bool())
        del ids_raw
        n = ids.numel()
        chunk = self.chunk_size if self.chunk_size is not None else _auto_chunk_size(n)
        image_parts, text_parts = _parts(self.image_emb), _parts(self.text_emb)
        math_dtype = _math_dtype(torch.promote_types(image_parts[0].dtype, text_parts[0].dtype))

        # The texts are the one modality concatenated; image rows are read from the stored
        # pieces a chunk at a time. With distinct texts, each id's first text comes first, and
        # image→text ranks those columns only.
        order, i2t_columns = _distinct_first(ids) if self.distinct_texts else (None, n)
        texts = _concat_rows(text_parts, math_dtype, order)
        text_ids = ids if order is None else ids[order]
        i2t_better, t2i_better, unconfirmed = _count_better_both(
            image_parts, ids, texts, text_ids, i2t_columns, chunk
        )
        if bool(unconfirmed.any()):  # recounted as queries, each against every image
            recount = unconfirmed.nonzero().squeeze(1)
            queries, query_ids = texts[recount], text_ids[recount]
            del texts
            images = _concat_rows(image_parts, math_dtype, None)
            t2i_better[recount] = _count_better(queries, query_ids, images, ids, chunk).double()

        result: dict[str, Tensor] = {}
        for name, better in (("i2t", i2t_better), ("t2i", t2i_better)):
            for k in self.top_k:
                hits = int((better < k).sum())
                result[f"{name}/R@{k}"] = torch.tensor(
                    hits / n, dtype=torch.float32, device=ids.device
                )
        result["mean"] = torch.stack(list(result.values())).mean()
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


class _Groups:
    """Candidates grouped by id: where each query's positives are, without an ``N × N`` mask."""

    def __init__(self, candidate_ids: Tensor) -> None:
        self.order = torch.argsort(candidate_ids, stable=True)
        self.ids, self.counts = torch.unique_consecutive(
            candidate_ids[self.order], return_counts=True
        )
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def positives(self, query_ids: Tensor) -> tuple[Tensor, Tensor]:
        """The candidates that are positives of each query.

        Args:
            query_ids: ``(c,)`` ids of the queries.

        Returns:
            ``(c, w)`` candidate indices, ``w`` the most positives any of the queries has, and
            the ``(c, w)`` mask of the real ones (a query with fewer positives is padded).
        """
        group = torch.searchsorted(self.ids, query_ids).clamp(max=self.ids.numel() - 1)
        found = self.ids[group] == query_ids
        counts = torch.where(found, self.counts[group], 0)
        width = max(int(counts.max()), 1)
        offsets = torch.arange(width, device=query_ids.device)
        slots = (self.starts[group, None] + offsets).clamp(max=self.order.numel() - 1)
        return self.order[slots], offsets < counts[:, None]

    def best_positive(self, sims: Tensor, query_ids: Tensor) -> Tensor:
        """The highest score of each query's positives (``-inf`` for a query with none).

        Args:
            sims: ``(c, N)`` scores of ``c`` queries against every candidate.
            query_ids: ``(c,)`` ids of the queries.

        Returns:
            ``(c,)`` best positive scores.
        """
        columns, is_positive = self.positives(query_ids)
        return sims.gather(1, columns).masked_fill(~is_positive, float("-inf")).amax(dim=1)


def _count_better(
    query_blocks: Iterable[Tensor],
    query_ids: Tensor,
    candidates: Tensor,
    candidate_ids: Tensor,
    chunk: int,
) -> Tensor:
    """For each query, how many candidates score strictly higher than its best positive.

    Per block: one matrix product into a reused buffer, a gather of the positives' scores,
    then the buffer is overwritten in place with "scores higher than the best positive" as
    0/1 and summed per row. A query is a hit at ``k`` when its count is below ``k``: the
    ``k``-th best score is at most the best positive's exactly when fewer than ``k`` scores
    are above it, so no ``topk`` is needed. The float32 row sums are exact integers while
    below 2**24, and a larger count is above any ``k`` in use.

    Args:
        query_blocks: Normalised query embeddings, in consecutive blocks of at most ``chunk``
            rows (a ``(Nq, D)`` tensor is read in blocks of ``chunk`` rows).
        query_ids: Pair id of each query ``(Nq,)``, in the blocks' order.
        candidates: Normalised candidate embeddings ``(Nc, D)``.
        candidate_ids: Pair id of each candidate ``(Nc,)``; equal ids are positives.
        chunk: Most query rows per block.

    Returns:
        ``(Nq,)`` counts, in the candidates' dtype.
    """
    if isinstance(query_blocks, Tensor):
        query_blocks = query_blocks.split(chunk)
    groups = _Groups(candidate_ids)
    better = candidates.new_empty(query_ids.numel())
    sims_buffer = candidates.new_empty(min(chunk, query_ids.numel()), candidates.shape[0])
    start = 0
    for block in query_blocks:
        end = start + block.shape[0]
        sims = torch.mm(block, candidates.T, out=sims_buffer[: block.shape[0]])
        best = groups.best_positive(sims, query_ids[start:end])
        better[start:end] = torch.gt(sims, best[:, None], out=sims).sum(dim=1)
        start = end
    return better


def _text_best_positive(
    image_blocks: Iterable[Tensor], image_ids: Tensor, texts: Tensor, groups: _Groups
) -> Tensor:
    """The score of each text's best positive image, from small products.

    Each block of images is multiplied with its positive texts only: a few columns per row,
    rather than all ``N``.

    Args:
        image_blocks: Normalised image embeddings, in consecutive blocks.
        image_ids: Pair id of each image, in the blocks' order.
        texts: Normalised text embeddings ``(Nt, D)``.
        groups: The texts grouped by id.

    Returns:
        ``(Nt,)`` best positive scores (``-inf`` for a text without a positive image).
    """
    best = texts.new_full((texts.shape[0],), float("-inf"))
    start = 0
    for block in image_blocks:
        end = start + block.shape[0]
        columns, is_positive = groups.positives(image_ids[start:end])
        needed, slot = torch.unique(columns[is_positive], return_inverse=True)
        scores = torch.mm(block, texts[needed].T)
        rows = torch.arange(block.shape[0], device=texts.device)[:, None].expand_as(columns)
        best.scatter_reduce_(0, columns[is_positive], scores[rows[is_positive], slot], "amax")
        start = end
    return best


def _count_better_both(
    image_parts: list[Tensor],
    image_ids: Tensor,
    texts: Tensor,
    text_ids: Tensor,
    i2t_columns: int,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_count_better` for both directions, from one matrix product per chunk of images.

    Each chunk of image rows is multiplied with every text once. Image→text counts per row
    as :func:`_count_better` does. Text→image counts per column, against each text's best
    positive score, which must be known before the first chunk: :func:`_text_best_positive`
    computes it first, from products over a few columns, and every chunk confirms it with its
    own scores of the same pairs. A text whose two values differ (the matrix library summed a
    pair in another order in the two products) is returned as unconfirmed: its count is not
    exact and must be recounted. Matching the scores exactly, rather than within a tolerance,
    keeps ties (equal embeddings) ties in both directions.

    Args:
        image_parts: Normalised image embeddings ``(Ni, D)`` in pieces, read ``chunk`` rows
            at a time.
        image_ids: Pair id of each image ``(Ni,)``.
        texts: Normalised text embeddings ``(Nt, D)``.
        text_ids: Pair id of each text ``(Nt,)``.
        i2t_columns: Image→text ranks the first ``i2t_columns`` texts only.
        chunk: Image rows per chunk.

    Returns:
        Image→text counts ``(Ni,)``, text→image counts ``(Nt,)`` and the ``(Nt,)`` mask of
        unconfirmed texts.
    """
    dtype = texts.dtype
    text_groups = _Groups(text_ids)
    i2t_groups = text_groups if i2t_columns == texts.shape[0] else _Groups(text_ids[:i2t_columns])
    text_best = _text_best_positive(
        _row_blocks(image_parts, chunk, dtype), image_ids, texts, text_groups
    )
    confirmed = torch.full_like(text_best, float("-inf"))
    i2t_better = texts.new_empty(image_ids.numel())
    t2i_better = torch.zeros(texts.shape[0], dtype=torch.float64, device=texts.device)
    sims_buffer = texts.new_empty(min(chunk, image_ids.numel()), texts.shape[0])
    above_buffer = torch.empty_like(sims_buffer)
    start = 0
    for block in _row_blocks(image_parts, chunk, dtype):
        end = start + block.shape[0]
        block_ids = image_ids[start:end]
        sims = torch.mm(block, texts.T, out=sims_buffer[: block.shape[0]])
        columns, is_positive = text_groups.positives(block_ids)
        positive_scores = sims.gather(1, columns)[is_positive]
        confirmed.scatter_reduce_(0, columns[is_positive], positive_scores, "amax")
        above = torch.gt(sims, text_best, out=above_buffer[: block.shape[0]])
        t2i_better += above.sum(dim=0)
        i2t_sims = sims[:, :i2t_columns]
        best = i2t_groups.best_positive(i2t_sims, block_ids)
        i2t_better[start:end] = torch.gt(i2t_sims, best[:, None], out=i2t_sims).sum(dim=1)
        start = end
    return i2t_better, t2i_better, confirmed != text_best
