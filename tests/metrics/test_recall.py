from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.metrics import CrossModalRecall, recall

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def reference_recall(
    image: Tensor, text: Tensor, ids: Tensor, top_k: tuple[int, ...]
) -> dict[str, float]:
    """Full N×N brute force: rank every candidate with argsort, hit if any positive in top k."""
    image = F.normalize(image.double(), dim=-1)
    text = F.normalize(text.double(), dim=-1)
    sims = image @ text.T
    positive = ids[:, None] == ids[None, :]  # symmetric
    out: dict[str, float] = {}
    for name, s in (("i2t", sims), ("t2i", sims.T)):
        order = s.argsort(dim=1, descending=True)
        ranked_positive = positive.gather(1, order)
        for k in top_k:
            out[f"{name}/R@{k}"] = ranked_positive[:, :k].any(dim=1).double().mean().item()
    out["mean"] = sum(out.values()) / len(out)
    return out


def make_pairs(n: int, dim: int, noise: float, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, generator=g, dtype=dtype)
    text = image + noise * torch.randn(n, dim, generator=g, dtype=dtype)
    return image, text


def assert_matches(result: dict[str, Tensor], expected: dict[str, float]) -> None:
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-6), key


SPLITS = (13, 40, 1, 49)  # N = 103, uneven updates, not a multiple of any chunk size below


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 200, None])
@pytest.mark.parametrize("with_ids", [False, True])
def test_matches_bruteforce(chunk_size: int | None, with_ids: bool) -> None:
    n, top_k = sum(SPLITS), (1, 5, 10)
    image, text = make_pairs(n, dim=8, noise=1.0, seed=0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, n // 3, (n,), generator=g) if with_ids else torch.arange(n)

    metric = CrossModalRecall(top_k=top_k, chunk_size=chunk_size)
    start = 0
    for size in SPLITS:
        sl = slice(start, start + size)
        metric.update(image[sl], text[sl], ids[sl] if with_ids else None)
        start += size
    result = metric.compute()
    expected = reference_recall(image, text, ids, top_k)
    assert_matches(result, expected)
    # the test data must be non-trivial, otherwise it proves little
    assert 0.05 < expected["i2t/R@1"] < 0.95
    assert 0.05 < expected["t2i/R@1"] < 0.95


def test_several_captions_per_image() -> None:
    # 30 images with 3 captions each, images repeated row-wise (as a paired dataloader yields).
    n_img, n_cap, dim = 30, 3, 16
    g = torch.Generator().manual_seed(2)
    images = torch.randn(n_img, dim, generator=g, dtype=torch.float64)
    image = images.repeat_interleave(n_cap, dim=0)
    text = image + 1.2 * torch.randn(n_img * n_cap, dim, generator=g, dtype=torch.float64)
    ids = torch.arange(n_img).repeat_interleave(n_cap)
    perm = torch.randperm(n_img * n_cap, generator=g)
    image, text, ids = image[perm], text[perm], ids[perm]

    metric = CrossModalRecall(top_k=(1, 2, 5), chunk_size=11)
    metric.update(image[:50], text[:50], ids[:50])
    metric.update(image[50:], text[50:], ids[50:])
    assert_matches(metric.compute(), reference_recall(image, text, ids, (1, 2, 5)))


def test_mixed_default_and_explicit_ids() -> None:
    image, text = make_pairs(60, dim=8, noise=0.8, seed=3)
    explicit = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5] * 2)
    metric = CrossModalRecall(chunk_size=9)
    metric.update(image[:20], text[:20])  # own ids
    metric.update(image[20:40], text[20:40], explicit)
    metric.update(image[40:], text[40:])  # own ids again: must not collide with earlier ones
    # Reference ids: explicit ids as given, every default row a fresh id.
    ids = torch.arange(60) + 1000
    ids[20:40] = explicit
    assert_matches(metric.compute(), reference_recall(image, text, ids, (1, 5, 10)))


def test_explicit_ids_can_be_any_int64() -> None:
    image, text = make_pairs(40, dim=8, noise=0.8, seed=4)
    ids = torch.randint(-5, 5, (40,), generator=torch.Generator().manual_seed(0)) * (2**60)
    metric = CrossModalRecall(chunk_size=6)
    metric.update(image[:15], text[:15], ids[:15])
    metric.update(image[15:], text[15:], ids[15:])
    assert_matches(metric.compute(), reference_recall(image, text, ids, (1, 5, 10)))


@pytest.mark.parametrize("with_ids", [False, True])
def test_n_smaller_than_k(with_ids: bool) -> None:
    image, text = make_pairs(4, dim=8, noise=2.0, seed=5)
    ids = torch.tensor([0, 1, 1, 2]) if with_ids else torch.arange(4)
    metric = CrossModalRecall(top_k=(1, 3, 5, 10), chunk_size=3)
    metric.update(image, text, ids if with_ids else None)
    result = metric.compute()
    assert_matches(result, reference_recall(image, text, ids, (1, 3, 5, 10)))
    for name in ("i2t", "t2i"):
        assert result[f"{name}/R@5"].item() == 1.0
        assert result[f"{name}/R@10"].item() == 1.0


