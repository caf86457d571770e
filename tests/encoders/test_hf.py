from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER

from jepa_lightning.encoders import TextEncoder
from jepa_lightning.encoders.hf import _DTYPE_KWARG, attention_kernel, build_config

TINY_VJEPA2: dict[str, Any] = {
    "model_type": "vjepa2",
    "crop_size": 32,
    "patch_size": 16,
    "frames_per_clip": 2,
    "tubelet_size": 2,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "pred_hidden_size": 32,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
}
CONFIGS = [TINY_VIT, TINY_BERT, TINY_LLAMA, TINY_VJEPA2]
IDS = ["vit", "bert", "llama", "vjepa2"]


@pytest.mark.parametrize("fields", CONFIGS, ids=IDS)
def test_valid_config_dict_builds(fields: dict[str, Any]) -> None:
    config = build_config(fields)
    assert config.model_type == fields["model_type"]
    assert config.num_hidden_layers == fields["num_hidden_layers"]


@pytest.mark.parametrize("fields", CONFIGS, ids=IDS)
def test_misspelt_key_is_named_with_a_suggestion(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"unknown key.*'num_hiden_layers'") as error:
        build_config({**fields, "num_hiden_layers": 2})
    message = str(error.value)
    assert "did you mean 'num_hidden_layers'?" in message
    assert f"for a {fields['model_type']!r} config" in message


@pytest.mark.parametrize("fields", CONFIGS, ids=IDS)
def test_to_dict_round_trips(fields: dict[str, Any]) -> None:
    """export.py rebuilds configs from ``to_dict()``: every key it writes is accepted."""
    config = build_config(fields)
    assert build_config(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "extra",
    [
        {"output_hidden_states": True},
        {"tie_word_embeddings": False},
        {"pad_token_id": 0},
        {"architectures": ["LlamaModel"]},
        pytest.param(
            {"dtype": "float32"},
            marks=pytest.mark.skipif(
                _DTYPE_KWARG != "dtype", reason="transformers < 4.56 has no dtype config key"
            ),
        ),
        {"torch_dtype": "float32"},
        {"attn_implementation": "sdpa"},
        {"rope_theta": 10000.0},
    ],
    ids=lambda extra: next(iter(extra)),
)
def test_keys_outside_the_class_signature_are_accepted(extra: dict[str, Any]) -> None:
    build_config({**TINY_LLAMA, **extra})


def test_attribute_map_alias_is_accepted() -> None:
    config = build_config({"model_type": "gpt2", "n_layer": 1, "num_attention_heads": 2})
    assert config.num_hidden_layers == 1
    assert config.n_head == 2


def _attention_node(device_dtype: torch.dtype, autocast: bool, grad: bool) -> str:
    """The autograd node of one attention call made inside ``attention_kernel``'s context."""
    query = torch.randn(2, 2, 4, 8, dtype=device_dtype, requires_grad=True)
    with (
        torch.set_grad_enabled(grad),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        attention_kernel(query.device, query.dtype),
    ):
        output = F.scaled_dot_product_attention(query, query, query)
    return type(output.grad_fn).__name__


def test_attention_kernel_is_math_only_for_a_cpu_bfloat16_backward() -> None:
    flash = "ScaledDotProductFlashAttentionForCpuBackward0"
    # float32: PyTorch's choice (flash on the CPU).
    assert _attention_node(torch.float32, autocast=False, grad=True) == flash
    # bfloat16 by autocast or by weights, with a backward to come: the math kernel.
    assert _attention_node(torch.float32, autocast=True, grad=True) != flash
    assert _attention_node(torch.bfloat16, autocast=False, grad=True) != flash
    # No backward: the flash kernel's forward is the faster one, so no restriction.
    with torch.no_grad():
        assert attention_kernel(torch.device("cpu"), torch.bfloat16).__class__ is nullcontext


def test_text_encoder_trains_with_the_math_kernel_under_bf16() -> None:
    bert = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    encoder = TextEncoder(bert, tokenizer=TOKENIZER).train()
    tokens = encoder.tokenize(["a red circle", "a blue square on the left"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = encoder.encode(tokens).tokens
    seen, stack = set(), [hidden.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [parent for parent, _ in node.next_functions]
    names = {type(node).__name__ for node in seen}
    assert "ScaledDotProductFlashAttentionForCpuBackward0" not in names
    hidden.float().sum().backward()
