"""Building ``transformers`` models from a hub name, a local folder or a config dict."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from lightning_utilities.core.imports import compare_version
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

# ``dtype`` replaced ``torch_dtype`` in transformers 4.56.
_DTYPE_KWARG = "dtype" if compare_version("transformers", operator.ge, "4.56") else "torch_dtype"

ModelSource = str | dict[str, Any]
"""A hub name or local folder (pretrained weights) or a config dict (random init).

A config dict names its architecture with ``model_type`` (e.g. ``"vit"``,
``"bert"``, ``"llama"``, ``"vjepa2"``); the other keys are that config's fields.
"""


def build_config(source: ModelSource) -> PretrainedConfig:
    """Builds the ``transformers`` config of ``source`` without loading weights.

    Args:
        source: A hub name, a local folder or a config dict with ``model_type``.

    Returns:
        The model config.

    Raises:
        ValueError: If a config dict has no ``model_type``.
    """
    if isinstance(source, Mapping):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ValueError(
                f"a model config dict needs a 'model_type' key (e.g. 'vit', 'bert'), got {source}"
            )
        return AutoConfig.for_model(model_type, **fields)
    return AutoConfig.from_pretrained(source)


def build_model(source: ModelSource, **kwargs: Any) -> PreTrainedModel:
    """Builds a ``transformers`` base model: pretrained weights or a random init.

    Args:
        source: A hub name or local folder (``from_pretrained``), or a config
            dict with ``model_type`` (``from_config``, random weights).
        **kwargs: Passed to ``from_pretrained``/``from_config`` (for example
            ``attn_implementation``).

    Returns:
        The model, in train mode as ``transformers`` leaves it.
    """
    if isinstance(source, Mapping):
        return AutoModel.from_config(build_config(source), **kwargs)
    # transformers >= 5 loads a checkpoint in its saved dtype (bf16 for Llama-3.2): train
    # float32 master weights (bf16 autocast still computes in bf16).
    kwargs.setdefault(_DTYPE_KWARG, torch.float32)
    return AutoModel.from_pretrained(source, **kwargs)


def describe_source(source: ModelSource) -> str:
    """A short description of where a model comes from, for logs and checkpoints.

    Args:
        source: The model source.

    Returns:
        ``"pretrained:<name>"`` or ``"config:<model_type>"``.
    """
    if isinstance(source, Mapping):
        return f"config:{source.get('model_type', '?')}"
    return f"pretrained:{source}"
