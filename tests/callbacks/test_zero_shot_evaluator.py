from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from callback_fit import RecordValidation, events, fit

from jepa_lightning.callbacks import ZeroShotEvaluator
from jepa_lightning.modules import VLJEPA
from jepa_lightning.tools.shapes import shapes_class_names


def shapes_evaluator() -> ZeroShotEvaluator:
    names = shapes_class_names()
    return ZeroShotEvaluator(
        class_names={
            "shape": names["shape"],
            "colour": names["colour"],
            "position": {p: f"on the {p}" for p in names["position"]},
        },
        templates={"shape": ["a {}", "a small {}"], "position": ["a circle {}"]},
        top_k=(1, 2, 5),
    )


def test_logs_top_k_per_task(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    evaluator, record = shapes_evaluator(), RecordValidation()
    trainer, log_dir = fit(tiny_model_kwargs, shapes_root, tmp_path, [evaluator, record])
    # 3 shapes, 4 colours, 3 positions: top-5 is always a hit and is not logged
    expected = {
        f"val/zero_shot/{task}/top{k}" for task in ("shape", "colour", "position") for k in (1, 2)
    }
    assert expected <= set(events(log_dir).Tags()["scalars"])
    assert not any(key.endswith("top5") for key in trainer.callback_metrics)
    for tag in expected:
        assert len(events(log_dir).Scalars(tag)) == 2
    # The last validation's accuracies, against a brute-force ranking of its embeddings
    # (the weights have not changed since: validation ran after the last step).
    model = trainer.lightning_module.eval()  # as in validation: no dropout
    predicted = torch.cat(record.predicted)
    for task in ("shape", "colour", "position"):
        classes = evaluator.class_embeddings(model, task).float()
        labels = evaluator.labels(record.metas, task)
        ranked = (predicted @ classes.T).argsort(dim=1, descending=True)
        known = labels >= 0
        assert known.any()
        for k in (1, 2):
            hits = (ranked[known, :k] == labels[known, None]).any(dim=1).float().mean()
            logged = float(trainer.callback_metrics[f"val/zero_shot/{task}/top{k}"])
            assert logged == pytest.approx(float(hits), abs=1e-6)


def test_class_embeddings_average_the_templates(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    evaluator = ZeroShotEvaluator(
        {"colour": {"red": "red one", "blue": "blue one"}}, {"colour": ["a {}", "the {}"]}
    )
    texts = ["a red one", "the red one", "a blue one", "the blue one"]
    tokens = model.model.text_encoder.tokenize(texts)
    with torch.no_grad():
        s = F.normalize(
            model.model.embed_text(tokens["input_ids"], tokens["attention_mask"].bool()), dim=-1
        )
    expected = F.normalize(s.view(2, 2, -1).mean(dim=1), dim=-1)
    torch.testing.assert_close(evaluator.class_embeddings(model, "colour"), expected)


def test_labels_from_metadata() -> None:
    evaluator = ZeroShotEvaluator({"shape": ["circle", "star"], "position": ["left"]})
    metas = [
        {"labels": {"shape": "star", "position": None}},
        {"labels": {"shape": "circle", "position": "left"}},
        {},
    ]
    assert evaluator.labels(metas, "shape").tolist() == [1, 0, -1]
    assert evaluator.labels(metas, "position").tolist() == [-1, 0, -1]
    with pytest.raises(ValueError, match="not in its class_names"):
        evaluator.labels([{"labels": {"shape": "cube"}}], "shape")


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="no class names"):
        ZeroShotEvaluator({"shape": []})
    with pytest.raises(ValueError, match="needs a"):
        ZeroShotEvaluator({"shape": ["circle"]}, {"shape": ["a circle"]})
    with pytest.raises(ValueError, match="without class_names"):
        ZeroShotEvaluator({"shape": ["circle"]}, {"colour": ["{}"]})


def test_data_without_labels_skips_with_a_warning(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    # Data without shapes labels (e.g. your own shards): warn naming the callback, log nothing.
    evaluator = ZeroShotEvaluator({"material": ["wood", "metal"]})
    with pytest.warns(
        UserWarning, match="ZeroShotEvaluator: no validation sample has a 'material'"
    ):
        trainer, _ = fit(tiny_model_kwargs, shapes_root, tmp_path, [evaluator])
    assert not any("zero_shot" in key for key in trainer.callback_metrics)
