from __future__ import annotations

import pytest
import torch
from callback_fit import events, fit

from jepa_lightning.callbacks import TensorBoardImages
from jepa_lightning.callbacks.tensorboard_images import HIT_COLOUR, MISS_COLOUR, retrieval_grid


def test_writes_projector_and_retrieval_grid(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    callback = TensorBoardImages(max_samples=20, num_queries=3, top_k=5, tile_size=16)
    _, log_dir = fit(tiny_model_kwargs, shapes_root, tmp_path, [callback])
    accumulator = events(log_dir)
    grids = accumulator.Images("val/retrieval")
    assert [image.step for image in grids] == [2, 4]  # not in the sanity check
    assert grids[0].height == 3 * (12 + 16 + 2 * 2)  # 3 rows: caption line + framed tile
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert config.count('tensor_name: "val_embeddings') == 2  # one per validation
    for step in ("00002", "00004"):
        folder = log_dir / step / "val_embeddings"
        tensors = (folder / "tensors.tsv").read_text().splitlines()
        metadata = (folder / "metadata.tsv").read_text().splitlines()
        assert len(tensors) == 40 and len(tensors[0].split("\t")) == 16  # 20 ŝ + 20 s, D = 16
        assert metadata[0] == "caption\tmodality" and len(metadata) == 41
        assert metadata[1].endswith("\timage") and metadata[-1].endswith("\ttext")
        assert (folder / "sprite.png").is_file()


def test_nothing_without_tensorboard(tiny_model_kwargs, shapes_root, tmp_path) -> None:
    fit(tiny_model_kwargs, shapes_root, tmp_path, [TensorBoardImages(max_samples=8)], logger=False)
    assert not list(tmp_path.rglob("projector_config.pbtxt"))


def test_retrieval_grid_marks_hits() -> None:
    images = torch.full((2, 3, 3, 8, 8), 128, dtype=torch.uint8)
    hits = torch.tensor([[True, False, False], [False, False, True]])
    grid = retrieval_grid(["a red circle", "a blue square"], images, hits, tile_size=8)
    border, cell, text = 2, 12, 12
    assert grid.shape == (3, 2 * (text + cell), max(3 * cell, 6 * 13 + 4))
    for q in range(2):
        for j in range(3):
            corner = grid[:, q * (text + cell) + text, j * cell].tolist()
            assert tuple(corner) == (HIT_COLOUR if hits[q, j] else MISS_COLOUR)
            centre = grid[:, q * (text + cell) + text + border + 4, j * cell + border + 4]
            assert centre.tolist() == [128, 128, 128]


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="top_k"):
        TensorBoardImages(top_k=0)
