"""Checkpoint rules shared by the LightningModules: finite weights, a reloadable X-encoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from jepa_lightning.encoders.base import ModalityEncoder


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
