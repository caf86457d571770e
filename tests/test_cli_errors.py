"""Errors that users cause end in one short ``jepa-lightning: error: ...``, exit status 2."""

from pathlib import Path

import pytest
from conftest import REPO

from jepa_lightning.cli import main

CONFIG = str(REPO / "configs" / "shapes_tiny.yaml")


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs ``main(args)``, checks the exit status and returns the error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err  # no traceback, no dump of the parsed values
    assert err.startswith("jepa-lightning: error: ")
    return err.strip()


def test_convert_into_a_non_empty_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    line = error_line(
        ["data", "convert", str(tmp_path / "images"), "--output", str(tmp_path / "out")], capsys
    )
    assert str(tmp_path / "out") in line
    assert "not empty" in line
    assert "--overwrite true" in line


def test_cache_with_a_missing_training_config(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.yaml"
    line = error_line(["data", "cache", str(missing), str(tmp_path), str(tmp_path / "out")], capsys)
    assert str(missing) in line


def test_missing_config_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.yaml"
    assert str(missing) in error_line(["fit", "--config", str(missing)], capsys)


def test_wrong_tokenizer_path(tmp_path: Path, capsys) -> None:
    line = error_line(
        [
            "fit",
            "--config",
            CONFIG,
            "--model.init_args.text_encoder.init_args.tokenizer=/no/such/dir",
            f"--data.init_args.root={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--seed_everything=false",  # no "Seed set to" log line
        ],
        capsys,
    )
    assert "tokenizer folder '/no/such/dir' does not exist" in line


@pytest.mark.parametrize(
    "override",
    [
        '--model.init_args.predictor_lm={"model_type": "llama", "num_hiden_layers": 2}',
        "--model.init_args.x_encoder.init_args.model.num_hiden_layers=2",
    ],
    ids=["predictor_lm", "x_encoder"],
)
def test_misspelt_transformers_config_key(override: str, tmp_path: Path, capsys) -> None:
    line = error_line(
        [
            "fit",
            "--config",
            CONFIG,
            override,
            f"--data.init_args.root={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--seed_everything=false",  # no "Seed set to" log line
        ],
        capsys,
    )
    assert "unknown key(s) 'num_hiden_layers' (did you mean 'num_hidden_layers'?)" in line


def test_debug_switch_keeps_the_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    with pytest.raises(FileNotFoundError):
        main(["data", "cache", str(tmp_path / "missing.yaml"), str(tmp_path), str(tmp_path / "o")])
