"""The ``jepa-lightning`` command: LightningCLI, plus ``data`` tools."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import auto_cli
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from jepa_lightning.data.convert import convert_folder
from jepa_lightning.data.shapes import write_shapes_shards

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "jepa"},
    },
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
    ],
}
"""TensorBoard logs, a rich progress bar and learning rates, unless a config says otherwise."""

DATA_COMMANDS = {"shapes": write_shapes_shards, "convert": convert_folder}
"""``jepa-lightning data <command>``: write the shapes shards, convert a folder."""


def main(args: Sequence[str] | None = None) -> None:
    """Runs ``jepa-lightning``.

    ``jepa-lightning {fit,validate,test,predict} --config ...`` is a
    LightningCLI in subclass mode: any ``LightningModule`` and
    ``LightningDataModule`` can be named by ``class_path``.
    ``jepa-lightning data {shapes,convert} ...`` writes WebDataset shards.

    Args:
        args: Command-line arguments; default ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["data"]:
        auto_cli(DATA_COMMANDS, args=argv[1:])
        return
    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=argv,
    )
