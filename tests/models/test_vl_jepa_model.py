"""The model core with a variable-length X-encoder: padding never changes ŝ."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TOKENIZER
from torch import Tensor, nn

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import EncoderOutput, ModalityEncoder, TextEncoder
from jepa_lightning.models import BatchForward, VLJEPAModel

FEATURE_DIM = 6
LENGTHS = [3, 7, 5]
QUERIES = ["what colour is it?", None, "where is it?"]


class Sequences(ModalityEncoder):
    """A variable-length test modality: ``(features (B, L, 6), lengths (B,))``, padded.

    Its tokens are a linear projection of the features; positions past a row's length are
    padding (``False`` in the mask), whatever they hold.
    """

    def __init__(self, frozen: bool = True) -> None:
        super().__init__(frozen=frozen)
        self.proj = nn.Linear(FEATURE_DIM, 12)

    @property
    def output_dim(self) -> int:
        return 12

    def codec(self) -> Any:  # a test double: no sample decoding
        raise NotImplementedError

    def encode(self, inputs: tuple[Tensor, Tensor]) -> EncoderOutput:
        features, lengths = inputs
        positions = torch.arange(features.shape[1], device=features.device)
        return EncoderOutput(self.proj(features), positions[None, :] < lengths[:, None])


def padded(samples: list[Tensor], length: int, seed: int) -> tuple[Tensor, Tensor]:
    """The samples padded to ``length`` with large random garbage, and their lengths."""
    garbage = 100.0 * torch.randn(
        len(samples), length, FEATURE_DIM, generator=torch.Generator().manual_seed(seed)
    )
    for row, sample in enumerate(samples):
        garbage[row, : sample.shape[0]] = sample
    return garbage, torch.tensor([sample.shape[0] for sample in samples])


@pytest.fixture
def model() -> VLJEPAModel:
    torch.manual_seed(0)
    return VLJEPAModel(
        Sequences(),
        TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    ).eval()


@pytest.fixture
def samples() -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(length, FEATURE_DIM, generator=generator) for length in LENGTHS]


def test_variable_length_encoder_has_no_position_table(model: VLJEPAModel) -> None:
    assert model.x_encoder.num_tokens is None and model.x_encoder.grid is None
    assert model.predictor.num_visual_tokens is None
    assert model.predictor.position_embedding is None
    assert not any(p.requires_grad for p in model.x_encoder.parameters())


@pytest.mark.parametrize("queries", [None, QUERIES], ids=["no_query", "query"])
def test_padding_does_not_change_the_prediction(
    model: VLJEPAModel, samples: list[Tensor], queries: list[str | None] | None
) -> None:
    with torch.no_grad():
        short = model.embed_inputs(padded(samples, max(LENGTHS), seed=2), queries=queries)
        long = model.embed_inputs(padded(samples, 12, seed=3), queries=queries)
        torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
        # Each row alone, without any padding, is the same again.
        for row, sample in enumerate(samples):
            alone = model.embed_inputs(
                (sample[None], torch.tensor([sample.shape[0]])),
                queries=None if queries is None else [queries[row]],
            )
            torch.testing.assert_close(long[row : row + 1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(long.norm(dim=-1), torch.ones(len(samples)))


def test_the_garbage_would_matter_unmasked(model: VLJEPAModel, samples: list[Tensor]) -> None:
    # The same padded tensors read as real tokens: the garbage then changes ŝ.
    first, _ = padded(samples, 12, seed=2)
    second, _ = padded(samples, 12, seed=3)
    full = torch.full((len(samples),), 12)
    with torch.no_grad():
        assert not torch.allclose(
            model.embed_inputs((first, full)), model.embed_inputs((second, full)), atol=1e-3
        )


def test_queries_change_the_prediction(model: VLJEPAModel, samples: list[Tensor]) -> None:
    inputs = padded(samples, 9, seed=4)
    with torch.no_grad():
        plain = model.embed_inputs(inputs)
        queried = model.embed_inputs(inputs, queries=QUERIES)
    assert not torch.allclose(plain[0], queried[0], atol=1e-4)
    torch.testing.assert_close(plain[1], queried[1])  # None: no query


def test_cached_tokens_embed_as_the_raw_inputs(model: VLJEPAModel, samples: list[Tensor]) -> None:
    inputs = padded(samples, 9, seed=5)
    with torch.no_grad():
        cached = model.x_encoder(inputs)
        torch.testing.assert_close(
            model.embed_inputs(cached, queries=QUERIES), model.embed_inputs(inputs, QUERIES)
        )


def test_batch_forward_of_a_padded_batch(model: VLJEPAModel, samples: list[Tensor]) -> None:
    captions = ["a red circle", "a blue square", "two shapes"]
    tokens = model.text_encoder.tokenize(captions)
    batch = Batch(
        x=padded(samples, 10, seed=6),
        pair_ids=torch.arange(3),
        keys=["a", "b", "c"],
        captions=captions,
        caption_ids=tokens["input_ids"],
        caption_mask=tokens["attention_mask"].bool(),
    )
    step = BatchForward(model, batch)
    assert step.x.mask.tolist() == [[i < n for i in range(10)] for n in LENGTHS]
    with torch.no_grad():
        predicted, target = step.retrieval
        torch.testing.assert_close(predicted, model.embed_inputs(padded(samples, 7, seed=7)))
        torch.testing.assert_close(target, model.embed_texts(captions))
    assert step.x is step.x  # computed once


REPEATED = ["a red circle", "a blue square", "a red circle", "a red circle", "a blue square"]


def per_row_embeddings(model: VLJEPAModel, ids: Tensor, mask: Tensor) -> Tensor:
    """Every row encoded on its own: the reference of the shared encoding of repeats."""
    return torch.cat([model.embed_text(ids[i : i + 1], mask[i : i + 1]) for i in range(len(ids))])


def test_repeated_texts_are_encoded_once(model: VLJEPAModel) -> None:
    tokens = model.text_encoder.tokenize(REPEATED)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    encoded_rows: list[int] = []
    model.text_encoder.register_forward_hook(
        lambda module, args, output: encoded_rows.append(len(output.tokens))
    )
    with torch.no_grad():
        embeddings = model.embed_text(ids, mask)
    assert encoded_rows == [2]
    assert embeddings.shape == (len(REPEATED), 16)
    with torch.no_grad():
        torch.testing.assert_close(embeddings, per_row_embeddings(model, ids, mask))


def test_shared_encodings_give_the_gradients_of_encoding_every_row(model: VLJEPAModel) -> None:
    # In eval mode: without dropout's random masks, both ways compute the same function.
    tokens = model.text_encoder.tokenize(REPEATED)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    weights = torch.randn(len(REPEATED), 16, generator=torch.Generator().manual_seed(2))
    parameters = [p for p in model.text_encoder.parameters() if p.requires_grad]
    parameters.append(model.text_projection.weight)

    def gradients(embeddings: Tensor) -> list[Tensor]:
        return list(torch.autograd.grad((weights * embeddings).sum(), parameters))

    shared = gradients(model.embed_text(ids, mask))
    separate = gradients(per_row_embeddings(model, ids, mask))
    for got, expected in zip(shared, separate, strict=True):
        torch.testing.assert_close(got, expected)


def test_same_tokens_with_another_mask_are_another_text(model: VLJEPAModel) -> None:
    tokens = model.text_encoder.tokenize(["a red circle", "a red circle"])
    ids, mask = tokens["input_ids"], tokens["attention_mask"].clone()
    mask[1, -1] = 0  # the second row's last real token is padding there
    with torch.no_grad():
        embeddings = model.embed_text(ids, mask)
        torch.testing.assert_close(embeddings, per_row_embeddings(model, ids, mask))
    assert not torch.allclose(embeddings[0], embeddings[1])
