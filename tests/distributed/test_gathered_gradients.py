"""DDP gradients with gathered negatives equal the gradients of the global-batch loss.

Two CPU processes (gloo) each take their part of a global batch, compute the loss against
negatives gathered from both ranks, and backpropagate through DDP (which averages gradients).
The parent computes the same loss on the whole batch in one process; the gradients of every
parameter, the learnable temperature included, must agree.

All scenarios run in one pair of spawned processes (startup dominates the cost). The parent
polls the children with a deadline and kills them if they hang, so the suite cannot hang.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from spawn import run_on_ranks
from torch import nn

import jepa_lightning.distributed as jl_dist
from jepa_lightning.losses import InfoNCELoss, MaskedTokenInfoNCELoss

WORLD_SIZE = 2
TIMEOUT_S = 180.0
TOLERANCE = 1e-5
IN_VISION, IN_TEXT, EMBED = 6, 5, 4


class TwoTowers(nn.Module):
    """A linear "predictor" and a linear "text encoder" feeding a loss."""

    def __init__(self, loss: nn.Module, freeze_text: bool = False) -> None:
        super().__init__()
        self.predictor = nn.Linear(IN_VISION, EMBED)
        self.text_encoder = nn.Linear(IN_TEXT, EMBED)
        self.text_encoder.requires_grad_(not freeze_text)
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None = None):
        pred, target = self.predictor(x), self.text_encoder(y)
        if valid is None:
            return self.loss(pred, target)
        return self.loss(pred, target, valid)


# name -> (loss kind, rows of the global batch held by each rank, force reduce-scatter,
#          frozen text tower)
SCENARIOS: dict[str, tuple[str, tuple[int, int], bool, bool]] = {
    "info_nce_even": ("info_nce", (4, 4), False, False),
    "info_nce_uneven": ("info_nce", (4, 3), False, False),
    "info_nce_even_reduce_scatter": ("info_nce", (4, 4), True, False),
    "info_nce_uneven_reduce_scatter": ("info_nce", (3, 5), True, False),
    "masked_tokens": ("tokens", (3, 3), False, False),
    "masked_tokens_uneven": ("tokens", (2, 4), False, False),
    "masked_tokens_frozen_target": ("tokens", (3, 3), False, True),
}


def build_model(name: str) -> TwoTowers:
    kind, _, _, frozen = SCENARIOS[name]
    torch.manual_seed(1234)  # same initial weights everywhere
    loss: nn.Module = (
        InfoNCELoss(init_temperature=0.2)
        if kind == "info_nce"
        else (MaskedTokenInfoNCELoss(temperature=0.2))
    )
    return TwoTowers(loss, freeze_text=frozen)


def make_batch(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    kind, splits, _, _ = SCENARIOS[name]
    g = torch.Generator().manual_seed(99)
    n = sum(splits)
    if kind == "info_nce":
        return torch.randn(n, IN_VISION, generator=g), torch.randn(n, IN_TEXT, generator=g), None
    tokens = 3
    x = torch.randn(n, tokens, IN_VISION, generator=g)
    y = torch.randn(n, tokens, IN_TEXT, generator=g)
    valid = torch.rand(n, tokens, generator=g) > 0.35
    valid[0] = True  # valid counts differ between the ranks' halves
    return x, y, valid


def rank_slice(name: str, rank: int) -> slice:
    splits = SCENARIOS[name][1]
    start = sum(splits[:rank])
    return slice(start, start + splits[rank])


def collect(model: nn.Module, loss: torch.Tensor) -> dict[str, Any]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach().clone(), "grads": grads}


def _run_rank(rank: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    default_use_reduce_scatter = jl_dist._use_reduce_scatter
    for name, (_, _, reduce_scatter, _) in SCENARIOS.items():
        jl_dist._use_reduce_scatter = (
            (lambda group, device: True) if reduce_scatter else default_use_reduce_scatter
        )
        model = build_model(name)
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y, valid = make_batch(name)
        part = rank_slice(name, rank)
        loss = ddp(x[part], y[part], None if valid is None else valid[part])
        loss.backward()
        results[name] = collect(model, loss)
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_on_ranks(_run_rank, tmp_path_factory.mktemp("ddp"), WORLD_SIZE, TIMEOUT_S)


def reference(name: str) -> dict[str, Any]:
    """The same loss on the whole global batch, in one process."""
    model = build_model(name)
    x, y, valid = make_batch(name)
    loss = model(x, y, valid)
    loss.backward()
    return collect(model, loss)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_gradients_match_global_batch(name: str, rank_results: list[dict[str, Any]]) -> None:
    expected = reference(name)
    kind, _, _, frozen = SCENARIOS[name]
    names = set(expected["grads"])
    assert ("loss.logit_scale" in names) == (kind == "info_nce")
    assert any(n.startswith("text_encoder.") for n in names) == (not frozen)
    for rank, results in enumerate(rank_results):
        got = results[name]
        assert set(got["grads"]) == names, f"rank {rank}"
        for param, grad in expected["grads"].items():
            diff = (got["grads"][param] - grad).abs().max().item()
            assert diff <= TOLERANCE, f"rank {rank} {param}: max abs diff {diff:.3g}"
    # Each rank's value is its share of the global loss: they average to it.
    mean_loss = torch.stack([r[name]["loss"] for r in rank_results]).mean()
    assert torch.allclose(mean_loss, expected["loss"], atol=TOLERANCE, rtol=0)


def test_not_distributed_is_identity() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert jl_dist.rank_and_world_size() == (0, 1)
    assert jl_dist.gather_with_grad(x) is x
    assert jl_dist.gather_sizes(x) == [3]


def test_reference_is_not_trivially_equal_to_local_loss() -> None:
    # Guard against a vacuous comparison: a rank's local-only loss (no gathered negatives)
    # gives different gradients than the global batch.
    name = "info_nce_even"
    expected = reference(name)
    model = build_model(name)
    x, y, _ = make_batch(name)
    model(x[rank_slice(name, 0)], y[rank_slice(name, 0)]).backward()
    local = collect(model, torch.zeros(()))
    diff = max((local["grads"][n] - g).abs().max().item() for n, g in expected["grads"].items())
    assert diff > 1e-3