def test_single_row() -> None:
    metric = CrossModalRecall()
    metric.update(torch.randn(1, 3), torch.randn(1, 3))
    assert all(v.item() == 1.0 for v in metric.compute().values())


def test_ties_resolved_in_favour_of_positive() -> None:
    emb = torch.ones(5, 4)
    metric = CrossModalRecall(top_k=1)
    metric.update(emb, emb)
    assert metric.compute() == {
        "i2t/R@1": torch.tensor(1.0),
        "t2i/R@1": torch.tensor(1.0),
        "mean": torch.tensor(1.0),
    }


def counted_recall(
    image: Tensor, text: Tensor, ids: Tensor, top_k: tuple[int, ...]
) -> dict[str, float]:
    """Brute force of the tie rule itself: a hit at k when fewer than k candidates score
    strictly above the best positive (the argsort reference leaves tied orders to chance)."""
    sims = F.normalize(image.double(), dim=-1) @ F.normalize(text.double(), dim=-1).T
    positive = ids[:, None] == ids[None, :]
    out: dict[str, float] = {}
    for name, s in (("i2t", sims), ("t2i", sims.T)):
        best = s.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        better = (s > best).sum(dim=1)
        for k in top_k:
            out[f"{name}/R@{k}"] = (better < k).double().mean().item()
    out["mean"] = sum(out.values()) / len(out)
    return out


@pytest.mark.parametrize("chunk_size", [5, None])
def test_duplicate_rows_tie_with_the_positive_in_both_directions(chunk_size: int | None) -> None:
    # Each image fed once per caption and each caption fed twice, every row its own id: the
    # copies of a row score exactly like it, in every chunk, so they tie with the positive.
    g = torch.Generator().manual_seed(8)
    image = torch.randn(12, 8, generator=g).repeat_interleave(3, dim=0)
    text = (image[::2] + torch.randn(18, 8, generator=g)).repeat_interleave(2, dim=0)
    shuffle = torch.randperm(36, generator=g)
    image, text = image[shuffle], text[shuffle]
    metric = CrossModalRecall(top_k=(1, 2, 3), chunk_size=chunk_size)
    metric.update(image, text)
    assert_matches(metric.compute(), counted_recall(image, text, torch.arange(36), (1, 2, 3)))
    # the data must hold such ties in both directions, otherwise it proves little
    sims = F.normalize(image.double(), dim=-1) @ F.normalize(text.double(), dim=-1).T
    for scores in (sims, sims.T):
        assert bool((scores == scores.diagonal()[:, None]).sum(dim=1).gt(1).all())


