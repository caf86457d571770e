from __future__ import annotations

import math

import pytest
import torch
from callback_fit import RecordValidation, events, fit, scalar_steps

from jepa_lightning.callbacks import EmbeddingMonitor

NAMES = ("alignment", "uniformity_predicted", "uniformity_text")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logs_train_every_n_steps_and_val(
    tiny_model_kwargs, shapes_root, tmp_path, accumulate: int
) -> None:
    record = RecordValidation()
    trainer, log_dir = fit(
        tiny_model_kwargs,
        shapes_root,
        tmp_path,
        [EmbeddingMonitor(every_n_steps=2), record],
        accumulate_grad_batches=accumulate,
        val_check_interval=4,
    )
    accumulator = events(log_dir)
    for name in NAMES:
        # global steps 2 and 4, written at Lightning's step index (global step - 1)
        assert scalar_steps(accumulator, f"train/{name}") == [1, 3]
        # the sanity check is not logged
        assert len(accumulator.Scalars(f"val/{name}")) == accumulate  # every 4 batches
        assert all(math.isfinite(e.value) for e in accumulator.Scalars(f"train/{name}"))
        assert math.isfinite(float(trainer.callback_metrics[f"val/{name}"]))
    # The last validation's values, against a brute-force computation on its embeddings.
    predicted, texts = torch.cat(record.predicted), torch.cat(record.texts)
    logged = trainer.callback_metrics
    alignment = (predicted - texts).norm(dim=1).pow(2).mean()
    assert float(logged["val/alignment"]) == pytest.approx(float(alignment), rel=1e-4)
    for name, x in (("predicted", predicted), ("text", texts)):
        assert float(logged[f"val/uniformity_{name}"]) == pytest.approx(
            brute_force_uniformity(x), rel=1e-4, abs=1e-5
        )


def brute_force_uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """log of the mean of exp(-t ‖x_i − x_j‖²) over pairs i < j."""
    values = [
        math.exp(-t * float((x[i] - x[j]).pow(2).sum()))
        for i in range(len(x))
        for j in range(i + 1, len(x))
    ]
    return math.log(sum(values) / len(values))


def test_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        EmbeddingMonitor(every_n_steps=0)
