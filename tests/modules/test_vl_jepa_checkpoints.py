import math

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER, tiny_shapes_data
from lightning.pytorch import Trainer
from transformers import AutoConfig, AutoModel

from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA


def trainer(tmp_path, steps: int = 4) -> Trainer:
    return Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )


def nan_at_step(model: VLJEPA, step: int) -> None:
    compute = model.compute_losses

    def patched(forward):
        losses = compute(forward)
        if model.global_step == step:
            losses["caption"] = losses["caption"] * float("nan")
            losses["loss"] = losses["caption"]
        return losses

    model.compute_losses = patched  # type: ignore[method-assign]


def test_nonfinite_loss_raises_naming_part_and_step(
    tiny_model_kwargs, shapes_root, tmp_path
) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    nan_at_step(model, 2)
    with pytest.raises(FloatingPointError, match=r"global step 2.*caption=nan"):
        trainer(tmp_path).fit(model, tiny_shapes_data(shapes_root, model))


def test_nonfinite_loss_skip_keeps_weights_finite(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    model = VLJEPA(**tiny_model_kwargs, on_nonfinite="skip")
    nan_at_step(model, 1)
    run = trainer(tmp_path)
    run.fit(model, tiny_shapes_data(shapes_root, model))
    assert model.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    run.save_checkpoint(tmp_path / "ok.ckpt")
    assert (tmp_path / "ok.ckpt").is_file()


def test_no_checkpoint_with_nonfinite_weights(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    run = trainer(tmp_path, steps=1)
    run.fit(model, tiny_shapes_data(shapes_root, model))
    with torch.no_grad():
        model.model.predictor.output_proj.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"model\.predictor\.output_proj\.weight"):
        run.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_frozen_pretrained_encoder_left_out_and_restored(shapes_root, tmp_path) -> None:
    folder = tmp_path / "vit"
    AutoModel.from_config(AutoConfig.for_model(**TINY_VIT)).save_pretrained(folder)

    def build(**kwargs) -> VLJEPA:
        return VLJEPA(
            VisionEncoder(str(folder)),
            TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
            embed_dim=16,
            predictor_lm=TINY_LLAMA,
            warmup_steps=1,
            **kwargs,
        )

    model = build()
    run = trainer(tmp_path, steps=2)
    run.fit(model, tiny_shapes_data(shapes_root, model))
    run.save_checkpoint(tmp_path / "small.ckpt")
    checkpoint = torch.load(tmp_path / "small.ckpt", weights_only=False)
    assert not any(k.startswith("model.x_encoder.") for k in checkpoint["state_dict"])
    assert any(k.startswith("model.predictor.") for k in checkpoint["state_dict"])
    assert checkpoint["x_encoder_excluded"] is True
    assert checkpoint["x_encoder"] == model.model.x_encoder.describe()
    assert checkpoint["x_encoder"]["source"] == str(folder)

    restored = build()
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    kept = build(save_frozen_encoder=True)
    run = trainer(tmp_path, steps=1)
    run.fit(kept, tiny_shapes_data(shapes_root, kept))
    run.save_checkpoint(tmp_path / "full.ckpt")
    full = torch.load(tmp_path / "full.ckpt", weights_only=False)
    assert any(k.startswith("model.x_encoder.") for k in full["state_dict"])
    assert "x_encoder_excluded" not in full


def test_random_init_encoder_is_always_saved(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    run = trainer(tmp_path, steps=1)
    run.fit(model, tiny_shapes_data(shapes_root, model))
    run.save_checkpoint(tmp_path / "c.ckpt")
    checkpoint = torch.load(tmp_path / "c.ckpt", weights_only=False)
    assert any(k.startswith("model.x_encoder.") for k in checkpoint["state_dict"])
    assert "x_encoder_excluded" not in checkpoint
    assert checkpoint["x_encoder"]["source"]["model_type"] == "vit"
    assert "objectives.caption.loss.logit_scale" in checkpoint["state_dict"]
    assert math.isfinite(float(model.objectives["caption"].loss.logit_scale))
