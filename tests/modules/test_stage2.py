"""Stage 2: a fit that starts from stage 1's weights only, on question/answer samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_shapes_data
from lightning.pytorch import Callback, Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import CONFIG, tiny_overrides

from jepa_lightning.cli import main
from jepa_lightning.export import export_model
from jepa_lightning.modules import VLJEPA
from jepa_lightning.modules.checkpoints import load_core_weights

STAGE2 = str(REPO / "configs" / "shapes_vqa_stage2.yaml")


def core_state(model: VLJEPA) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.model.state_dict().items()}


class FirstStepWeights(Callback):
    """Records the core's weights and the optimizer's step count when training starts."""

    def on_train_start(self, trainer: Trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.state = core_state(pl_module)
        self.global_step = trainer.global_step
        self.optimizer_state = trainer.optimizers[0].state_dict()["state"]


def perturbed(tiny_model_kwargs) -> VLJEPA:
    torch.manual_seed(0)
    model = VLJEPA(**tiny_model_kwargs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_init_weights_loads_the_core_and_nothing_else(
    kind: str, tiny_model_kwargs, shapes_root, tmp_path
) -> None:
    stage1 = perturbed(tiny_model_kwargs)
    if kind == "export":
        source = export_model(stage1, str(tmp_path / "export"))
    else:
        source = str(tmp_path / "stage1.ckpt")
        torch.save({"state_dict": stage1.state_dict(), "x_encoder_excluded": False}, source)
    torch.manual_seed(1)
    stage2 = VLJEPA(**tiny_model_kwargs, init_weights=source)
    assert not torch.equal(
        stage2.model.predictor.visual_proj.weight, stage1.model.predictor.visual_proj.weight
    )  # built fresh: the weights arrive when fit sets up
    recorder = FirstStepWeights()
    trainer = Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tmp_path,
    )
    trainer.fit(stage2, tiny_shapes_data(shapes_root, stage2))
    expected = core_state(stage1)
    assert recorder.state.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(recorder.state[name], value, rtol=0, atol=0, msg=name)
    assert recorder.global_step == 0 and recorder.optimizer_state == {}  # a new optimizer
    # The temperature belongs to the objective, not the core: stage 2 starts with its own.
    assert stage2.objectives["caption"].loss.logit_scale.item() != pytest.approx(
        stage1.objectives["caption"].loss.logit_scale.item()
    )


def test_init_weights_that_do_not_fit_name_the_setting(tiny_model_kwargs, tmp_path) -> None:
    model = VLJEPA(**tiny_model_kwargs)
    with pytest.raises(FileNotFoundError, match="init_weights: no checkpoint or export folder"):
        load_core_weights(model.model, str(tmp_path / "missing.ckpt"))
    path = tmp_path / "other.ckpt"
    state = {"model.text_projection.weight": torch.zeros(3, 3)}
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="do not fit the model"):
        load_core_weights(model.model, str(path))


def scalars(run: Path) -> dict[str, list[float]]:
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in tags}


@pytest.mark.slow
def test_stage2_config_trains_on_questions_from_stage1(shapes_root, tmp_path) -> None:
    common = [f"--trainer.default_root_dir={tmp_path}", *tiny_overrides(shapes_root)]
    # Validate at the last step: every supported Lightning then writes last.ckpt (2.4 does not
    # at the end of a run without validation).
    stage1_args = ["--trainer.max_steps=2", "--trainer.val_check_interval=2"]
    main(["fit", "--config", CONFIG, *common, *stage1_args])
    stage1 = tmp_path / "jepa" / "version_0" / "checkpoints" / "last.ckpt"
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--config",
            STAGE2,
            *common,
            f"--data.init_args.root={tmp_path / 'qa'}",
            f"--model.init_args.init_weights={stage1}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
        ]
    )
    values = scalars(tmp_path / "jepa" / "version_1")
    chance = values["val/vqa/chance"][-1]
    # colour 1/4, shape 1/3, position 1/5, count 1/2 questions, drawn uniformly
    assert chance == pytest.approx((1 / 4 + 1 / 3 + 1 / 5 + 1 / 2) / 4, abs=0.06)
    for kind in ("colour", "shape", "position", "count"):
        assert 0.0 <= values[f"val/vqa/{kind}/accuracy"][-1] <= 1.0
    checkpoint = torch.load(
        tmp_path / "jepa" / "version_1" / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert checkpoint["global_step"] == 2  # counted from 0: a new run, not a resume
    assert checkpoint["hyper_parameters"]["init_weights"] == str(stage1)
