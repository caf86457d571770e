"""What `validate`, `test` and `predict` log or return, from a checkpoint of a short fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import CONFIG, tiny_overrides

from jepa_lightning.cli import main


def scalars(run: Path) -> dict[str, list[float]]:
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [event.value for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


@pytest.mark.slow
def test_validate_test_and_predict_from_a_checkpoint(tmp_path, shapes_root) -> None:
    common = ["--config", CONFIG, f"--trainer.default_root_dir={tmp_path}"]
    common += tiny_overrides(shapes_root)
    main(["fit", *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    checkpoint = tmp_path / "jepa" / "version_0" / "checkpoints" / "last.ckpt"
    fit_values = scalars(tmp_path / "jepa" / "version_0")

    main(["validate", *common, f"--ckpt_path={checkpoint}"])
    validated = scalars(tmp_path / "jepa" / "version_1")
    # The checkpoint's weights give the fit's last validation again, exactly once.
    for tag in ("val/i2t/R@1", "val/t2i/R@1", "val/i2t/R@10", "val/loss"):
        assert validated[tag] == pytest.approx(fit_values[tag][-1:], rel=1e-5)

    main(["test", *common, f"--ckpt_path={checkpoint}"])
    tested = scalars(tmp_path / "jepa" / "version_2")
    # test reads the held-out (validation) shards: the same values under test/.
    for direction in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert tested[f"test/{direction}/R@{k}"] == pytest.approx(
                validated[f"val/{direction}/R@{k}"], rel=1e-5
            )

    saved = tmp_path / "predictions.pt"
    writer = "--trainer.callbacks+={class_path: conftest.SavePredictions, init_args: {path: %s}}"
    writer %= saved
    main(["predict", *common, f"--ckpt_path={checkpoint}", writer])
    batches = torch.load(saved, weights_only=False)
    keys = [key for batch in batches for key in batch["keys"]]
    assert len(keys) == len(set(keys)) == 64  # every validation sample once
    for batch in batches:
        for name in ("image_embeddings", "text_embeddings"):
            norms = batch[name].norm(dim=1)
            torch.testing.assert_close(norms, torch.ones_like(norms))
        assert len(batch["captions"]) == len(batch["keys"])
