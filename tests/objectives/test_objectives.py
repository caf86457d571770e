"""The objectives: what each computes, how they bind to the model and how they add up."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TOKENIZER
from torch import Tensor, nn

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import EncoderOutput, ModalityEncoder, TextEncoder
from jepa_lightning.losses import InfoNCELoss
from jepa_lightning.models import BatchForward, VLJEPAModel
from jepa_lightning.modules import VLJEPA
from jepa_lightning.objectives import CaptionInfoNCE, MaskedTokenPrediction, Objective

CAPTIONS = ["a small red circle", "a big blue square", "a green triangle", "two shapes"]


class NoGrid(ModalityEncoder):
    """A test X-encoder whose tokens form no grid (variable length)."""

    def __init__(self) -> None:
        super().__init__(frozen=True)
        self.proj = nn.Linear(4, 8)

    @property
    def output_dim(self) -> int:
        return 8

    def codec(self) -> Any:  # a test double: no sample decoding
        raise NotImplementedError

    def encode(self, inputs: Tensor) -> EncoderOutput:
        tokens = self.proj(inputs)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))


class PredictedNorm(Objective):
    """A new objective in one subclass: the mean norm of ``ŝ``."""

    name = "norm"

    def forward(self, step: BatchForward) -> Tensor:
        return step.predicted.norm(dim=-1).mean()


def batch_of(model: VLJEPAModel, query: bool = False) -> Batch:
    tokens = model.text_encoder.tokenize(CAPTIONS)
    batch = Batch(
        x=torch.randint(0, 256, (len(CAPTIONS), 3, 32, 32), dtype=torch.uint8),
        pair_ids=torch.arange(len(CAPTIONS)),
        keys=[str(i) for i in range(len(CAPTIONS))],
        captions=CAPTIONS,
        caption_ids=tokens["input_ids"],
        caption_mask=tokens["attention_mask"].bool(),
    )
    if query:
        queries = model.text_encoder.tokenize(["what colour?", "where?"] * 2)
        batch.query_ids = queries["input_ids"]
        batch.query_mask = queries["attention_mask"].bool()
    return batch


@pytest.mark.parametrize("query", [False, True])
def test_caption_objective_is_infonce_of_the_batch_pair(tiny_model_kwargs, query: bool) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    objective = model.objectives["caption"]
    assert isinstance(objective, CaptionInfoNCE)
    with torch.no_grad():
        objective.loss.logit_scale.fill_(2.0)
    step = BatchForward(model.model, batch_of(model.model, query=query))
    batch = step.batch
    with torch.no_grad():
        loss = objective(step)
        # ŝ given the batch's query (if any) and s of the captions, from the model core.
        tokens = model.model.x_tokens(batch.x)
        predicted = model.model.predict(tokens, batch.query_ids, batch.query_mask)
        target = model.model.embed_text(*batch.caption_tokens())
        expected = InfoNCELoss(init_temperature=math.exp(-2.0))(predicted, target)
    torch.testing.assert_close(step.predicted, predicted)
    torch.testing.assert_close(loss, expected)
    assert objective.temperature == pytest.approx(math.exp(-2.0))
    assert objective.logged_values() == {"temperature": pytest.approx(math.exp(-2.0))}


def test_caption_objective_clamps_its_temperature_after_a_step() -> None:
    objective = CaptionInfoNCE(init_temperature=0.1, max_logit_scale=50.0)
    with torch.no_grad():
        objective.loss.logit_scale.fill_(10.0)
    objective.after_optimizer_step()
    assert objective.loss.logit_scale.item() == pytest.approx(math.log(50.0))
    assert objective.temperature == pytest.approx(1 / 50.0)


def test_masked_objective_needs_a_token_grid() -> None:
    model = VLJEPAModel(
        NoGrid(), TextEncoder(TINY_BERT, tokenizer=TOKENIZER), embed_dim=16, predictor_lm=TINY_LLAMA
    )
    objective = MaskedTokenPrediction()
    with pytest.raises(ValueError, match=r"MaskedTokenPrediction needs .*token grid.*NoGrid\.grid"):
        objective.bind(model)
    with pytest.raises(ValueError, match="token grid"):
        VLJEPA(
            NoGrid(),
            TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
            embed_dim=16,
            predictor_lm=TINY_LLAMA,
            objectives=[MaskedTokenPrediction()],
        )


def test_masked_objective_runs_only_once_bound(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    unbound = MaskedTokenPrediction()
    with pytest.raises(RuntimeError, match="bind"):
        unbound(BatchForward(model.model, batch_of(model.model)))
    unbound.bind(model.model)
    assert unbound.mask_generator is not None and unbound.head is not None
    assert unbound.head.in_features == model.model.predictor.width
    assert unbound.head.out_features == model.model.x_encoder.output_dim


def test_objective_names_must_be_distinct(tiny_model_kwargs) -> None:
    with pytest.raises(ValueError, match="distinct names"):
        VLJEPA(**tiny_model_kwargs, objectives=[CaptionInfoNCE(), CaptionInfoNCE(weight=2.0)])


def test_total_is_the_weighted_sum(tiny_model_kwargs) -> None:
    objectives = [CaptionInfoNCE(weight=0.5), MaskedTokenPrediction(weight=2.0)]
    model = VLJEPA(**tiny_model_kwargs, objectives=objectives).eval()
    batch = batch_of(model.model)
    with torch.no_grad():
        torch.manual_seed(3)  # the masks
        losses = model.compute_losses(BatchForward(model.model, batch))
        torch.manual_seed(3)
        step = BatchForward(model.model, batch)
        alone = {"caption": objectives[0](step), "masked": objectives[1](step)}
    assert set(losses) == {"loss", "caption", "masked"}
    for name, value in alone.items():
        torch.testing.assert_close(losses[name], value)
    expected = 0.5 * alone["caption"].item() + 2.0 * alone["masked"].item()
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["loss"].item() != pytest.approx(alone["caption"].item() + alone["masked"].item())


def test_a_new_objective_is_one_subclass(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs, objectives=[CaptionInfoNCE(), PredictedNorm(weight=0.25)])
    step = BatchForward(model.model, batch_of(model.model))
    losses = model.compute_losses(step)
    assert set(losses) == {"loss", "caption", "norm"}
    torch.testing.assert_close(losses["norm"], step.predicted.norm(dim=-1).mean())
    torch.testing.assert_close(losses["loss"], losses["caption"] + 0.25 * losses["norm"])
