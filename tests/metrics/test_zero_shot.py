from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.metrics import ZeroShotAccuracy

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def reference_accuracy(
    image: Tensor, classes: Tensor, labels: Tensor, top_k: tuple[int, ...], ignore: int = -1
) -> dict[str, float]:
    """Brute force: rank every class with argsort, hit if the true class is in the top k."""
    keep = labels != ignore
    sims = F.normalize(image[keep].double(), dim=-1) @ F.normalize(classes.double(), dim=-1).T
    ranks = sims.argsort(dim=1, descending=True)
    hit_rank = (ranks == labels[keep, None]).float().argmax(dim=1)
    return {f"top{k}": (hit_rank < k).double().mean().item() for k in top_k}


def make_data(n: int, num_classes: int, dim: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    image = classes[labels] + 1.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return image, classes, labels


@pytest.mark.parametrize("top_k", [(1,), (1, 5), (2, 3, 12)])
def test_matches_brute_force_over_several_updates(top_k: tuple[int, ...]) -> None:
    image, classes, labels = make_data(203, 9, 16, seed=0)
    labels[::7] = -1  # unlabelled rows are skipped
    metric = ZeroShotAccuracy(3 * classes, top_k=top_k)  # scale does not matter
    for sl in (slice(0, 50), slice(50, 50), slice(50, 51), slice(51, 203)):
        metric.update(image[sl], labels[sl])
    result = metric.compute()
    expected = reference_accuracy(image, classes, labels, top_k)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].dtype == torch.float32
        assert result[key].item() == pytest.approx(value, abs=1e-6), key
    assert 0.0 < reference_accuracy(image, classes, labels, (1,))["top1"] < 1.0  # non-trivial
    if 12 in top_k:
        assert result["top12"].item() == 1.0  # k >= number of classes


def test_float32_and_bfloat16_inputs_and_setter() -> None:
    image, classes, labels = make_data(64, 5, 8, seed=1)
    expected = reference_accuracy(image, classes, labels, (1,))["top1"]
    metric = ZeroShotAccuracy(top_k=1)
    metric.set_class_embeddings(classes.float())
    metric.update(image.float(), labels)
    assert metric.compute()["top1"].item() == pytest.approx(expected)
    metric_bf16 = ZeroShotAccuracy(classes.bfloat16(), top_k=1)
    metric_bf16.update(image.bfloat16(), labels)
    assert metric_bf16.compute()["top1"].item() == pytest.approx(expected, abs=0.05)


def test_ties_count_for_the_true_class() -> None:
    metric = ZeroShotAccuracy(torch.eye(2), top_k=1)
    metric.update(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1]))
    assert metric.compute()["top1"].item() == 1.0


def test_reset_and_errors() -> None:
    metric = ZeroShotAccuracy(top_k=(1,))
    with pytest.raises(RuntimeError, match="class embeddings"):
        metric.update(torch.randn(2, 3), torch.tensor([0, 1]))
    metric.set_class_embeddings(torch.eye(3))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        metric.update(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="dim"):
        metric.update(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.randn(2, 3), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer"):
        metric.update(torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="no data"):
        metric.compute()
    metric.update(torch.eye(3), torch.tensor([0, 1, -1]))
    assert metric.compute()["top1"].item() == 1.0
    metric.reset()
    assert int(metric.total) == 0
    with pytest.raises(ValueError, match="positive"):
        ZeroShotAccuracy(top_k=(0,))
    with pytest.raises(ValueError, match="at least one class"):
        ZeroShotAccuracy(torch.zeros(0, 3))
