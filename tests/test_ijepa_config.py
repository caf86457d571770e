"""The paper-scale I-JEPA config (configs/ijepa_vitl.yaml): parses, and trains at a tiny size.

A ViT-L cannot be pretrained here, so the file is checked by parsing it (alone and with each
trainer config) and by a one-step fit of the same config with the encoder and predictor shrunk
(same architectures and every other setting as in the file) on the session's shapes shards.
"""

from __future__ import annotations

import pytest
from conftest import REPO

from jepa_lightning.cli import main

VITL = str(REPO / "configs" / "ijepa_vitl.yaml")
TRAINERS = [REPO / "configs" / "trainer_ddp_bf16.yaml", REPO / "configs" / "trainer_multinode.yaml"]


@pytest.mark.parametrize("trainer", [None, *TRAINERS], ids=["alone", "ddp_bf16", "multinode"])
def test_parses(trainer, capsys) -> None:
    extra = [] if trainer is None else ["--config", str(trainer)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", VITL, *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: jepa_lightning.modules.IJEPA" in printed
    assert "hidden_size: 1024" in printed


@pytest.mark.slow
def test_shrunk_config_trains_a_step(tmp_path, shapes_root) -> None:
    encoder = "--model.init_args.encoder.init_args.model"
    predictor = "--model.init_args.predictor_lm"
    main(
        [
            "fit",
            "--config",
            VITL,
            f"{encoder}.image_size=32",
            f"{encoder}.patch_size=8",
            f"{encoder}.hidden_size=32",
            f"{encoder}.num_hidden_layers=1",
            f"{encoder}.num_attention_heads=2",
            f"{encoder}.intermediate_size=64",
            f"{predictor}.hidden_size=16",
            f"{predictor}.intermediate_size=32",
            f"{predictor}.num_hidden_layers=2",
            f"{predictor}.num_attention_heads=2",
            f"{predictor}.num_key_value_heads=2",
            "--model.init_args.masking.min_keep=2",
            f"--data.init_args.train_shards={shapes_root / 'train'}",
            f"--data.init_args.val_shards={shapes_root / 'val'}",
            "--data.init_args.samples_per_epoch=256",
            "--data.init_args.batch_size=16",
            "--data.init_args.num_workers=0",
            "--data.init_args.pin_memory=false",
            "--data.init_args.persistent_workers=false",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )


@pytest.mark.slow
def test_clip_config_pretrains_a_step(tmp_path) -> None:
    from jepa_lightning.data import MovingShapesDataModule

    root = tmp_path / "moving_shapes"
    sizes = {"train_samples": 32, "val_samples": 8, "image_size": 32}
    MovingShapesDataModule(root=str(root), **sizes).prepare_data()
    encoder = "--model.init_args.encoder.init_args.model"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "vjepa_moving_shapes_tiny.yaml"),
            f"{encoder}.crop_size=32",
            f"{encoder}.patch_size=8",
            f"{encoder}.hidden_size=32",
            f"{encoder}.num_hidden_layers=1",
            f"{encoder}.num_attention_heads=2",
            f"--data.init_args.root={root}",
            *(f"--data.init_args.{key}={value}" for key, value in sizes.items()),
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
