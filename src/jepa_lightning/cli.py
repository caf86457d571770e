"""The ``jepa-lightning`` command: LightningCLI, plus ``data`` tools."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import auto_cli, lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from jepa_lightning.export import export_checkpoint
from jepa_lightning.tools.convert import convert_folder
from jepa_lightning.tools.feature_cache import cache_features
from jepa_lightning.tools.shapes import write_shapes_shards


class JEPALightningCLI(LightningCLI):
    """LightningCLI with TensorBoard logs and a rich progress bar by default.

    The progress bar is always on and configured under its own key
    (``progress_bar.*``), so a config's ``trainer.callbacks`` list adds to it
    instead of replacing it.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Adds the always-on progress bar."""
        parser.add_lightning_class_args(RichProgressBar, "progress_bar")


DATA_COMMANDS: dict[str, Any] = {
    "shapes": write_shapes_shards,
    "convert": convert_folder,
    "cache": cache_features,
}
"""``jepa-lightning data <command>``: write shapes shards, convert a folder, cache features."""


def main(args: Sequence[str] | None = None) -> None:
    """Runs ``jepa-lightning``.

    ``jepa-lightning {fit,validate,test,predict} --config ...`` is a
    LightningCLI in subclass mode: any ``LightningModule`` and
    ``LightningDataModule`` can be named by ``class_path``.
    ``jepa-lightning data {shapes,convert,cache} ...`` writes WebDataset
    shards; ``jepa-lightning export CHECKPOINT OUTPUT`` writes the trained
    Y-encoder and predictor as safetensors, loadable without Lightning.

    Args:
        args: Command-line arguments; default ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["data"]:
        auto_cli(DATA_COMMANDS, args=argv[1:], prog="jepa-lightning data")
        return
    if argv[:1] == ["export"]:
        auto_cli(export_checkpoint, args=argv[1:], prog="jepa-lightning export")
        return
    JEPALightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"logger": lazy_instance(TensorBoardLogger, save_dir="logs", name="jepa")},
        save_config_kwargs={"overwrite": True},
        args=argv,
    )
