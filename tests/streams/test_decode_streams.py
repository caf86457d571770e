"""decode-streams: captions in force over time, decodes needed, and the command's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_DECODER_LM
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_export import trained_like  # noqa: F401 (fixture)

from jepa_lightning.cli import main
from jepa_lightning.inference import PretrainedVLJEPA
from jepa_lightning.models.y_decoder import YDecoder
from jepa_lightning.streams.evaluate import (
    captions_in_force,
    decodes_needed,
    savings,
    window_embeddings,
)


def test_caption_in_force_is_the_segments() -> None:
    assert captions_in_force([0, 2, 3], ["a", "b", "c"], 5) == ["a", "a", "b", "c", "c"]


def test_window_embeddings_are_window_means() -> None:
    frames = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(window_embeddings(frames, 2), torch.tensor([[1.0, 0.0], [0, 1.0]]))
    assert window_embeddings(frames, 1) is frames


def test_decodes_needed_interpolates_on_the_monotone_curve() -> None:
    curve = [
        {"decodes": 2.0, "rougeL": 0.5},
        {"decodes": 4.0, "rougeL": 0.7},
        {"decodes": 8.0, "rougeL": 0.6},  # worse with more: the curve keeps 0.7
        {"decodes": 16.0, "rougeL": 0.9},
    ]
    assert decodes_needed(curve, 0.6) == pytest.approx(3.0)  # halfway from 2 to 4
    assert decodes_needed(curve, 0.8) == pytest.approx(8.0 + 0.5 * 8.0)  # from (8, 0.7) to 16
    assert decodes_needed(curve, 0.4) == 2.0  # the smallest budget already does
    assert decodes_needed(curve, 0.95) is None
    uniform = [{"decodes": 12.0, "rougeL": 0.6}, {"decodes": 64.0, "rougeL": 0.99}]
    rows = savings([{"decodes": 1.0, "rougeL": 0.3}, *uniform], curve)
    assert rows[0]["ratio"] == pytest.approx(1.0 / 2.0) and rows[0]["lower_bound"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(12.0 / 3.0) and rows[1]["lower_bound"] == 0.0
    assert "ratio" not in rows[2]


def test_command_writes_json_plot_and_tensorboard(trained_like, tmp_path, capsys) -> None:  # noqa: F811
    torch.manual_seed(0)
    decoder = YDecoder(TINY_DECODER_LM, embed_dim=16, prefix_length=2, max_length=4)
    model = PretrainedVLJEPA(trained_like.model, decoder=decoder)
    model.save_pretrained(tmp_path / "model")
    output = tmp_path / "out"
    main(
        [
            "decode-streams", str(tmp_path / "model"), "--output", str(output),
            "--num_streams", "2", "--num_frames", "40", "--min_scene", "8", "--max_scene", "16",
            "--budgets", "[1, 2, 5]", "--thresholds", "[0.001, 0.5]",
        ]
    )  # fmt: skip
    result = json.loads((output / "decode_streams.json").read_text())
    assert set(result["curves"]) == {"uniform", "cluster", "change"}
    assert [p["decodes"] for p in result["curves"]["uniform"]] == [1.0, 2.0, 5.0]
    for points in result["curves"].values():
        assert all(0 <= p["rougeL"] <= 1 and 0 <= p["exact_match"] <= 1 for p in points)
    assert 1 <= result["truth"]["decodes"] <= 5
    assert len(result["savings"]["cluster"]) == 3
    assert (output / "quality_vs_decodes.png").stat().st_size > 0
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    assert "decode_streams/cluster/rougeL" in events.Tags()["scalars"]
    assert "decode_streams/quality_vs_decodes" in events.Tags()["images"]
    assert "selective decoding saves" in capsys.readouterr().out
