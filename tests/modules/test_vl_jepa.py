import math

import pytest
import torch
from conftest import TOKENIZER, tiny_shapes_data
from lightning.pytorch import Trainer

from jepa_lightning.modules import VLJEPA
from jepa_lightning.modules.vl_jepa import warmup_cosine


def batch_of(model: VLJEPA, size: int = 4, query: bool = False) -> dict:
    captions = [f"a small red circle number {i % 2}" for i in range(size)]
    tokens = model.text_encoder.tokenize(captions)
    batch = {
        "inputs": torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8),
        "caption_ids": tokens["input_ids"],
        "caption_mask": tokens["attention_mask"].bool(),
        "pair_ids": torch.tensor([i % 2 for i in range(size)]),
        "captions": captions,
        "keys": [str(i) for i in range(size)],
    }
    if query:
        q = model.text_encoder.tokenize(["what colour?"] * size)
        batch["query_ids"], batch["query_mask"] = q["input_ids"], q["attention_mask"].bool()
    return batch


def test_both_objectives_give_finite_losses(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs, masked_weight=0.5)
    losses = model.compute_losses(batch_of(model, query=True))
    assert set(losses) == {"loss", "caption", "masked"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["caption"] + 0.5 * losses["masked"])
    losses["loss"].backward()
    assert model.predictor.output_proj.weight.grad is not None
    assert model.masked_head is not None and model.masked_head.weight.grad is not None
    assert all(p.grad is None for p in model.vision_encoder.parameters())


def test_objective_weights_are_checked(tiny_model_kwargs) -> None:
    with pytest.raises(ValueError, match="caption_weight"):
        VLJEPA(**tiny_model_kwargs, caption_weight=0.0, masked_weight=0.0)


def test_embeddings_are_unit_norm(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    batch = batch_of(model)
    images = model.embed_inputs(batch["inputs"])
    texts = model.embed_texts(batch["caption_ids"], batch["caption_mask"])
    assert images.shape == texts.shape == (4, 16)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(4))


def test_parameter_groups(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    groups = {g["name"]: g for g in model.parameter_groups()}
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    assert not any(id(p) in in_groups for p in model.vision_encoder.parameters())
    assert groups["text_encoder"]["lr_multiplier"] == 0.5
    assert groups["head"]["lr_multiplier"] == 1.0
    no_decay = {id(p) for n, g in groups.items() if n.endswith("_no_decay") for p in g["params"]}
    assert id(model.caption_loss.logit_scale) in no_decay
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("_no_decay"))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_fit_logs_recall_and_keeps_encoder_frozen(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    frozen_before = [p.clone() for p in model.vision_encoder.parameters()]
    data = tiny_shapes_data(shapes_root)
    trainer = Trainer(
        max_steps=6,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    for key in ("val/i2t/R@1", "val/t2i/R@1", "val/i2t/R@10", "val/recall_mean", "train/loss"):
        assert key in metrics and math.isfinite(float(metrics[key]))
    assert not model.vision_encoder.training
    for before, after in zip(frozen_before, model.vision_encoder.parameters(), strict=True):
        assert torch.equal(before, after)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["text_encoder"] == pytest.approx(0.5 * lrs["head"])


def test_text_encoder_tokenizer_used_for_queries(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    assert model.batch_collator().text.tokenizer.name_or_path == TOKENIZER


def test_bf16_mixed_trains_with_fp32_loss_and_temperature(
    tiny_model_kwargs, shapes_root, tmp_path
) -> None:
    model = VLJEPA(**tiny_model_kwargs, masked_weight=0.5)
    dtypes: list[torch.dtype] = []
    compute = model.compute_losses

    def recording(batch):
        losses = compute(batch)
        dtypes.extend(v.dtype for v in losses.values())
        return losses

    model.compute_losses = recording  # type: ignore[method-assign]
    trainer = Trainer(
        max_steps=3,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, tiny_shapes_data(shapes_root))
    assert dtypes and all(d == torch.float32 for d in dtypes)
    assert model.caption_loss.logit_scale.dtype == torch.float32
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(float(trainer.callback_metrics["val/recall_mean"]))


@pytest.mark.parametrize("query", [False, True])
def test_validation_step_returns_the_retrieval_embeddings(tiny_model_kwargs, query) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    batch = batch_of(model, query=query)
    with torch.no_grad(), pytest.warns(UserWarning, match=r"self\.log\(\)"):
        outputs = model.validation_step(batch, 0)
    with torch.no_grad():
        images, texts = model.embed_batch(batch)
    # Retrieval always uses the empty query, even when the loss used the batch's query.
    torch.testing.assert_close(outputs["image_embeddings"], images)
    torch.testing.assert_close(outputs["text_embeddings"], texts)
    assert model.val_recall.update_count == 1
