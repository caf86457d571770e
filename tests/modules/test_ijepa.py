"""The I-JEPA LightningModule: EMA after every optimizer step on schedule, groups, checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_shapes_data
from ijepa_fit import fit_ijepa, tiny_ijepa
from lightning.pytorch import Trainer

from jepa_lightning.encoders import EncoderOutput
from jepa_lightning.models.ijepa import momentum_at
from jepa_lightning.modules import IJEPA


class RecordMomentum:
    """Wraps IJEPAModel.update_target to record each update's momentum and the weights."""

    def __init__(self, model: IJEPA) -> None:
        self.momenta: list[float] = []
        self.update = model.model.update_target
        model.model.update_target = self  # type: ignore[method-assign]

    def __call__(self, momentum: float) -> None:
        self.momenta.append(momentum)
        self.update(momentum)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ema_follows_every_optimizer_step_on_schedule(accumulate, shapes_root, tmp_path) -> None:
    model = tiny_ijepa(ema_momentum=(0.9, 1.0))
    recorder = RecordMomentum(model)
    initial = [p.clone() for p in model.model.target_encoder.parameters()]
    trainer = Trainer(
        max_steps=4,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, tiny_shapes_data(shapes_root, model))
    # One update per optimizer step (not per micro-batch), the k-th at momentum_at(k, 4).
    assert recorder.momenta == pytest.approx([momentum_at(k, 4, 0.9, 1.0) for k in range(4)])
    target = list(model.model.target_encoder.parameters())
    context = list(model.model.context_encoder.parameters())
    trained = [c.requires_grad for c in context]
    moved = [not torch.equal(t, i) for t, i in zip(target, initial, strict=True)]
    assert moved == trained  # frozen parameters (the ViT pooler) stay as they were
    assert not all(torch.equal(t, c) for t, c in zip(target, context, strict=True))


def test_optimizer_holds_the_context_encoder_and_predictor_only() -> None:
    model = tiny_ijepa()
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert set(groups) == {"context_encoder", "context_encoder_no_decay", "head", "head_no_decay"}
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    assert not in_groups & {id(p) for p in model.model.target_encoder.parameters()}
    pooler = model.model.context_encoder.backbone.pooler
    assert not in_groups & {id(p) for p in pooler.parameters()}
    assert {id(p) for p in model.model.predictor.parameters()} <= in_groups
    optimizer, _ = model.build_optimizer(total_steps=10)
    assert isinstance(optimizer, torch.optim.AdamW)


def test_validation_loss_uses_fixed_masks(shapes_root, tmp_path) -> None:
    model = tiny_ijepa()
    data = tiny_shapes_data(shapes_root, model)
    trainer = Trainer(
        logger=False, enable_progress_bar=False, limit_val_batches=2, default_root_dir=tmp_path
    )
    first = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    second = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    assert first == second


def test_checkpoint_round_trip_keeps_the_target_encoder(shapes_root, tmp_path) -> None:
    model, trainer = fit_ijepa(shapes_root, tmp_path, [], limit_val_batches=0)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = tiny_ijepa()
    restored.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    for a, b in zip(
        model.model.target_encoder.parameters(),
        restored.model.target_encoder.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_bad_momentum_and_feature_caches_are_refused(shapes_root) -> None:
    with pytest.raises(ValueError, match="ema_momentum"):
        tiny_ijepa(ema_momentum=(0.999, 0.99))
    model = tiny_ijepa()
    batch = next(iter(tiny_shapes_data(shapes_root, model).val_dataloader()))
    batch.x = EncoderOutput(torch.zeros(len(batch), 16, 32), torch.ones(len(batch), 16).bool())
    with pytest.raises(ValueError, match="feature cache"):
        model.validation_step(batch, 0)


def test_validation_outputs_leave_the_filler_row_out(shapes_root) -> None:
    model = tiny_ijepa()
    batch = next(iter(tiny_shapes_data(shapes_root, model).val_dataloader()))
    batch.valid = torch.arange(len(batch)) != 3  # row 3 stands in for a filler row
    outputs = model.validation_step(batch, 0)
    assert outputs["features"].shape[0] == len(batch) - 1
    assert outputs["predictions"].shape[0] == outputs["targets"].shape[0] == len(batch) - 1
    full = model.model.features(batch.x)
    assert torch.allclose(outputs["features"], full[batch.valid], atol=1e-6)