@pytest.mark.parametrize("with_ids", [False, True])
def test_unconfirmed_best_positives_are_recounted(
    monkeypatch: pytest.MonkeyPatch, with_ids: bool
) -> None:
    # Text→image counts against each text's best positive score from small products; where
    # the one-pass products score that pair differently (another summation order), the text
    # is recounted. Force it: every small-product score off, up or down.
    precomputed = recall._text_best_positive

    def off(*args: object) -> Tensor:
        best = precomputed(*args)  # type: ignore[arg-type]
        return best + torch.arange(best.numel()).remainder(2).mul(2e-3).sub(1e-3)

    recounted: list[int] = []
    count_better = recall._count_better

    def spy(queries: Tensor, query_ids: Tensor, *rest: object) -> Tensor:
        recounted.append(query_ids.numel())
        return count_better(queries, query_ids, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(recall, "_text_best_positive", off)
    monkeypatch.setattr(recall, "_count_better", spy)
    n = sum(SPLITS)
    image, text = make_pairs(n, dim=8, noise=1.0, seed=9)
    ids = torch.randint(0, n // 3, (n,), generator=torch.Generator().manual_seed(2))
    metric = CrossModalRecall(chunk_size=16)
    metric.update(image, text, ids if with_ids else None)
    assert_matches(
        metric.compute(),
        reference_recall(image, text, ids if with_ids else torch.arange(n), (1, 5, 10)),
    )
    assert recounted == [n]


def test_float32_and_bfloat16_inputs() -> None:
    image, text = make_pairs(103, dim=16, noise=1.0, seed=6, dtype=torch.float32)
    expected = reference_recall(image, text, torch.arange(103), (1, 5, 10))
    metric = CrossModalRecall(chunk_size=10)
    metric.update(image, text)
    assert_matches(metric.compute(), expected)
    assert metric.image_emb[0].dtype == torch.float32

    metric_bf16 = CrossModalRecall(chunk_size=10)
    metric_bf16.update(image.bfloat16(), text.bfloat16())
    assert metric_bf16.image_emb[0].dtype == torch.bfloat16
    result = metric_bf16.compute()
    assert result["mean"].dtype == torch.float32
    assert result["mean"].item() == pytest.approx(expected["mean"], abs=0.05)


def test_states_are_detached_and_normalised() -> None:
    image = torch.randn(6, 4, requires_grad=True)
    metric = CrossModalRecall()
    metric.update(image * 3, image * 2)
    stored = metric.image_emb[0]
    assert not stored.requires_grad
    torch.testing.assert_close(stored.norm(dim=1), torch.ones(6))


def test_reset_and_forward() -> None:
    image, text = make_pairs(30, dim=8, noise=1.0, seed=7)
    metric = CrossModalRecall(chunk_size=4)
    batch_value = metric(image[:10], text[:10])  # forward: value on this batch only
    assert_matches(
        batch_value, reference_recall(image[:10], text[:10], torch.arange(10), (1, 5, 10))
    )
    metric.update(image[10:], text[10:])
    assert_matches(metric.compute(), reference_recall(image, text, torch.arange(30), (1, 5, 10)))
    metric.reset()
    metric.update(image[:10], text[:10])
    assert_matches(
        metric.compute(), reference_recall(image[:10], text[:10], torch.arange(10), (1, 5, 10))
    )


def test_class_attributes() -> None:
    assert CrossModalRecall.is_differentiable is False
    assert CrossModalRecall.higher_is_better is True
    assert CrossModalRecall.full_state_update is False
    assert CrossModalRecall(top_k=(10, 1, 5, 5)).top_k == (1, 5, 10)


def test_update_validation() -> None:
    metric = CrossModalRecall()
    with pytest.raises(ValueError, match="`image_emb` and `text_emb` must have the same shape"):
        metric.update(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="`image_emb` must be 2-D"):
        metric.update(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="`text_emb` must be 2-D"):
        metric.update(torch.randn(4, 3), torch.randn(4, 3, 1))
    with pytest.raises(TypeError, match="`image_emb` must be a floating point"):
        metric.update(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3))
    with pytest.raises(TypeError, match="`text_emb` must be a torch.Tensor"):
        metric.update(torch.randn(4, 3), [[0.0] * 3] * 4)
    with pytest.raises(ValueError, match=r"`pair_ids` must have shape \(4,\)"):
        metric.update(torch.randn(4, 3), torch.randn(4, 3), torch.arange(5))
    with pytest.raises(TypeError, match="`pair_ids` must be an integer tensor"):
        metric.update(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4))
    metric.update(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="earlier updates had dim 3"):
        metric.update(torch.randn(4, 5), torch.randn(4, 5))


def test_compute_without_data_raises() -> None:
    metric = CrossModalRecall()
    with pytest.raises(ValueError, match="no data"):
        metric.compute()
    metric.update(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match="no data"):
        metric.compute()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"top_k": ()}, ValueError),
        ({"top_k": (1, 0)}, ValueError),
        ({"top_k": (1.5,)}, TypeError),
        ({"chunk_size": 0}, ValueError),
        ({"chunk_size": 2.0}, TypeError),
    ],
)
def test_init_validation(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        CrossModalRecall(**kwargs)


@pytest.mark.parametrize("chunk_size", [1, 16, None])
@pytest.mark.parametrize("num_ids", [1, 5, 40])
def test_distinct_texts_rank_one_text_per_id(chunk_size: int | None, num_ids: int) -> None:
    # Repeated captions (few ids): image→text ranks each distinct caption once.
    n, top_k = 60, (1, 2, 5)
    image, text = make_pairs(n, dim=8, noise=1.0, seed=3)
    ids = torch.randint(0, num_ids, (n,), generator=torch.Generator().manual_seed(4))
    text = text.clone()
    for row in range(n):  # equal ids: equal captions, hence equal text embeddings
        text[row] = text[int((ids == ids[row]).nonzero()[0])]
    metric = CrossModalRecall(top_k=top_k, chunk_size=chunk_size, distinct_texts=True)
    metric.update(image, text, ids)
    result = metric.compute()

    first = torch.stack([(ids == u).nonzero()[0, 0] for u in ids.unique()])
    distinct = F.normalize(text[first], dim=-1)
    sims = F.normalize(image, dim=-1) @ distinct.T
    positive = ids[:, None] == ids[first][None, :]
    order = sims.argsort(dim=1, descending=True)
    for k in top_k:
        expected = positive.gather(1, order)[:, :k].any(dim=1).double().mean().item()
        assert result[f"i2t/R@{k}"].item() == pytest.approx(expected, abs=1e-6)
    # text→image is the usual protocol
    full = reference_recall(image, text, ids, top_k)
    for k in top_k:
        assert result[f"t2i/R@{k}"].item() == pytest.approx(full[f"t2i/R@{k}"], abs=1e-6)
    if num_ids < max(top_k):  # every distinct caption is within the top k: all hits
        assert result[f"i2t/R@{max(top_k)}"].item() == 1.0
