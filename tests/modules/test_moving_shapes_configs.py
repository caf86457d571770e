"""The video configs from the command line: stage 1 on images, stage 2 on clips, T=1 validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from test_stage2 import scalars

from jepa_lightning.cli import main

TINY = str(REPO / "configs" / "moving_shapes_tiny.yaml")
STAGE1 = str(REPO / "configs" / "moving_shapes_stage1.yaml")
STAGE2 = str(REPO / "configs" / "moving_shapes_stage2.yaml")


def small(root: Path, samples: int) -> list[str]:
    return [
        f"--data.init_args.root={root}",
        f"--data.init_args.train_samples={samples}",
        "--data.init_args.val_samples=16",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0",
        "--model.init_args.x_encoder.init_args.model.image_size=32",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
    ]


@pytest.mark.slow
def test_image_stage_then_clip_stage_then_single_frame_validation(
    shapes_root: Path, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "stage1"
    override = tmp_path / "stage1_checkpoints.yaml"
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    callback["init_args"] = {"dirpath": str(checkpoints), "save_last": True}  # type: ignore[assignment]
    override.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    root = [f"--trainer.default_root_dir={tmp_path}"]
    main(["fit", "--config", TINY, "--config", STAGE1, "--config", str(override), *root,
          *small(shapes_root, 256)])  # fmt: skip
    stage1 = checkpoints / "last.ckpt"
    assert stage1.is_file()

    clips = small(tmp_path / "clips", 32)
    main(["fit", "--config", TINY, "--config", STAGE2, *root, *clips,
          f"--model.init_args.init_weights={stage1}"])  # fmt: skip
    values = scalars(tmp_path / "jepa" / "version_1")
    for name in ("val/i2t/R@1", "val/t2i/R@1"):
        assert 0.0 <= values[name][-1] <= 1.0, name
    for task in ("direction", "first"):
        assert 0.0 <= values[f"val/zero_shot/{task}/top1"][-1] <= 1.0, task
    stage2 = tmp_path / "jepa" / "version_1" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(stage2, weights_only=False)
    assert checkpoint["hyper_parameters"]["init_weights"] == str(stage1)
    assert checkpoint["global_step"] == 2

    main(["validate", "--config", TINY, *root, *clips, f"--ckpt_path={stage2}",
          "--data.init_args.val_frames=1"])  # fmt: skip
    assert "val/i2t/R@1" in scalars(tmp_path / "jepa" / "version_2")
