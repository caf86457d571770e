"""The plugin's config, shrunk, through `jepa-lightning`: fit, cache, fit on the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from audio_testing import TINY_AUDIO, TINY_BERT, TINY_LLAMA
from jepa_lightning.cli import main
from jepa_lightning.data import read_shard_index
from jepa_lightning.encoders.registry import available
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "audio_tiny.yaml"


def tiny_config(tmp_path: Path) -> Path:
    """The plugin's config at test size: 8 kHz clips, tiny models, 4 steps, 64 + 16 clips."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    assert config["model"]["init_args"]["x_encoder"]["class_path"] == "audio"
    config["trainer"].update(
        max_steps=4,
        val_check_interval=2,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path / "logs"),
    )
    model = config["model"]["init_args"]
    model["x_encoder"]["init_args"] = TINY_AUDIO
    model["text_encoder"]["init_args"]["model"] = TINY_BERT
    model.update(embed_dim=16, predictor_lm=TINY_LLAMA, warmup_steps=2)
    config["data"]["init_args"].update(
        root=str(tmp_path / "tones"),
        train_samples=64,
        val_samples=16,
        sample_rate=8000,
        samples_per_shard=32,
        batch_size=8,
        num_workers=0,
        shuffle_buffer=16,
    )
    path = tmp_path / "audio.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def logged(version: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(version), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_the_plugin_is_installed_and_registered() -> None:
    entry = available()["audio"]
    assert entry.distribution == "jepa-lightning-audio"
    assert entry.load().__name__ == "AudioEncoder"


@pytest.mark.slow
def test_fit_by_registered_name_then_cache_and_fit_on_the_cache(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path)
    main(["fit", "--config", str(config)])
    version = tmp_path / "logs" / "jepa" / "version_0"
    assert (version / "checkpoints" / "last.ckpt").is_file()
    resolved = yaml.safe_load((version / "config.yaml").read_text())
    x_encoder = resolved["model"]["init_args"]["x_encoder"]
    assert x_encoder["class_path"] == "jepa_lightning_audio.AudioEncoder"
    events = logged(version)
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3]
    assert [e.step for e in events.Scalars("val/i2t/R@1")] == [1, 3]
    grids = events.Images("val/retrieval")  # spectrograms of the retrieved clips
    assert [grid.step for grid in grids] == [2, 4]
    assert (version / "00004" / "val_embeddings" / "sprite.png").is_file()

    # The frozen audio encoder's features, cached by the config's encoder (named "audio")...
    features = tmp_path / "features"
    for split in ("train", "val"):
        main(["data", "cache", str(config), str(tmp_path / "tones" / split), str(features / split),
              "--num_workers", "0", "--device", "cpu"])  # fmt: skip
    record = read_shard_index(features / "train").metadata["feature_cache"]
    assert record["num_tokens"] is None and record["dim"] == TINY_AUDIO["hidden_size"]
    # ...train the same model: the fingerprint matches; no pictures, so no retrieval grid.
    capsys.readouterr()
    main(["fit", "--config", str(config), "--data.init_args.train_shards", str(features / "train"),
          "--data.init_args.val_shards", str(features / "val")])  # fmt: skip
    cached = logged(tmp_path / "logs" / "jepa" / "version_1")
    assert [e.step for e in cached.Scalars("val/i2t/R@1")] == [1, 3]
    assert not cached.Tags()["images"]
    assert not (
        tmp_path / "logs" / "jepa" / "version_1" / "00004" / "val_embeddings" / "sprite.png"
    ).exists()
    # Other weights (another seed): the cache is refused, naming the key.
    with pytest.raises(ValueError, match="made by another X-encoder"):
        main(["fit", "--config", str(config), "--seed_everything", "1",
              "--data.init_args.train_shards", str(features / "train"),
              "--data.init_args.val_shards", str(features / "val")])  # fmt: skip
