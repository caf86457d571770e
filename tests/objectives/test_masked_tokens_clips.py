"""The masked objective on clips: V-JEPA's 3-D blocks over frames x height x width."""

from __future__ import annotations

from typing import Any

import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.models.vl_jepa import BatchForward, VLJEPAModel
from jepa_lightning.objectives import MaskedTokenPrediction

FRAMES, SIDE = 3, 4  # TINY_VIT: 32 px images, 8 px patches: 4 x 4 tokens per frame


def clip_model() -> VLJEPAModel:
    return VLJEPAModel(
        VisionEncoder(TINY_VIT, num_frames=FRAMES),
        TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )


def clip_batch(model: VLJEPAModel, frames: int, size: int = 4) -> Batch:
    captions = ["a red circle moves to the left", "a square appears, then a circle"] * (size // 2)
    tokens = model.text_encoder.tokenize(captions)
    return Batch(
        x=torch.randint(0, 256, (size, frames, 3, 32, 32), dtype=torch.uint8),
        pair_ids=torch.arange(size),
        keys=[str(i) for i in range(size)],
        captions=captions,
        caption_ids=tokens["input_ids"],
        caption_mask=tokens["attention_mask"].bool(),
    )


def test_clip_masks_are_3d_cover_every_position_and_keep_targets_out_of_context() -> None:
    model = clip_model()
    objective = MaskedTokenPrediction(masking={"temporal_scale": (0.3, 0.7), "num_targets": 2})
    objective.bind(model)
    generator = objective.mask_generator
    assert generator is not None
    assert (generator.frames, generator.height, generator.width) == (FRAMES, SIDE, SIDE)
    total = FRAMES * SIDE * SIDE
    seen_target = torch.zeros(total, dtype=torch.bool)
    seen_context = torch.zeros(total, dtype=torch.bool)
    rng = torch.Generator().manual_seed(0)
    for _ in range(200):
        masks = generator(8, generator=rng)
        for context, targets in zip(masks.context, masks.targets, strict=True):
            assert not set(context.tolist()) & set(targets.tolist())
        seen_target[masks.targets.flatten()] = True
        seen_context[masks.context.flatten()] = True
    assert seen_target.all() and seen_context.all()  # the last frame, row and column included


def hidden_positions_of_forward(model: VLJEPAModel, frames: int) -> list[torch.Tensor]:
    """Runs the objective on a batch of ``frames``-frame clips; the mask positions it used."""
    objective = MaskedTokenPrediction(masking={"temporal_scale": (0.3, 0.7), "num_targets": 2})
    objective.bind(model)
    used: list[torch.Tensor] = []
    encode = model.predictor.encode

    def recording(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["mask_positions"])
        return encode(*args, **kwargs)

    model.predictor.encode = recording  # type: ignore[method-assign]
    torch.manual_seed(0)
    for _ in range(10):
        loss = objective(BatchForward(model, clip_batch(model, frames)))
        assert torch.isfinite(loss)
    return used


def test_forward_masks_every_frame_of_a_clip_and_only_the_frames_given() -> None:
    model = clip_model()
    per_frame = SIDE * SIDE
    clip_positions = torch.cat([p.flatten() for p in hidden_positions_of_forward(model, FRAMES)])
    frames_hit = set((clip_positions // per_frame).tolist())
    assert frames_hit == set(range(FRAMES))
    # Images fed to the clip model (one-frame clips): 2-D masks over the first frame only.
    image_positions = torch.cat([p.flatten() for p in hidden_positions_of_forward(model, 1)])
    assert int(image_positions.max()) < per_frame
