from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer as LightningTrainer

from jepa_lightning.cli import main
from jepa_lightning.trainer import Trainer, bf16_supported, resolve_precision

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "shapes_tiny.yaml")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Sets whether the CPU has native bf16 (AVX512-BF16 or AMX) and hides any GPU."""

    def set_support(avx512_bf16: bool, amx: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return set_support


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True), (True, True)])
def test_auto_is_bf16_mixed_on_a_cpu_with_native_bf16(cpu_bf16, avx512_bf16, amx) -> None:
    cpu_bf16(avx512_bf16, amx)
    assert bf16_supported("cpu") and bf16_supported("auto")
    assert resolve_precision("auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "bf16-mixed"


def test_auto_falls_back_to_32_true_without_bf16(cpu_bf16) -> None:
    cpu_bf16(False, False)
    assert resolve_precision("auto") == "32-true"
    assert resolve_precision("auto", "cpu") == "32-true"
    # Any other accelerator (mps, tpu, an instance) is not assumed to run bf16.
    cpu_bf16(True, True)
    assert resolve_precision("auto", "mps") == "32-true"


@pytest.mark.parametrize(("gpu_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, gpu_bf16, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: gpu_bf16)
    # The CPU's support does not matter once a GPU is used.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: not gpu_bf16)
    assert resolve_precision("auto", "gpu") == expected
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", "auto") == expected


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed", "16-mixed", 32, None])
def test_other_values_pass_through(cpu_bf16, value) -> None:
    cpu_bf16(False)
    assert resolve_precision(value) == value


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_trainer_resolves_auto(cpu_bf16, native, expected) -> None:
    cpu_bf16(native)
    trainer = Trainer(accelerator="cpu", precision="auto", logger=False, max_steps=1)
    assert isinstance(trainer, LightningTrainer)
    assert trainer.precision == expected
    assert Trainer(accelerator="cpu", logger=False).precision == "32-true"  # Lightning's default


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cli_takes_precision_auto(cpu_bf16, monkeypatch, tmp_path, native, expected) -> None:
    cpu_bf16(native)
    used = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *args, **kwargs: used.append(self.precision))
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.precision=auto",
            f"--trainer.default_root_dir={tmp_path}",
            f"--data.init_args.root={tmp_path / 'data'}",
        ]
    )
    assert used == [expected]


def test_cli_rejects_an_unknown_precision(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--trainer.precision=fast", "--print_config"])
    assert exit_info.value.code == 2
    assert "precision" in capsys.readouterr().err
