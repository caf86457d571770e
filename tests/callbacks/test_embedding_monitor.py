from __future__ import annotations

import math

import pytest
from callback_fit import events, fit, scalar_steps

from jepa_lightning.callbacks import EmbeddingMonitor

NAMES = ("alignment", "uniformity_predicted", "uniformity_text")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logs_train_every_n_steps_and_val(
    tiny_model_kwargs, shapes_root, tmp_path, accumulate: int
) -> None:
    trainer, log_dir = fit(
        tiny_model_kwargs,
        shapes_root,
        tmp_path,
        [EmbeddingMonitor(every_n_steps=2)],
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
    assert 0.0 <= float(trainer.callback_metrics["val/alignment"]) <= 4.0  # ‖x − y‖², unit norm
    assert float(trainer.callback_metrics["val/uniformity_text"]) <= 0.0


def test_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        EmbeddingMonitor(every_n_steps=0)
