"""Resuming a VLJEPA run from its checkpoints continues it.

One run of ``TOTAL_STEPS`` steps (2 epochs of 4 batches) writes a checkpoint mid-epoch (after
step 2) and one at the end of epoch 0 (after step 4): the checkpoints a run interrupted at
those points leaves behind (resuming needs the same ``max_steps``: it is the length of the
learning-rate schedule). A new Trainer and a new model then ``fit(..., ckpt_path=...)`` to
``TOTAL_STEPS``.

* From the end of an epoch the resumed run is the uninterrupted run: the same batches (the
  training stream is seeded by the epoch), the same step, learning rates, scheduler,
  optimizer moments and temperature, and in the end the same parameters.
* From the middle of an epoch too: the stream replays the interrupted epoch and drops the
  batches already trained on (it is seeded by the epoch, so the replay is exact), then the
  step, batches, learning rates, scheduler, optimizer moments and temperature continue as
  in the uninterrupted run, and the final parameters are the same.

The Y-encoder's dropout is off: Lightning does not checkpoint the random generators.
Validation runs at each epoch end, as it would in training: resuming from an epoch-end
checkpoint of a run without validation replays one batch (Lightning 2.6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BERT, TINY_LLAMA, TINY_VIT, TOKENIZER
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from jepa_lightning.data import ShapesDataModule
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.modules import VLJEPA

TRAIN_SAMPLES, BATCH_SIZE = 256, 64
BATCHES_PER_EPOCH = TRAIN_SAMPLES // BATCH_SIZE
TOTAL_STEPS = 2 * BATCHES_PER_EPOCH
MID_EPOCH_STEP = 2
NO_DROPOUT_BERT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class Recorder(Callback):
    """Records, before each step, the batch and the state that the step starts from."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, Any]] = {}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert isinstance(pl_module, VLJEPA)
        caption = pl_module.objectives["caption"]
        optimizer = trainer.optimizers[0]
        self.steps[trainer.global_step] = {
            "epoch": trainer.current_epoch,
            "keys": list(batch.keys),
            "lrs": {g["name"]: g["lr"] for g in optimizer.param_groups},
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "optimizer": _clone(optimizer.state_dict()["state"]),
            "logit_scale": caption.loss.logit_scale.detach().clone(),
            "temperature": caption.temperature,
        }


def _clone(state: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {i: {k: v.clone() for k, v in s.items()} for i, s in state.items()}


def build_model() -> VLJEPA:
    torch.manual_seed(0)
    return VLJEPA(
        VisionEncoder(TINY_VIT, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        TextEncoder(NO_DROPOUT_BERT, tokenizer=TOKENIZER, lr_multiplier=0.5),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
        warmup_steps=3,
    )


def build_data(root: Path, model: VLJEPA) -> ShapesDataModule:
    return ShapesDataModule(
        collator=model.batch_collator(),
        root=str(root),
        train_samples=TRAIN_SAMPLES,
        val_samples=64,
        image_size=32,
        batch_size=BATCH_SIZE,
        num_workers=0,
        shuffle_buffer=32,
    )


def build_trainer(root: Path, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        max_steps=TOTAL_STEPS,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def uninterrupted(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume")
    recorder = Recorder()
    mid_epoch = ModelCheckpoint(
        dirpath=root / "mid", every_n_train_steps=MID_EPOCH_STEP, save_top_k=-1, filename="{step}"
    )
    epoch_end = ModelCheckpoint(
        dirpath=root / "epoch", every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=-1
    )
    model = build_model()
    build_trainer(root, [recorder, mid_epoch, epoch_end]).fit(model, build_data(shapes_root, model))
    return {
        "root": root,
        "steps": recorder.steps,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "mid_epoch": root / "mid" / f"step={MID_EPOCH_STEP}.ckpt",
        "epoch_end": root / "epoch" / "epoch=0-step=4.ckpt",
    }


def resume(checkpoint: Path, shapes_root: Path) -> tuple[Trainer, VLJEPA, Recorder]:
    recorder = Recorder()
    model = build_model()
    trainer = build_trainer(checkpoint.parent / "resumed", [recorder])
    trainer.fit(model, build_data(shapes_root, model), ckpt_path=str(checkpoint))
    return trainer, model, recorder


def assert_same_state(got: dict[str, Any], expected: dict[str, Any], step: int) -> None:
    assert got["lrs"] == expected["lrs"], f"step {step}"
    assert got["scheduler"] == expected["scheduler"], f"step {step}"
    assert torch.equal(got["logit_scale"], expected["logit_scale"]), f"step {step}"
    assert got["temperature"] == expected["temperature"], f"step {step}"
    assert got["optimizer"].keys() == expected["optimizer"].keys()
    for index, state in expected["optimizer"].items():
        for name, value in state.items():
            assert torch.equal(got["optimizer"][index][name], value), f"step {step} {name}"


def test_resume_at_epoch_end_equals_uninterrupted_run(
    uninterrupted: dict[str, Any], shapes_root: Path
) -> None:
    checkpoint = torch.load(uninterrupted["epoch_end"], weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, BATCHES_PER_EPOCH)
    trainer, model, recorder = resume(uninterrupted["epoch_end"], shapes_root)
    assert trainer.global_step == TOTAL_STEPS
    expected = uninterrupted["steps"]
    assert sorted(recorder.steps) == list(range(BATCHES_PER_EPOCH, TOTAL_STEPS))
    for step, got in recorder.steps.items():
        assert got["epoch"] == expected[step]["epoch"] == 1
        assert got["keys"] == expected[step]["keys"], f"step {step}: other batch"
        assert_same_state(got, expected[step], step)
    for name, value in uninterrupted["state"].items():
        assert torch.equal(model.state_dict()[name], value), name


def test_resume_mid_epoch_continues_exactly(
    uninterrupted: dict[str, Any], shapes_root: Path
) -> None:
    trainer, model, recorder = resume(uninterrupted["mid_epoch"], shapes_root)
    assert trainer.global_step == TOTAL_STEPS
    expected = uninterrupted["steps"]
    assert sorted(recorder.steps) == list(range(MID_EPOCH_STEP, TOTAL_STEPS))
    for step, got in recorder.steps.items():
        assert got["epoch"] == expected[step]["epoch"], f"step {step}"
        assert got["keys"] == expected[step]["keys"], f"step {step}: other batch"
        assert_same_state(got, expected[step], step)
    for name, value in uninterrupted["state"].items():
        assert torch.equal(model.state_dict()[name], value), name
