from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER, attention_dtypes
from torch import Tensor
from transformers import PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from jepa_lightning.encoders import TextEncoder
from jepa_lightning.encoders.hf import (
    _DTYPE_KWARG,
    CPU_BF16_TRAINING_SDPA,
    _bf16_eager_attention,
    attention_kernel,
    build_config,
    build_model,
)

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


def test_attention_kernel_restricts_plain_sdpa_to_math_for_a_cpu_bfloat16_backward() -> None:
    plain, ours = build_config(TINY_BERT), build_config(TINY_BERT)
    plain._attn_implementation = "sdpa"
    ours._attn_implementation = CPU_BF16_TRAINING_SDPA
    query = torch.randn(2, 2, 4, 8, requires_grad=True)

    def kernel_dtypes(
        config: PretrainedConfig, dtype: torch.dtype, autocast: bool
    ) -> list[torch.dtype]:
        with (
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
            attention_kernel(config, query.device, dtype),
        ):
            q = query.to(dtype)
            return attention_dtypes(F.scaled_dot_product_attention(q, q, q))

    # float32: PyTorch's choice (flash on the CPU).
    assert kernel_dtypes(plain, torch.float32, autocast=False) == [torch.float32]
    # bfloat16 by autocast or by weights, with a backward to come: the math kernel.
    assert kernel_dtypes(plain, torch.float32, autocast=True) == []
    assert kernel_dtypes(plain, torch.bfloat16, autocast=False) == []
    # A model with CPU_BF16_TRAINING_SDPA chooses its attention itself.
    assert kernel_dtypes(ours, torch.bfloat16, autocast=False) == [torch.bfloat16]
    # No backward: the flash kernel's forward is the faster one, so no restriction.
    with torch.no_grad():
        assert attention_kernel(plain, query.device, torch.bfloat16).__class__ is nullcontext


@pytest.mark.parametrize("source", [TINY_VIT, TINY_LLAMA], ids=["vit", "llama"])
def test_build_model_gives_sdpa_models_the_cpu_bf16_training_attention(
    source: dict[str, Any],
) -> None:
    assert build_model(source).config._attn_implementation == CPU_BF16_TRAINING_SDPA
    explicit = build_model(source, attn_implementation="eager")
    assert explicit.config._attn_implementation == "eager"


def test_cpu_bf16_training_attention_keeps_sdpa_results_and_masks() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_LLAMA).train()
    embeds = torch.randn(2, 5, TINY_LLAMA["hidden_size"])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    def run(implementation: str, inputs: Tensor, autocast: bool, padding: Tensor = mask) -> Tensor:
        model.config._attn_implementation = implementation
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(inputs_embeds=inputs, attention_mask=padding).last_hidden_state

    # Without bf16, exactly transformers' SDPA attention, padding mask included.
    reference = run("sdpa", embeds, autocast=False)
    exact = run(CPU_BF16_TRAINING_SDPA, embeds, autocast=False)
    torch.testing.assert_close(exact, reference, rtol=0, atol=0)
    # Under bf16-mixed with a backward to come: no flash kernel, bf16 precision overall.
    output = run(CPU_BF16_TRAINING_SDPA, embeds, autocast=True)
    assert attention_dtypes(output) == []
    torch.testing.assert_close(output.float(), reference, rtol=0.05, atol=0.05)
    # The padded positions stay unseen: changing them leaves the real tokens' outputs.
    changed = embeds.clone()
    changed[0, 3:] = torch.randn(2, TINY_LLAMA["hidden_size"])
    again = run(CPU_BF16_TRAINING_SDPA, changed, autocast=True)
    torch.testing.assert_close(again[0, :3], output[0, :3], rtol=0, atol=0)
    output.float().sum().backward()
    # Without a backward, over at most 64 keys: the eager recipe too (its forward is faster).
    with torch.no_grad():
        forward_only = run(CPU_BF16_TRAINING_SDPA, embeds, autocast=True)
    torch.testing.assert_close(forward_only, output.detach(), rtol=0, atol=0)
    # Without a backward, over more keys: exactly transformers' own (bf16) attention.
    longer = torch.randn(2, 70, TINY_LLAMA["hidden_size"])
    all_real = torch.ones(2, 70, dtype=torch.long)
    with torch.no_grad():
        plain = run("sdpa", longer, autocast=True, padding=all_real)
        ours = run(CPU_BF16_TRAINING_SDPA, longer, autocast=True, padding=all_real)
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)


class _Attention(torch.nn.Module):
    """The attributes ``transformers``' attention functions read from a model's attention."""

    def __init__(self, is_causal: bool, num_key_value_groups: int = 1) -> None:
        super().__init__()
        self.is_causal = is_causal
        self.num_key_value_groups = num_key_value_groups


@pytest.mark.parametrize(
    ("is_causal", "groups", "mask_kind", "bias"),
    [
        (False, 1, None, False),
        (True, 1, None, False),
        (True, 1, "bool", False),
        (False, 1, "bool", False),
        (False, 1, "float", False),
        (False, 2, "bool", False),
        pytest.param(
            True,
            2,
            None,
            True,
            marks=pytest.mark.skipif(
                "position_bias" not in inspect.signature(sdpa_attention_forward).parameters,
                reason="transformers' SDPA attention takes no position bias before 5.x",
            ),
        ),
    ],
)
@pytest.mark.parametrize("length", [5, 20])  # fewer keys than 16 are padded for the softmax
def test_bf16_eager_attention_computes_sdpa_attention(
    is_causal: bool, groups: int, mask_kind: str | None, bias: bool, length: int
) -> None:
    # In float32 the eager recipe is exactly SDPA's attention, masks, gradients and all
    # (rounding aside).
    torch.manual_seed(0)
    module = _Attention(is_causal, groups)
    inputs = [torch.randn(2, 4 // size, length, 8) for size in (1, groups, groups)]
    keep = torch.ones(2, length, dtype=torch.bool)
    keep[0, -2:] = False
    order = torch.ones(length, length, dtype=torch.bool).tril() | (not is_causal)
    mask = None if mask_kind is None else keep[:, None, None, :] & order
    if mask_kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    kwargs = {"position_bias": torch.randn(1, 4, length, length)} if bias else {}
    results = []
    for attention in (_bf16_eager_attention, sdpa_attention_forward):
        query, key, value = (x.clone().requires_grad_() for x in inputs)
        output, _ = attention(module, query, key, value, mask, scaling=0.3, **kwargs)
        output.backward(torch.ones_like(output))
        results.append((output, query.grad, key.grad, value.grad))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_bf16_eager_attention_refuses_a_softcap() -> None:
    query = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="softcap"):
        _bf16_eager_attention(_Attention(False), query, query, query, None, softcap=30.0)


def test_text_encoder_trains_without_the_bf16_flash_kernel_under_bf16() -> None:
    bert = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    encoder = TextEncoder(bert, tokenizer=TOKENIZER).train()
    tokens = encoder.tokenize(["a red circle", "a blue square on the left"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = encoder.encode(tokens).tokens
    # Float32 flash attention (BERT on the attention interface), or the math kernel (older
    # transformers releases), never the slow bfloat16 flash backward.
    assert torch.bfloat16 not in attention_dtypes(hidden)
    hidden.float().sum().backward()
