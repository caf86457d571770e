import subprocess
import sys
from pathlib import Path

import pytest

from jepa_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "shapes_tiny.yaml")


def tiny_overrides(root: Path) -> list[str]:
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.train_samples=256",
        "--data.init_args.val_samples=64",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        "--model.init_args.vision_encoder.init_args.model.image_size=32",
    ]


def test_print_config_prints_full_config(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for key in (
        "class_path: jepa_lightning.modules.VLJEPA",
        "vision_encoder:",
        "max_steps: 900",
        "ShapesDataModule",
    ):
        assert key in out


def test_misspelt_key_fails_before_training(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--model.init_args.embd_dim=64"])
    assert exit_info.value.code != 0
    assert "embd_dim" in capsys.readouterr().err


def test_wrong_type_fails_before_training(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--model.init_args.lr=fast"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "lr" in err


@pytest.mark.slow
def test_fit_fast_dev_run_end_to_end(tmp_path, shapes_root) -> None:
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            *tiny_overrides(shapes_root),
        ]
    )


@pytest.mark.slow
def test_python_m_fit_writes_checkpoint_and_events(tmp_path, shapes_root) -> None:
    logs = tmp_path / "logs"
    command = [
        sys.executable,
        "-m",
        "jepa_lightning",
        "fit",
        "--config",
        CONFIG,
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=2",
        f"--trainer.logger.init_args.save_dir={logs}",
        *tiny_overrides(shapes_root),
    ]
    subprocess.run(command, check=True, cwd=REPO, timeout=300)
    assert list(logs.rglob("events.out.tfevents.*"))
    assert list(logs.rglob("checkpoints/last.ckpt"))
    assert list(logs.rglob("config.yaml"))
    (last,) = logs.rglob("checkpoints/last.ckpt")
    main(["export", str(last), str(tmp_path / "exported")])
    assert (tmp_path / "exported" / "model.safetensors").is_file()


def test_data_shapes_command(tmp_path) -> None:
    main(["data", "shapes", str(tmp_path / "out"), "8", "--samples_per_shard=4"])
    assert (tmp_path / "out" / "index.json").is_file()
    assert len(list((tmp_path / "out").glob("*.tar"))) == 2
