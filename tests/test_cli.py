import subprocess
import sys
import warnings
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
        "--model.init_args.x_encoder.init_args.model.image_size=32",
    ]


def exit_code(args: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_print_config_prints_full_config(capsys) -> None:
    assert exit_code(["fit", "--config", CONFIG, "--print_config"]) in (0, None)
    out = capsys.readouterr().out
    for key in (
        "class_path: jepa_lightning.modules.VLJEPA",
        "x_encoder:",
        "max_steps: 900",
        "ShapesDataModule",
    ):
        assert key in out


def test_misspelt_key_fails_before_training(capsys) -> None:
    assert exit_code(["fit", "--config", CONFIG, "--model.init_args.embd_dim=64"]) == 2
    assert "embd_dim" in capsys.readouterr().err


def test_wrong_type_fails_before_training(capsys) -> None:
    assert exit_code(["fit", "--config", CONFIG, "--model.init_args.embed_dim=fast"]) == 2
    err = capsys.readouterr().err
    assert 'Parser key "embed_dim"' in err
    assert "Given value" not in err  # no dump of the whole model namespace
    assert len(err.splitlines()) <= 5


def test_run_from_the_command_line_does_not_warn(monkeypatch, capsys) -> None:
    argv = ["jepa-lightning", "fit", "--config", CONFIG, "--print_config"]
    monkeypatch.setattr(sys, "argv", argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main()
    assert not [w for w in caught if "sys.argv" in str(w.message)]
    assert "x_encoder:" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["null", "None"])
def test_command_line_null_reaches_a_nested_class(value: str, capsys) -> None:
    tokenizer = "--model.init_args.text_encoder.init_args.tokenizer"
    assert exit_code(["fit", "--config", CONFIG, tokenizer, value, "--print_config"]) in (0, None)
    assert "tokenizer: null" in capsys.readouterr().out


def test_help_describes_the_package_and_every_subcommand(capsys) -> None:
    assert exit_code(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "usage: jepa-lightning [-c CONFIG] {fit,validate,test,predict}" in out
    assert "Joint Embedding Predictive Architecture" in out
    assert "'data {shapes,convert,cache}'" in out
    assert "'export CHECKPOINT OUTPUT'" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "--help"], ["shapes", "convert", "cache", "tokenizer"]),
        (["data", "convert", "--help"], ["usage: jepa-lightning data convert", "--overwrite"]),
        (["export", "--help"], ["usage: jepa-lightning export", "checkpoint", "output"]),
        (["fit", "--model.help", "VLJEPA"], ["--model.embed_dim", "--model.text_encoder"]),
    ],
    ids=["data", "data-convert", "export", "model-by-short-name"],
)
def test_subcommand_help(args: list[str], expected: list[str], capsys) -> None:
    assert exit_code(args) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_importing_the_cli_skips_lightning_and_torch() -> None:
    """``data`` and ``export`` import only what their function needs."""
    code = "import sys, jepa_lightning.cli; print({'torch', 'lightning'} & set(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "set()"


@pytest.mark.slow
def test_fit_fast_dev_run_end_to_end(tmp_path, shapes_root, capsys) -> None:
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
    # Training and validation ran (the recall table is printed); fast_dev_run's logger is off.
    out = capsys.readouterr().out
    assert "image → text" in out and "R@1" in out
    assert not list(tmp_path.rglob("events.out.*"))


def test_fit_without_progress_bar(tmp_path, shapes_root, capsys) -> None:
    # The always-on progress bar steps aside (Lightning refuses a bar callback beside it).
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.fast_dev_run=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            *tiny_overrides(shapes_root),
        ]
    )
    out = capsys.readouterr().out
    assert "R@1" in out and "Epoch 0" not in out


@pytest.mark.slow
def test_fit_writes_under_default_root_dir_and_prints_recall(tmp_path, shapes_root, capsys) -> None:
    root = tmp_path / "x"
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={root}",
            *tiny_overrides(shapes_root),
        ]
    )
    run = root / "jepa" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = capsys.readouterr().out
    assert "image → text" in out
    assert "text → image" in out
    assert "R@10" in out
    assert f"logs and checkpoints: {run}" in out


@pytest.mark.slow
def test_validate_prints_recall(tmp_path, shapes_root, capsys) -> None:
    main(
        [
            "validate",
            "--config",
            CONFIG,
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            *tiny_overrides(shapes_root),
        ]
    )
    out = capsys.readouterr().out
    for text in ("R@1", "R@5", "R@10", "image → text", "text → image", "mean"):
        assert text in out
    assert f"logs and checkpoints: {tmp_path / 'jepa' / 'version_0'}" in out


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
        f"--trainer.default_root_dir={logs}",
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
