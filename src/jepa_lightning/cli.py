"""The ``jepa-lightning`` command: LightningCLI, plus ``data`` and ``export`` tools.

Only ``fit``/``validate``/``test``/``predict`` import Lightning; ``data`` and ``export`` import
the one function that they run, so that they, and their ``--help``, start quickly.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import import_module
from operator import methodcaller
from typing import TYPE_CHECKING, Any

from jsonargparse import auto_cli, get_loader, lazy_instance, set_loader

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

PROG = "jepa-lightning"

DESCRIPTION = (
    "Train VL-JEPA, a vision-language Joint Embedding Predictive Architecture, with PyTorch "
    "Lightning: a predictor reads an image's tokens from the X-encoder and a text query, and "
    "predicts the embedding that the Y-encoder gives the caption, trained with InfoNCE in "
    "embedding space rather than by generating tokens. Subcommands: 'fit', 'validate', 'test' "
    "and 'predict' run the Lightning Trainer on a config (jepa-lightning fit --config "
    "configs/shapes_tiny.yaml); 'data {shapes,convert,cache}' writes WebDataset shards: "
    "generated shapes, a converted image folder, or cached frozen X-encoder features, and "
    "'data tokenizer' a tokenizer trimmed to the shards' captions; 'export "
    "CHECKPOINT OUTPUT' writes the trained model as safetensors, loadable without Lightning; "
    "'search {build,query}' indexes images and finds them by text; 'classify' labels images "
    "from class names; 'evaluate' writes CLIP_benchmark results; 'export-encoder CHECKPOINT "
    "OUTPUT' writes a JEPA-pretrained (IJEPA) encoder as a transformers folder, a VL-JEPA "
    "X-encoder; 'probe ENCODER' scores a frozen encoder with attentive, linear and k-NN "
    "probes; 'export-decoder CHECKPOINT OUTPUT' writes a trained Y-decoder with its VL-JEPA; "
    "'caption MODEL IMAGES' writes captions of images; 'decode-streams MODEL' compares "
    "selective and uniform decoding of generated video streams. Add --help after a "
    "subcommand for its options."
)

DATA_COMMANDS: dict[str, str] = {
    "shapes": "jepa_lightning.tools.shapes.write_shapes_shards",
    "convert": "jepa_lightning.tools.convert.convert_folder",
    "cache": "jepa_lightning.tools.feature_cache.cache_features",
    "tokenizer": "jepa_lightning.tools.tokenizer.tokenizer_from_shards",
}
"""``jepa-lightning data <command>``: the function that each runs, imported when it runs."""

SEARCH_COMMANDS: dict[str, str] = {
    "build": "jepa_lightning.search.build_index",
    "query": "jepa_lightning.search.search",
}
"""``jepa-lightning search <command>``: the function that each runs."""

COMMAND_GROUPS = {"data": DATA_COMMANDS, "search": SEARCH_COMMANDS}
"""Commands with sub-commands, each running one function."""

EXPORT_COMMAND = "jepa_lightning.export.export_checkpoint"
"""``jepa-lightning export``: the function that it runs."""

TOOL_COMMANDS: dict[str, str] = {
    "export": EXPORT_COMMAND,
    "classify": "jepa_lightning.classify.classify",
    "evaluate": "jepa_lightning.evaluate.evaluate",
    "export-encoder": "jepa_lightning.export_encoder.export_encoder_checkpoint",
    "probe": "jepa_lightning.tools.probe.probe_encoder",
    "export-decoder": "jepa_lightning.modules.y_decoder.export_decoder_checkpoint",
    "caption": "jepa_lightning.caption.caption",
    "decode-streams": "jepa_lightning.streams.evaluate.decode_streams",
}
"""Commands that run one function (no Lightning Trainer), imported when they run."""

RECALL_DIRECTIONS = {"i2t": "image → text", "t2i": "text → image"}
RECALL_KS = (1, 5, 10)

# jsonargparse (4.53) rebuilds a command-line value that reaches two classes deep (model ->
# text_encoder -> tokenizer) with str(), so `null` arrives as the string "None". Reading a
# command-line "None" as null undoes that; "None" inside a config file stays a string.
_PARSER_MODE = "yaml_none_is_null"
_yaml_load = get_loader("yaml")


def _load_config_value(value: str) -> Any:
    """Loads a config file or a command-line value; registered encoder names become paths."""
    if value.strip() == "None":
        return None
    from jepa_lightning.encoders.registry import resolve_names

    return resolve_names(_yaml_load(value))


set_loader(_PARSER_MODE, _load_config_value)

# jsonargparse appends the given value to type errors ("Given value: ...", up to kilobytes of
# namespace) and frames the error of an optional type as a union's: noise around the reason.
_NOISE = re.compile(
    r"\s*(Given value|Subtypes:|Errors:$|Does not validate against any of the Union subtypes$"
    r"|- Expected a <class 'NoneType'>$)"
)


def _import(path: str) -> Any:
    """Imports ``module.name`` and returns ``name``."""
    module, name = path.rsplit(".", 1)
    return getattr(import_module(module), name)


def _error_message(error: BaseException) -> str:
    """The reason for ``error``, without jsonargparse's dump of the value.

    Args:
        error: A parse error (its message names the key), or an error that a function or a
            class raised, which jsonargparse may have wrapped in its own.

    Returns:
        The message of the parse error or of the innermost cause, without the noise lines.
    """
    if not isinstance(error, ArgumentError):
        while error.__cause__ is not None:
            error = error.__cause__
    return "\n".join(line for line in str(error).splitlines() if not _NOISE.match(line))


@contextmanager
def _user_errors(*errors: type[Exception]) -> Iterator[None]:
    """Turns ``errors`` raised inside into ``jepa-lightning: error: <reason>`` and exit status 2.

    For a misspelt path or key a traceback only hides the reason; ``JSONARGPARSE_DEBUG=true``
    (jsonargparse's own switch) shows it.

    Args:
        *errors: The exception types that a user's arguments cause here.

    Yields:
        Nothing; the body runs inside.

    Raises:
        SystemExit: With status 2, on one of ``errors``.
    """
    try:
        yield
    except errors as error:
        if os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true":
            raise
        print(f"{PROG}: error: {_error_message(error)}", file=sys.stderr)
        raise SystemExit(2) from None


@cache
def _lightning_cli_class() -> type[LightningCLI]:
    """Builds ``JEPALightningCLI``; a function so that importing this module skips Lightning.

    Returns:
        The LightningCLI subclass.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
    from rich.console import Console
    from rich.table import Table

    # Imported so that their classes are known by short name (--model.help VLJEPA).
    import jepa_lightning.callbacks
    import jepa_lightning.data
    import jepa_lightning.modules  # noqa: F401
    from jepa_lightning.callbacks import ProgressBar
    from jepa_lightning.encoders.registry import EncoderPluginError, load_plugins

    load_plugins()  # installed encoders too (class_path: AudioEncoder)

    class JEPALightningCLI(LightningCLI):
        """LightningCLI with a rich progress bar, one output folder and short errors.

        The progress bar is on unless ``trainer.enable_progress_bar`` is false, and
        configured under its own key (``progress_bar.*``), so a config's
        ``trainer.callbacks`` list adds to it instead of replacing it. The logger's
        ``save_dir`` is always ``trainer.default_root_dir``; the data module gets the model's
        ``batch_collator()``. Wrong arguments and classes that refuse
        their arguments end in a one-line error; errors in training keep their
        traceback. ``fit`` and ``validate`` end with the retrieval recall and
        the folder of the logs and checkpoints.
        """

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            """Adds the always-on progress bar; links the logger and the data to the others.

            Args:
                parser: The parser of a subcommand.
            """
            parser.add_lightning_class_args(ProgressBar, "progress_bar")
            parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
            # The data module decodes with the model's codecs (image size, tokenizer).
            parser.link_arguments(
                "model",
                "data.init_args.collator",
                compute_fn=methodcaller("batch_collator"),
                apply_on="instantiate",
            )

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
            # Lightning refuses a progress bar callback beside enable_progress_bar=False.
            if config.get("enable_progress_bar") is False:
                callbacks = [c for c in callbacks if not isinstance(c, RichProgressBar)]
            return super()._instantiate_trainer(config, callbacks)

        def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
            """Parses the arguments; a wrong one ends the command with a short error.

            Args:
                parser: The parser.
                args: The arguments; ``None`` reads ``sys.argv``.
            """
            # A registered encoder that cannot be loaded fails in a config file's loader.
            with _user_errors(ArgumentError, EncoderPluginError):
                super().parse_arguments(parser, args)

        def instantiate_classes(self) -> None:
            """Instantiates the classes; one that refuses its arguments ends with a short error."""
            with _user_errors(ValueError, OSError, MisconfigurationException):
                super().instantiate_classes()

        def after_fit(self) -> None:
            """Prints the final recall and the output folder."""
            self._print_summary()

        def after_validate(self) -> None:
            """Prints the recall and the output folder."""
            self._print_summary()

        def _print_summary(self) -> None:
            """Prints the logged validation recall@k both ways and the output folder (rank 0)."""
            log_dir = self.trainer.log_dir  # a broadcast: every rank takes part
            if not self.trainer.is_global_zero:
                return
            metrics = self.trainer.callback_metrics
            table = Table("retrieval", *(f"R@{k}" for k in RECALL_KS), title="validation recall")
            for direction, label in RECALL_DIRECTIONS.items():
                values = [metrics.get(f"val/{direction}/R@{k}") for k in RECALL_KS]
                if any(value is not None for value in values):
                    table.add_row(label, *("-" if v is None else f"{v:.3f}" for v in values))
            if "val/recall_mean" in metrics:
                table.caption = f"mean {metrics['val/recall_mean']:.3f}"
            console = Console(soft_wrap=True)  # a long path stays on one line
            if table.rows:
                console.print(table)
            console.print(f"logs and checkpoints: {log_dir}")

    return JEPALightningCLI


def __getattr__(name: str) -> Any:
    """Module attribute ``JEPALightningCLI``, built on first use (see ``_lightning_cli_class``).

    Args:
        name: The attribute.

    Returns:
        The ``JEPALightningCLI`` class.

    Raises:
        AttributeError: For any other name.
    """
    if name == "JEPALightningCLI":
        return _lightning_cli_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(args: Sequence[str] | None = None) -> None:
    """Runs ``jepa-lightning``.

    ``jepa-lightning {fit,validate,test,predict} --config ...`` is a
    LightningCLI in subclass mode: any ``LightningModule`` and
    ``LightningDataModule`` can be named by ``class_path``; logs and
    checkpoints go to ``trainer.default_root_dir`` (default ``logs``).
    ``jepa-lightning data {shapes,convert,cache} ...`` writes WebDataset
    shards, ``data tokenizer`` a tokenizer trimmed to their captions;
    ``jepa-lightning export CHECKPOINT OUTPUT`` writes the trained
    model as safetensors, loadable without Lightning; ``search {build,query}``,
    ``classify`` and ``evaluate`` use a trained model; ``export-encoder`` and
    ``probe`` export and score a JEPA-pretrained encoder.

    Args:
        args: Command-line arguments; default ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    command = argv[0] if argv else None
    if command in COMMAND_GROUPS:
        group = COMMAND_GROUPS[command]
        name = argv[1] if len(argv) > 1 else None
        with _user_errors(ArgumentError, ValueError, OSError):
            if name in group:
                prog = f"{PROG} {command} {name}"
                auto_cli(_import(group[name]), args=argv[2:], prog=prog, exit_on_error=False)
            else:  # help, or no or a wrong command: all of them are listed
                functions = {key: _import(path) for key, path in group.items()}
                prog = f"{PROG} {command}"
                auto_cli(functions, args=argv[1:], prog=prog, exit_on_error=False)
        return
    if command in TOOL_COMMANDS:
        with _user_errors(ArgumentError, ValueError, OSError):
            function = _import(TOOL_COMMANDS[command])
            auto_cli(function, args=argv[1:], prog=f"{PROG} {command}", exit_on_error=False)
        return

    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.loggers import TensorBoardLogger

    from jepa_lightning.trainer import Trainer

    _lightning_cli_class()(
        LightningModule,
        LightningDataModule,
        trainer_class=Trainer,  # Lightning's, plus precision: auto
        subclass_mode_model=True,
        subclass_mode_data=True,
        # save_dir is linked to default_root_dir: logs/jepa/version_N by default.
        trainer_defaults={
            "default_root_dir": "logs",
            "logger": lazy_instance(TensorBoardLogger, save_dir="logs", name="jepa"),
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": PROG,
            "description": DESCRIPTION,
            "parser_mode": _PARSER_MODE,
            "exit_on_error": False,
        },
        # None: LightningCLI reads sys.argv itself (and does not warn that both were given).
        args=None if args is None else argv,
    )
