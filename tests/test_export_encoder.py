"""Export of the JEPA-pretrained encoder → VL-JEPA's X-encoder and ``transformers``, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_BERT, TINY_LLAMA, TOKENIZER
from ijepa_fit import tiny_ijepa
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from jepa_lightning.cli import main
from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.export_encoder import export_encoder
from jepa_lightning.modules import VLJEPA

IJEPA_CONFIG = str(REPO / "configs" / "ijepa_shapes_tiny.yaml")
VL_CONFIG = str(REPO / "configs" / "shapes_tiny.yaml")


def _trained_model():
    model = tiny_ijepa()
    with torch.no_grad():  # a target encoder unlike a fresh one
        for param in model.model.target_encoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_export_loads_as_the_x_encoder_and_in_transformers(tmp_path) -> None:
    model = _trained_model()
    folder = export_encoder(model, str(tmp_path / "encoder"))
    target = model.model.target_encoder
    pixels = torch.from_numpy(_image()).permute(2, 0, 1)[None]
    expected = target(pixels).tokens

    encoder = VisionEncoder(folder)  # the one config line: {model: folder}
    assert encoder.frozen
    assert torch.equal(encoder.image_mean, target.image_mean)
    assert torch.equal(encoder.image_std, target.image_std)
    assert torch.allclose(encoder(pixels).tokens, expected, atol=1e-6)

    hf_model = AutoModel.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    inputs = processor(Image.fromarray(_image()), return_tensors="pt")
    tokens = hf_model(**inputs).last_hidden_state[:, 1:]  # the CLS token first
    assert torch.allclose(tokens, expected, atol=1e-5)

    record = json.loads((Path(folder) / "jepa_lightning.json").read_text())
    assert record["exported"] == "target encoder"
    assert record["encoder"]["image_size"] == 32

    vl_jepa = VLJEPA(
        x_encoder=encoder,
        text_encoder=TextEncoder(TINY_BERT, tokenizer=TOKENIZER),
        embed_dim=16,
        predictor_lm=TINY_LLAMA,
    )
    assert torch.allclose(vl_jepa.model.x_tokens(pixels).tokens, expected, atol=1e-6)


def test_only_vision_encoders_are_exported(tmp_path) -> None:
    with pytest.raises(ValueError, match="VisionEncoder"):
        export_encoder(torch.nn.Linear(2, 2), str(tmp_path))


def _ijepa_tiny_args(root: Path) -> list[str]:
    encoder = "--model.init_args.encoder.init_args.model"
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.train_samples=256",
        "--data.init_args.val_samples=64",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        f"{encoder}.image_size=32",
        f"{encoder}.patch_size=8",
        f"{encoder}.hidden_size=32",
    ]


@pytest.mark.slow
def test_pretrain_export_then_vl_jepa_from_the_command_line(tmp_path, shapes_root) -> None:
    main(
        [
            "fit",
            "--config",
            IJEPA_CONFIG,
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=2",
            f"--trainer.default_root_dir={tmp_path / 'pretrain'}",
            *_ijepa_tiny_args(shapes_root),
        ]
    )
    run = tmp_path / "pretrain" / "ijepa" / "version_0"
    checkpoints = sorted((run / "checkpoints").glob("step*-knn*.ckpt"))
    assert checkpoints, "the probe-ranked checkpoint is written"
    last = run / "checkpoints" / "last.ckpt"
    folder = tmp_path / "encoder"
    main(["export-encoder", str(last), str(folder)])
    state = torch.load(last, weights_only=False)["state_dict"]
    prefix = "model.target_encoder.backbone."
    exported = AutoModel.from_pretrained(str(folder)).state_dict()
    for name, value in state.items():
        if name.startswith(prefix):
            assert torch.equal(exported[name.removeprefix(prefix)], value), name
    assert json.loads((folder / "jepa_lightning.json").read_text())["global_step"] == 3
    # VL-JEPA's default config with the exported encoder as its frozen X-encoder.
    main(
        [
            "fit",
            "--config",
            VL_CONFIG,
            f"--model.init_args.x_encoder.init_args.model={folder}",
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path / 'vl'}",
            f"--data.init_args.root={shapes_root}",
            "--data.init_args.train_samples=256",
            "--data.init_args.val_samples=64",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=16",
            "--data.init_args.num_workers=0",
        ]
    )
