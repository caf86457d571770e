"""Building ``transformers`` models from a hub name, a local folder or a config dict."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from difflib import get_close_matches
from typing import Any

import torch
from lightning_utilities.core.imports import compare_version
from torch import Tensor
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import AttentionInterface

# ``dtype`` replaced ``torch_dtype`` in transformers 4.56.
_DTYPE_KWARG = "dtype" if compare_version("transformers", operator.ge, "4.56") else "torch_dtype"
#: PyTorch's CPU softmax is vectorised over the last dimension from one AVX-512 vector of
#: float32 (16) on: over fewer keys it costs about 17 instead of 1-2 ns an element.
_SOFTMAX_MIN_KEYS = 16
#: Up to this many keys the eager recipe's bfloat16 forward is faster than the flash kernel's
#: on the CPU, without a backward too (128 images x 4 heads: 17 keys 1.0 vs 2.1 ms, 65 keys
#: 2.2 vs 4.0 ms; 197 keys 26.5 vs 16.5 ms for 8 images x 12 heads).
_CPU_BF16_EAGER_MAX_KEYS = 64

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
        ValueError: If a config dict has no ``model_type`` or has a key that the config does not
            know (a misspelt field).
    """
    if isinstance(source, Mapping):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ValueError(
                f"a model config dict needs a 'model_type' key (e.g. 'vit', 'bert'), got {source}"
            )
        config = AutoConfig.for_model(model_type, **fields)
        _reject_unknown_keys(config, fields, model_type)
        return config
    return AutoConfig.from_pretrained(source)


def _reject_unknown_keys(
    config: PretrainedConfig, fields: Mapping[str, Any], model_type: str
) -> None:
    """Raises if ``config`` was built from keys that it does not know.

    ``transformers`` keeps a key it does not know as an extra attribute, so a typo would be
    ignored silently. A known key is a field (an attribute of the default config too), an
    ``attribute_map`` alias or an input that building consumes (``torch_dtype``,
    ``attn_implementation``, legacy ``rope_theta``...): none of those is a new attribute.

    Args:
        config: The config built from ``fields``.
        fields: The keys and values it was built from, without ``model_type``.
        model_type: The config's ``model_type``, for the message.

    Raises:
        ValueError: Naming the unknown keys, with close matches among the known ones.
    """
    default = type(config)()
    unknown = [key for key in fields if key in vars(config) and key not in vars(default)]
    if not unknown:
        return
    known = sorted({*default.to_dict(), *config.attribute_map} - {"model_type"})
    hints = []
    for key in unknown:
        matches = get_close_matches(key, known, n=1)
        hints.append(f"{key!r} (did you mean {matches[0]!r}?)" if matches else repr(key))
    raise ValueError(
        f"unknown key(s) {', '.join(hints)} for a {model_type!r} config; "
        f"known keys: {', '.join(known)}"
    )


def config_fields(config: PretrainedConfig, **overrides: Any) -> dict[str, Any]:
    """A ``transformers`` config as a dict that :func:`build_config` rebuilds in float32.

    The fields that name a checkpoint (its dtype, version, architectures, path) are left
    out: the rebuilt model gets its weights loaded separately.

    Args:
        config: The config.
        **overrides: Fields to set in the dict.

    Returns:
        The fields, with ``model_type``.
    """
    fields = config.to_dict()
    for key in ("dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path"):
        fields.pop(key, None)
    fields.update(overrides)
    return fields


def build_model(source: ModelSource, **kwargs: Any) -> PreTrainedModel:
    """Builds a ``transformers`` base model: pretrained weights or a random init.

    Models whose attention goes through ``transformers``' attention interface and that
    would use its SDPA attention get :data:`CPU_BF16_TRAINING_SDPA` instead: the same
    attention, without the flash kernel in bfloat16 on the CPU where a backward follows or
    the keys are few.

    Args:
        source: A hub name or local folder (``from_pretrained``), or a config
            dict with ``model_type`` (``from_config``, random weights).
        **kwargs: Passed to ``from_pretrained``/``from_config`` (for example
            ``attn_implementation``).

    Returns:
        The model, in train mode as ``transformers`` leaves it.
    """
    if isinstance(source, Mapping):
        model = AutoModel.from_config(build_config(source), **kwargs)
    else:
        # transformers >= 5 loads a checkpoint in its saved dtype (bf16 for Llama-3.2): train
        # float32 master weights (bf16 autocast still computes in bf16).
        kwargs.setdefault(_DTYPE_KWARG, torch.float32)
        model = AutoModel.from_pretrained(source, **kwargs)
    for module in model.modules():  # a composite model has a config per part
        if (
            isinstance(module, PreTrainedModel)
            and module._supports_attention_backend
            and module.config._attn_implementation == "sdpa"
        ):
            module.config._attn_implementation = CPU_BF16_TRAINING_SDPA
    return model


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


