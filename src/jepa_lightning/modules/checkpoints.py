"""Checkpoint rules shared by the LightningModules: finite weights, a reloadable X-encoder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from jepa_lightning.encoders.base import ModalityEncoder
from jepa_lightning.export import WEIGHTS_NAME


def finite_or_raise(state: Mapping[str, Tensor], step: int) -> None:
    """Refuses to checkpoint non-finite weights.

    Args:
        state: The state dict about to be saved.
        step: The global step, for the message.

    Raises:
        FloatingPointError: If a floating-point weight is not finite.
    """
    bad = [n for n, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise FloatingPointError(
            f"not writing a checkpoint at global step {step}: non-finite weights in {bad[:5]}"
        )


def _reloadable(encoder: ModalityEncoder) -> bool:
    """A frozen encoder whose weights come from a hub name or folder reloads from it."""
    return encoder.frozen and isinstance(encoder.describe().get("source"), str)


def strip_frozen_x_encoder(
    checkpoint: dict[str, Any], encoder: ModalityEncoder, prefix: str, keep: bool = False
) -> None:
    """Records the X-encoder's description and leaves out its weights if they reload.

    Args:
        checkpoint: The checkpoint dict (its ``state_dict`` is edited in place).
        encoder: The X-encoder.
        prefix: The X-encoder's prefix in the state dict.
        keep: Keep the weights even when they could reload.
    """
    checkpoint["x_encoder"] = encoder.describe()
    if keep or not _reloadable(encoder):
        return
    state = checkpoint["state_dict"]
    for name in [n for n in state if n.startswith(prefix)]:
        del state[name]
    checkpoint["x_encoder_excluded"] = True


def restore_frozen_x_encoder(
    checkpoint: dict[str, Any], encoder: ModalityEncoder, prefix: str
) -> None:
    """Fills left-out X-encoder weights from the freshly built (reloaded) encoder.

    Args:
        checkpoint: The checkpoint dict being loaded.
        encoder: The X-encoder just built from its source.
        prefix: The X-encoder's prefix in the state dict.
    """
    if checkpoint.get("x_encoder_excluded"):
        checkpoint["state_dict"].update(encoder.state_dict(prefix=prefix))


def under_cli() -> bool:
    """Whether LightningCLI is instantiating a module with its config as hyperparameters.

    Modules given by ``class_path`` are then saved in checkpoints as their config (so that
    ``load_from_checkpoint`` rebuilds them); module objects built in Python never are.

    Returns:
        True inside LightningCLI's instantiation (Lightning >= 2.4 tells).
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # older Lightning: encoders cannot be saved as config
        return False
    return _given_hyperparameters.get() is not None


def load_core_weights(model: nn.Module, source: str, name: str = "init_weights") -> None:
    """Loads a model core's weights, and nothing else, from a checkpoint or an export folder.

    Stage 2 starts from stage 1 this way: the weights only, with a new optimizer, schedule
    and step count. A checkpoint's ``model.*`` entries are read (a frozen X-encoder that it
    left out keeps the weights it was just rebuilt with, from its source); an export folder's
    ``model.safetensors`` holds the whole core.

    Args:
        model: The model core to fill.
        source: A ``.ckpt`` file written by ``jepa-lightning fit``, or an export folder.
        name: The setting's name, for errors.

    Raises:
        FileNotFoundError: If ``source`` is neither a file nor a folder.
        ValueError: If the weights do not fit the model (missing, unexpected or
            differently shaped entries).
    """
    path = Path(source)
    if path.is_dir():
        state = load_file(str(path / WEIGHTS_NAME))
        excluded = False
    elif path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        entries = saved.get("state_dict", {})
        state = {k.removeprefix("model."): v for k, v in entries.items() if k.startswith("model.")}
        excluded = bool(saved.get("x_encoder_excluded"))
    else:
        raise FileNotFoundError(f"{name}: no checkpoint or export folder at {source!r}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"{name}: the weights of {source} do not fit the model: {error}") from None
    missing = [k for k in result.missing_keys if not (excluded and k.startswith("x_encoder."))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{name}: the weights of {source} do not fit the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
