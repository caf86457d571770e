import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from jepa_lightning.callbacks import ProgressBar


@pytest.mark.parametrize(
    ("bounds", "label"),
    [({"max_steps": 900}, "Epoch 5"), ({"max_epochs": 8}, "Epoch 5/7")],
)
def test_train_label_has_a_total_only_with_an_epoch_bound(bounds, label) -> None:
    bar = ProgressBar()
    trainer = Trainer(callbacks=[bar], logger=False, **bounds)
    bar.setup(trainer, BoringModel(), stage="fit")
    assert bar._get_train_description(5).rstrip() == label


def test_fit_bounded_by_steps_shows_no_negative_total(tmp_path, capsys) -> None:
    trainer = Trainer(
        callbacks=[ProgressBar()],
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    shown = capsys.readouterr().out
    assert "Epoch 0" in shown
    assert "/-" not in shown
