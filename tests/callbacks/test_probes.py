"""Online k-NN and linear probes: predictions and logged accuracies against brute force."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from ijepa_fit import TASKS, RecordFeatures, fit_ijepa
from lightning.pytorch.callbacks import ModelCheckpoint

from jepa_lightning.callbacks import KNNProbe, LinearProbe
from jepa_lightning.callbacks.probes import knn_predict, label_indices


def _brute_force_knn(queries, bank, labels, num_classes, k, temperature):
    predictions = []
    for query in queries:
        scored = []
        for row, label in zip(bank, labels, strict=True):
            if label >= 0:
                cosine = float(query @ row / (query.norm() * row.norm()))
                scored.append((cosine, int(label)))
        scored.sort(key=lambda item: -item[0])
        votes = [0.0] * num_classes
        for cosine, label in scored[:k]:
            votes[label] += math.exp(cosine / temperature)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_predict_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    bank = torch.randn(40, 6, generator=g)
    labels = torch.randint(-1, 4, (40,), generator=g)
    queries = torch.randn(25, 6, generator=g)
    predicted = knn_predict(queries, bank, labels, 4, k=k, temperature=0.1)
    assert torch.equal(predicted, _brute_force_knn(queries, bank, labels, 4, k, 0.1))


def test_knn_predict_needs_a_labelled_row() -> None:
    with pytest.raises(ValueError, match="labelled"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.full((4,), -1), 2)


def test_label_indices() -> None:
    metas = [{"labels": {"shape": "square"}}, {"labels": {"shape": None}}, {}, "not a dict"]
    assert label_indices(metas, "shape", ["circle", "square"]).tolist() == [1, -1, -1, -1]
    with pytest.raises(ValueError, match="'star'"):
        label_indices([{"labels": {"shape": "star"}}], "shape", ["circle", "square"])
    # A task given by its number of classes reads class indices (ImageNet-style labels).
    assert label_indices([{"labels": {"class": 3}}, {}], "class", 5).tolist() == [3, -1]
    with pytest.raises(ValueError, match="index below 5"):
        label_indices([{"labels": {"class": 7}}], "class", 5)


def test_probes_need_tasks_of_two_classes() -> None:
    with pytest.raises(ValueError, match="2 classes"):
        KNNProbe({"shape": ["circle"]})


def test_linear_probe_learns_a_separable_task() -> None:
    # Driven directly: a one-process stand-in for the module (all_gather is the identity).
    probe = LinearProbe({"side": ["a", "b", "c"]}, lr=0.05)
    module = SimpleNamespace(device=torch.device("cpu"), all_gather=lambda tensor: tensor)
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 8, generator=g)

    def batch(n: int = 32) -> tuple[dict, SimpleNamespace, torch.Tensor]:
        labels = torch.randint(0, 3, (n,), generator=g)
        features = centres[labels] + torch.randn(n, 8, generator=g)
        metas = [{"labels": {"side": "abc"[i]}} for i in labels.tolist()]
        return {"features": features}, SimpleNamespace(meta=metas), labels

    for step in range(150):
        outputs, data, _ = batch()
        probe.on_train_batch_end(None, module, outputs, data, step)  # type: ignore[arg-type]
    outputs, _, labels = batch(200)
    predicted = probe.predict(outputs["features"])
    assert predicted is not None
    assert (predicted["side"] == labels).float().mean() > 0.9


def test_logged_accuracies_match_brute_force(shapes_root, tmp_path) -> None:
    knn = KNNProbe(TASKS, k=5, bank_size=48)
    linear = LinearProbe(TASKS)
    record = RecordFeatures()
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="probe/knn/mean", mode="max", save_top_k=1
    )
    _, trainer = fit_ijepa(
        shapes_root,
        tmp_path,
        [knn, linear, record, checkpoint],
        enable_checkpointing=True,
    )
    metrics = trainer.callback_metrics
    assert knn.bank is not None and knn.bank.shape[0] == 48  # the last 3 steps of 16
    features = torch.cat(record.features)
    accuracies = {}
    for column, (task, names) in enumerate(TASKS.items()):
        labels = label_indices(record.metas, task, names)
        labelled = labels >= 0
        bank_labels = knn.bank_labels[:, column]
        expected = _brute_force_knn(features, knn.bank, bank_labels, len(names), 5, 0.07)
        accuracy = (expected[labelled] == labels[labelled]).float().mean()
        assert float(metrics[f"probe/knn/{task}/top1"]) == pytest.approx(float(accuracy))
        accuracies[task] = float(accuracy)
        assert linear.heads is not None
        normed = torch.nn.functional.layer_norm(features, features.shape[-1:])
        predicted = linear.heads[task](normed).argmax(dim=1)
        accuracy = (predicted[labelled] == labels[labelled]).float().mean()
        assert float(metrics[f"probe/linear/{task}/top1"]) == pytest.approx(float(accuracy))
    mean = sum(accuracies.values()) / len(accuracies)
    assert float(metrics["probe/knn/mean"]) == pytest.approx(mean)
    # The checkpoint kept is the one the probe ranks best (a score logged by the probe).
    assert checkpoint.best_model_score is not None
    assert float(checkpoint.best_model_score) >= mean - 1e-6
