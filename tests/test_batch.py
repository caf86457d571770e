"""The typed batch: what Lightning's device transfer moves, and what it leaves alone."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing  # noqa: F401  # registers the shared-memory tensor reductions
from lightning.fabric.utilities.apply_func import move_data_to_device

from jepa_lightning.batch import BY_VALUE_BYTES, Batch
from jepa_lightning.encoders.base import EncoderOutput


def make_batch(x: object) -> Batch:
    return Batch(
        x=x,
        pair_ids=torch.arange(2),
        keys=["a", "b"],
        captions=["one", "two"],
        caption_ids=torch.ones(2, 3, dtype=torch.long),
        caption_mask=torch.ones(2, 3, dtype=torch.bool),
        meta=[{"labels": {"shape": "circle"}, "array": torch.zeros(1)}, {}],
        valid=torch.tensor([True, False]),
    )


def test_lightning_moves_every_tensor_field_and_leaves_the_samples_lists() -> None:
    batch = make_batch(torch.zeros(2, 3, 4, 4))
    moved = move_data_to_device(batch, torch.device("meta"))  # what Lightning calls
    assert isinstance(moved, Batch) and moved is not batch
    for name in ("x", "pair_ids", "caption_ids", "caption_mask", "valid"):
        assert getattr(moved, name).device.type == "meta", name
        assert getattr(batch, name).device.type == "cpu", name  # the original is unchanged
    assert moved.query_ids is None and moved.query_mask is None
    # Per-sample lists are not walked (nor copied): a tensor in a sample's json stays put.
    assert moved.meta is batch.meta and moved.meta[0]["array"].device.type == "cpu"
    assert moved.keys is batch.keys and moved.captions is batch.captions


def test_cached_tokens_move_with_their_padding_mask() -> None:
    tokens = EncoderOutput(torch.zeros(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    moved = make_batch(tokens).to("meta")
    assert moved.cached and isinstance(moved.x, EncoderOutput)
    assert moved.x.tokens.device.type == "meta" and moved.x.mask.device.type == "meta"


def test_small_tensors_leave_a_worker_by_value_and_large_ones_shared() -> None:
    """A loader worker pickles its batch with the ForkingPickler: a shared tensor costs the
    receiver a file-descriptor handshake each, so the small per-row tensors go by value."""
    big = torch.arange(BY_VALUE_BYTES + 8, dtype=torch.uint8).reshape(2, -1)
    batch = make_batch(big)
    batch.query_ids = torch.zeros(2, 1, dtype=torch.bfloat16)  # NumPy has no bfloat16
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(batch)
    received = pickle.loads(buffer.getvalue())
    assert received.x.is_shared() and torch.equal(received.x, big)
    for name in ("pair_ids", "caption_ids", "caption_mask", "valid"):
        value = getattr(received, name)
        assert not value.is_shared(), name
        assert value.dtype == getattr(batch, name).dtype
        assert torch.equal(value, getattr(batch, name)), name
    assert received.query_ids.is_shared() and received.query_ids.dtype == torch.bfloat16
    assert received.meta[0]["labels"] == {"shape": "circle"} and received.meta[1] == {}
    assert received.keys == batch.keys and received.captions == batch.captions
