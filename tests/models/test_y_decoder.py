"""The Y-decoder core: teacher-forced loss, generation from embeddings, its folder format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DECODER_LM, TOKENIZER
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from jepa_lightning.models.y_decoder import YDecoder

CAPTIONS = [
    "a small red circle on the left",
    "a blue square above a green triangle",
    "a large yellow square",
]


def tiny_decoder(**kwargs) -> YDecoder:
    torch.manual_seed(0)
    settings = {"embed_dim": 8, "prefix_length": 2, "max_length": 12, **kwargs}
    return YDecoder(TINY_DECODER_LM, **settings)


def overfit(decoder: YDecoder, embeddings: torch.Tensor, steps: int = 150) -> float:
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = decoder(embeddings, CAPTIONS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    return loss.item()


def test_loss_is_the_cross_entropy_of_the_caption_tokens_after_the_prefix() -> None:
    decoder = tiny_decoder()
    embeddings = torch.randn(3, 8)
    tokens = decoder.tokenize(CAPTIONS)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert (ids[:, 0] == decoder.start_id).all()  # [CLS] starts, [SEP] ends every caption
    lengths = mask.sum(1)
    assert all(ids[row, lengths[row] - 1] == decoder.end_id for row in range(3))
    # Reference: the LM's logits over [prefix; tokens], every real token after the start.
    inputs = torch.cat([decoder.prefix(embeddings), decoder.lm.get_input_embeddings()(ids)], 1)
    attention = torch.cat([torch.ones(3, 2, dtype=torch.long), mask], 1)
    logits = decoder.lm(inputs_embeds=inputs, attention_mask=attention).logits
    terms = []
    for row in range(3):
        for position in range(1, int(lengths[row])):
            predicted_at = 2 + position - 1  # the position before the token, after the prefix
            terms.append(F.cross_entropy(logits[row, predicted_at], ids[row, position]))
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(decoder(embeddings, CAPTIONS), expected)


def test_a_training_step_reaches_the_projection_and_lowers_the_loss() -> None:
    decoder = tiny_decoder()
    embeddings = torch.randn(3, 8)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    first = decoder(embeddings, CAPTIONS)
    first.backward()
    assert decoder.projection[0].weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    assert decoder(embeddings, CAPTIONS).item() < first.item()


def test_generation_writes_the_caption_of_each_embedding_greedy_and_beam() -> None:
    decoder = tiny_decoder()
    embeddings = F.normalize(torch.randn(3, 8), dim=-1)
    assert overfit(decoder, embeddings) < 0.05
    decoder.eval()
    assert decoder.generate(embeddings) == CAPTIONS
    assert decoder.generate(embeddings, num_beams=3) == CAPTIONS
    assert decoder.generate(embeddings * 7.0) == CAPTIONS  # the norm means nothing
    assert decoder.generate(embeddings[:0]) == []


def test_greedy_generation_is_the_argmax_token_by_token() -> None:
    decoder = tiny_decoder(max_length=6).eval()
    embeddings = torch.randn(2, 8)
    generated = decoder.generate(embeddings)
    with torch.no_grad():  # reference: the full forward at every step, argmax
        ids = torch.full((2, 1), decoder.start_id)
        finished = torch.zeros(2, dtype=torch.bool)
        for _ in range(6):
            inputs = torch.cat(
                [decoder.prefix(embeddings), decoder.lm.get_input_embeddings()(ids)], 1
            )
            step = decoder.lm(inputs_embeds=inputs).logits[:, -1].argmax(-1)
            step = torch.where(finished, torch.full_like(step, decoder.pad_id), step)
            ids = torch.cat([ids, step[:, None]], 1)
            finished |= step == decoder.end_id
    expected = decoder.tokenizer.batch_decode(
        ids[:, 1:], skip_special_tokens=True, clean_up_tokenization_spaces=True
    )
    assert generated == [" ".join(text.split()) for text in expected]


def test_saved_decoder_loads_and_generates_the_same(tmp_path) -> None:
    decoder = tiny_decoder()
    embeddings = torch.randn(3, 8)
    overfit(decoder, embeddings, steps=30)
    decoder.eval()
    folder = decoder.save_pretrained(tmp_path / "decoder")
    loaded = YDecoder.from_pretrained(folder)
    state = loaded.state_dict()
    for name, value in decoder.state_dict().items():
        torch.testing.assert_close(state[name], value, msg=name)
    assert loaded.generate(embeddings, num_beams=2) == decoder.generate(embeddings, num_beams=2)


def test_decoder_folder_of_another_format_is_refused(tmp_path) -> None:
    folder = tiny_decoder().save_pretrained(tmp_path / "decoder")
    (tmp_path / "decoder" / "config.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a jepa-lightning/y-decoder"):
        YDecoder.from_pretrained(folder)


def test_pretrained_lm_from_a_local_folder(tmp_path) -> None:
    # A GPT-2 causal LM saved as transformers does, with a tokenizer beside it.
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=30522, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "lm")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(tmp_path / "lm")
    decoder = YDecoder(str(tmp_path / "lm"), embed_dim=8, prefix_length=2)
    saved = load_file(str(tmp_path / "lm" / "model.safetensors"))
    torch.testing.assert_close(
        decoder.lm.transformer.wte.weight, saved["transformer.wte.weight"]
    )  # pretrained weights, not a random init
    assert decoder(torch.randn(2, 8), CAPTIONS[:2]).isfinite()
    assert len(decoder.eval().generate(torch.randn(2, 8), max_new_tokens=3)) == 2


def test_wrong_embedding_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 8\)"):
        tiny_decoder().generate(torch.randn(2, 5))
