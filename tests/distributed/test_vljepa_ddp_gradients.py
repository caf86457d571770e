"""DDP gradients of the real VLJEPA equal the gradients of the global-batch loss.

Two CPU processes (gloo) each hold a tiny ``VLJEPA`` (frozen ViT X-encoder, BERT Y-encoder,
Llama-style predictor) wrapped in ``DistributedDataParallel(find_unused_parameters=False)``,
the configuration of ``strategy: ddp``: a trainable parameter that a step leaves unused, or a
frozen one that DDP tried to reduce, would stop the second step. Each rank computes
``compute_losses(BatchForward(model, its half of the batch))["loss"]`` (negatives gathered
from both ranks) and backpropagates twice; the parent computes the same loss on the whole
batch in one process. The model runs in float64 (so that only a real difference exceeds the
tolerance) on cached X-encoder tokens (``Batch.x`` an ``EncoderOutput``, as the feature cache
provides them): the X-encoder's float32 image normalisation cannot run in float64; its frozen
parameters are in the wrapped module all the same.
With gathered negatives each rank's loss is its share of the global mean, so DDP's averaged
gradient must equal the single-process gradient of the predictor and the Y-encoder.

The masked objective draws random masks per call; here the masks of the whole batch are drawn
once from a seeded generator and each rank takes its rows, so both sides see the same masks.

All scenarios run in one pair of spawned processes; the parent kills them at a deadline.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from spawn import run_on_ranks
from torch import Tensor, nn

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import EncoderOutput, TextEncoder, VisionEncoder
from jepa_lightning.masking import MaskPair, MultiBlockMaskGenerator
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.objectives import CaptionInfoNCE, MaskedTokenPrediction, Objective

WORLD_SIZE = 2
GLOBAL_BATCH = 8
TIMEOUT_S = 150.0
TOLERANCE = 1e-5
# Dropout off: it would draw different random numbers on each side.
NO_DROPOUT_BERT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
CAPTIONS = [
    "a small red circle on the left",
    "a big blue square",
    "a green triangle above a red circle",
    "a yellow star",
    "a small purple square on the right",
    "two shapes",
    "a big orange circle below a blue triangle",
    "a red star",
]

# name -> (masked objective's weight or None, batch has queries)
SCENARIOS: dict[str, tuple[float | None, bool]] = {
    "caption": (None, False),
    "caption_query_masked": (0.5, True),
}


class FixedMasks:
    """Stands in for the mask generator: returns given rows of masks drawn once."""

    def __init__(self, masks: MaskPair, rows: slice) -> None:
        self.masks = MaskPair(masks.context[rows], masks.targets[rows])

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> MaskPair:
        assert batch_size == self.masks.context.shape[0]
        return self.masks


class LossOf(nn.Module):
    """Makes ``compute_losses(BatchForward(batch))["loss"]`` the forward of a module DDP wraps."""

    def __init__(self, model: VLJEPA) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return self.model.compute_losses(BatchForward(self.model.model, batch))["loss"]


def build_model(name: str, rows: slice) -> VLJEPA:
    masked_weight, _ = SCENARIOS[name]
    objectives: list[Objective] = [CaptionInfoNCE()]
    if masked_weight is not None:
        objectives.append(MaskedTokenPrediction(weight=masked_weight))
    torch.manual_seed(1234)  # same initial weights everywhere
    model = VLJEPA(
        VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        TextEncoder(NO_DROPOUT_BERT, tokenizer=TOKENIZER, lr_multiplier=0.5),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
        objectives=objectives,
    )
    model.double()
    if "masked" in model.objectives:
        masked = model.objectives["masked"]
        assert isinstance(masked, MaskedTokenPrediction)
        masks = MultiBlockMaskGenerator(model.model.x_encoder.grid, min_keep=2)(
            GLOBAL_BATCH, generator=torch.Generator().manual_seed(7)
        )
        masked.mask_generator = FixedMasks(masks, rows)  # type: ignore[assignment]
    return model


def make_batch(name: str, model: VLJEPA, rows: slice) -> Batch:
    _, with_query = SCENARIOS[name]
    g = torch.Generator().manual_seed(99)
    encoder = model.model.x_encoder
    assert encoder.num_tokens is not None
    text_encoder = model.model.text_encoder
    captions = text_encoder.tokenize(CAPTIONS)  # padded over the whole batch
    tokens = torch.randn(
        GLOBAL_BATCH, encoder.num_tokens, encoder.output_dim, generator=g, dtype=torch.float64
    )
    token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    batch = Batch(
        x=EncoderOutput(tokens[rows], token_mask[rows]),
        pair_ids=torch.arange(GLOBAL_BATCH)[rows],
        keys=[str(i) for i in range(GLOBAL_BATCH)][rows],
        captions=CAPTIONS[rows],
        caption_ids=captions["input_ids"][rows],
        caption_mask=captions["attention_mask"].bool()[rows],
    )
    if with_query:
        queries = text_encoder.tokenize(["what colour is it?", "where?"] * 4)
        query_mask = queries["attention_mask"].bool()
        query_mask[1::4] = False  # some samples have no query
        batch.query_ids = queries["input_ids"][rows]
        batch.query_mask = query_mask[rows]
    return batch


def rank_rows(rank: int) -> slice:
    per_rank = GLOBAL_BATCH // WORLD_SIZE
    return slice(rank * per_rank, (rank + 1) * per_rank)


def gradients(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run_rank(rank: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rows = rank_rows(rank)
    for name in SCENARIOS:
        model = build_model(name, rows)
        ddp = nn.parallel.DistributedDataParallel(LossOf(model), find_unused_parameters=False)
        batch = make_batch(name, model, rows)
        # The second step is where DDP reports parameters the first one left unused.
        for _ in range(2):
            ddp.zero_grad(set_to_none=True)
            loss = ddp(batch)
            loss.backward()
        results[name] = {"loss": loss.detach(), "grads": gradients(model)}
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_on_ranks(_run_rank, tmp_path_factory.mktemp("vljepa_ddp"), WORLD_SIZE, TIMEOUT_S)


def reference(name: str) -> tuple[VLJEPA, dict[str, Any]]:
    """The same loss on the whole global batch, in one process."""
    rows = slice(0, GLOBAL_BATCH)
    model = build_model(name, rows)
    loss = model.compute_losses(BatchForward(model.model, make_batch(name, model, rows)))["loss"]
    loss.backward()
    return model, {"loss": loss.detach(), "grads": gradients(model)}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    # What DDP with find_unused_parameters=False needs of every step.
    model, expected = reference(name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    unused = sorted(trainable - set(expected["grads"]))
    assert not unused, f"trainable parameters without a gradient: {unused}"
    assert not any(n.startswith("model.x_encoder.") for n in trainable)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_gradients_match_global_batch(name: str, rank_results: list[dict[str, Any]]) -> None:
    model, expected = reference(name)
    names = set(expected["grads"])
    assert any(n.startswith("model.predictor.") for n in names)
    assert any(n.startswith("model.text_encoder.") for n in names)
    assert "objectives.caption.loss.logit_scale" in names
    if name == "caption_query_masked":
        assert "objectives.masked.head.weight" in names
    for rank, results in enumerate(rank_results):
        got = results[name]
        assert set(got["grads"]) == names, f"rank {rank}"
        for param, grad in expected["grads"].items():
            diff = (got["grads"][param] - grad).abs().max().item()
            assert diff <= TOLERANCE, f"rank {rank} {param}: max abs diff {diff:.3g}"
    # Each rank's loss is its share of the global loss: they average to it.
    mean_loss = torch.stack([r[name]["loss"] for r in rank_results]).mean()
    assert torch.allclose(mean_loss, expected["loss"], atol=TOLERANCE, rtol=0)
