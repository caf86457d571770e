import pytest
import torch
from conftest import TINY_LLAMA, attention_dtypes

from jepa_lightning.predictor import Predictor


def make(**kwargs) -> Predictor:
    torch.manual_seed(0)
    settings = {"num_visual_tokens": 16, **kwargs}
    return Predictor(visual_dim=24, query_dim=20, output_dim=12, lm=TINY_LLAMA, **settings)


def test_output_shapes_with_and_without_query() -> None:
    predictor = make()
    visual = torch.randn(3, 16, 24)
    assert predictor(visual).shape == (3, 12)
    query = torch.randn(3, 5, 20)
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert predictor(visual, query_embeds=query, query_mask=mask).shape == (3, 12)


def test_query_padding_is_ignored() -> None:
    predictor = make().eval()
    visual = torch.randn(2, 16, 24)
    query = torch.randn(2, 5, 20)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = query.clone()
    changed[0, 3:] = 50.0
    torch.testing.assert_close(
        predictor(visual, query_embeds=query, query_mask=mask)[0],
        predictor(visual, query_embeds=changed, query_mask=mask)[0],
    )
    # A row with no real query token equals no query at all.
    empty = torch.zeros(2, 5, dtype=torch.bool)
    torch.testing.assert_close(
        predictor(visual, query_embeds=query, query_mask=empty), predictor(visual)
    )


def test_visual_padding_is_ignored() -> None:
    predictor = make().eval()
    visual = torch.randn(2, 16, 24)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 12:] = False
    changed = visual.clone()
    changed[0, 12:] = 50.0
    query = torch.randn(2, 3, 20)
    for kwargs in ({}, {"query_embeds": query}):
        torch.testing.assert_close(
            predictor(visual, mask, **kwargs), predictor(changed, mask, **kwargs)
        )
    # The padding was what changed: unmasked, it matters.
    assert not torch.allclose(predictor(visual)[0], predictor(changed)[0])


@pytest.mark.parametrize("with_query", [False, True])
def test_variable_length_rows_equal_their_unpadded_selves(with_query: bool) -> None:
    predictor = make(num_visual_tokens=None).eval()
    assert predictor.position_embedding is None
    lengths = [5, 9]
    visual = torch.randn(2, 12, 24)  # padded to 12 with garbage
    mask = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    query = torch.randn(2, 3, 20) if with_query else None
    with torch.no_grad():
        padded = predictor(visual, mask, query_embeds=query)
        for row, length in enumerate(lengths):
            alone = predictor(
                visual[row : row + 1, :length],
                query_embeds=None if query is None else query[row : row + 1],
            )
            torch.testing.assert_close(padded[row : row + 1], alone, atol=1e-5, rtol=0)


def test_attention_is_bidirectional() -> None:
    predictor = make().eval()
    visual = torch.randn(1, 16, 24)
    hidden, _ = predictor.encode(visual)
    changed = visual.clone()
    changed[0, -1] += 5.0
    hidden_changed, _ = predictor.encode(changed)
    # A causal model would leave the first token unchanged by the last.
    assert not torch.allclose(hidden[0, 0], hidden_changed[0, 0])


def test_mask_tokens_and_positions() -> None:
    predictor = make()
    visual = torch.randn(2, 10, 24)
    context = torch.arange(10).expand(2, -1)
    hidden_positions = torch.arange(10, 16).expand(2, -1)
    hidden, valid = predictor.encode(
        visual, visual_positions=context, mask_positions=hidden_positions
    )
    assert hidden.shape == (2, 16, 32) and valid.all()


def test_lm_layer_initialisation(tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**{**TINY_LLAMA, "num_hidden_layers": 4})
    )
    lm.save_pretrained(tmp_path)
    predictor = Predictor(24, 20, 12, 16, lm=str(tmp_path), num_layers=2)
    assert len(predictor.layers) == 2
    for kept, original in zip(predictor.layers, lm.model.layers[2:], strict=True):
        torch.testing.assert_close(kept.mlp.up_proj.weight, original.mlp.up_proj.weight)
        assert kept.self_attn.is_causal is False
    torch.testing.assert_close(predictor.norm.weight, lm.model.norm.weight)
    assert not hasattr(predictor, "embed_tokens")


def test_num_layers_out_of_range() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        make(num_layers=5)


def test_gradient_checkpointing_matches() -> None:
    visual = torch.randn(2, 16, 24)
    plain = make().train()
    checkpointed = make(gradient_checkpointing=True).train()
    plain(visual).sum().backward()
    checkpointed(visual).sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_bf16_on_cpu_runs_attention_without_the_flash_kernel(gradient_checkpointing: bool) -> None:
    # The CPU flash kernel's backward is slow in bfloat16: under bf16-mixed, attention is two
    # bfloat16 matrix products around a float32 softmax. Float32 keeps the flash kernel.
    predictor = make(gradient_checkpointing=gradient_checkpointing).train()
    visual = torch.randn(2, 16, 24)
    assert attention_dtypes(make()(visual)) == [torch.float32] * len(predictor.layers)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = predictor(visual)
    if not gradient_checkpointing:
        assert attention_dtypes(output) == []
    # Backward (a recomputation too) runs and matches float32 to bfloat16 precision.
    output.float().sum().backward()
    reference = make()
    reference(visual).sum().backward()
    grad = predictor.output_proj.weight.grad
    torch.testing.assert_close(grad, reference.output_proj.weight.grad, rtol=0.05, atol=0.05)