def _bf16_backward_on_cpu(device: torch.device, *dtypes: torch.dtype) -> bool:
    """Whether attention on ``device`` computes in bfloat16 with a backward to follow on the CPU.

    On the CPU, the flash-attention kernel's backward in bfloat16 (bf16-mixed autocast or
    bf16 weights) is several times slower than in float32, and the math kernel upcasts
    bfloat16 to float32; in float32, and on GPUs, PyTorch's own choice is best
    (``benchmarks/bench_precision.py``).
    """
    if device.type != "cpu" or not torch.is_grad_enabled():
        return False
    autocast_bf16 = (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return autocast_bf16 or torch.bfloat16 in dtypes


def _sdpa_for_cpu_bf16_training(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """SDPA attention, or on the CPU in bfloat16 :func:`_bf16_eager_attention`.

    The eager recipe where a backward follows, or over at most ``_CPU_BF16_EAGER_MAX_KEYS``
    keys, where its forward is the faster one too.
    """
    dtypes = (query.dtype, key.dtype, value.dtype)
    few_keys = (
        query.device.type == "cpu"
        and torch.bfloat16 in dtypes
        and key.shape[-2] <= _CPU_BF16_EAGER_MAX_KEYS
    )
    if few_keys or _bf16_backward_on_cpu(query.device, *dtypes):
        return _bf16_eager_attention(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _bf16_eager_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention as two bfloat16 matrix products around a float32 softmax.

    ``transformers``' eager recipe, with the masks of its SDPA attention: a boolean mask keeps
    the ``True`` positions, a float mask is added, and no mask on a causal module means a causal
    mask. On the CPU its backward is faster than the flash kernel's, in bfloat16 or in float32,
    for the short sequences of image patches and captions. Fewer than 16 keys are padded with
    ``-inf`` scores (zero weights) for the softmax, which is several times faster over 16.

    Raises:
        ValueError: If the model asks for a logit soft-cap (as ``transformers``' SDPA attention).
    """
    if kwargs.get("softcap") is not None:
        raise ValueError(
            "CPU bfloat16 training attention does not support `softcap`; "
            "set attn_implementation='eager'"
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and query.shape[2] > 1:
        attention_mask = torch.ones(
            query.shape[2], key.shape[2], dtype=torch.bool, device=query.device
        ).tril()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    keys = scores.shape[-1]
    if keys < _SOFTMAX_MIN_KEYS:  # e.g. captions of 12 tokens: 4.6x faster with the padding
        scores = F.pad(scores, (0, _SOFTMAX_MIN_KEYS - keys), value=float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)[..., :keys].to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


CPU_BF16_TRAINING_SDPA = "jepa_lightning_sdpa"
"""The attention implementation :func:`build_model` gives models with SDPA attention:
``transformers``' SDPA attention and masks, computed as two bfloat16 matrix products around a
float32 softmax (:func:`_bf16_eager_attention`) in bfloat16 on the CPU where a backward
follows, or over at most 64 keys."""
AttentionInterface.register(CPU_BF16_TRAINING_SDPA, _sdpa_for_cpu_bf16_training)
ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_BF16_TRAINING_SDPA, sdpa_mask)


def attention_kernel(
    config: PretrainedConfig, device: torch.device, dtype: torch.dtype
) -> AbstractContextManager[None]:
    """The attention kernel for a transformer without :data:`CPU_BF16_TRAINING_SDPA`.

    A model whose attention does not go through ``transformers``' attention interface (BERT in
    transformers 4.53, for one) calls PyTorch's SDPA itself, in bfloat16 under bf16-mixed; on
    the CPU, with a backward to follow, the math kernel is then faster than flash attention.
    Run the forward inside the context: the backward follows the forward's kernel.

    Args:
        config: The transformer's config.
        device: The device of the transformer's input.
        dtype: The dtype of its input or weights.

    Returns:
        A context that restricts scaled-dot-product attention to the math kernel, or does
        nothing.
    """
    if config._attn_implementation == CPU_BF16_TRAINING_SDPA:
        return nullcontext()
    if _bf16_backward_on_cpu(device, dtype):
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()
