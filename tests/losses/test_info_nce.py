import math

import pytest
import torch

from jepa_lightning.losses import InfoNCELoss


def brute_force_info_nce(pred: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE with explicit loops over the full similarity matrix."""
    n = pred.shape[0]
    p = pred / pred.norm(dim=1, keepdim=True)
    t = target / target.norm(dim=1, keepdim=True)
    sim = torch.empty(n, n, dtype=pred.dtype)
    for i in range(n):
        for j in range(n):
            sim[i, j] = scale * torch.dot(p[i], t[j])
    row_log_prob = torch.log_softmax(sim, dim=1)  # pred i -> all targets
    col_log_prob = torch.log_softmax(sim, dim=0)  # target j -> all preds
    loss_pred = -torch.stack([row_log_prob[i, i] for i in range(n)]).sum() / n
    loss_target = -torch.stack([col_log_prob[j, j] for j in range(n)]).sum() / n
    return (loss_pred + loss_target) / 2


def make_inputs(n: int = 6, d: int = 5, dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def test_matches_brute_force_float64() -> None:
    pred, target = make_inputs()
    loss_fn = InfoNCELoss(init_temperature=0.2)
    loss = loss_fn(pred, target)
    assert loss.dtype == torch.float64
    expected = brute_force_info_nce(pred, target, scale=float(loss_fn.scale().detach()))
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)


def test_gradients_match_brute_force() -> None:
    pred, target = make_inputs(n=5, d=4)
    pred.requires_grad_()
    target.requires_grad_()
    InfoNCELoss(init_temperature=0.5)(pred, target).backward()
    pred_ref = pred.detach().clone().requires_grad_()
    target_ref = target.detach().clone().requires_grad_()
    brute_force_info_nce(pred_ref, target_ref, scale=2.0).backward()
    assert pred.grad is not None and pred_ref.grad is not None
    assert target.grad is not None and target_ref.grad is not None
    assert torch.allclose(pred.grad, pred_ref.grad, atol=1e-6, rtol=0)
    assert torch.allclose(target.grad, target_ref.grad, atol=1e-6, rtol=0)


def test_symmetric_in_its_arguments() -> None:
    pred, target = make_inputs()
    loss_fn = InfoNCELoss()
    assert torch.allclose(loss_fn(pred, target), loss_fn(target, pred), atol=1e-12, rtol=0)


def test_invariant_to_input_norm() -> None:
    pred, target = make_inputs()
    loss_fn = InfoNCELoss()
    assert torch.allclose(loss_fn(pred, target), loss_fn(3.0 * pred, 0.5 * target), atol=1e-12)


def test_init_and_temperature() -> None:
    loss_fn = InfoNCELoss()
    assert isinstance(loss_fn.logit_scale, torch.nn.Parameter)
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert loss_fn.temperature == pytest.approx(0.07)
    frozen = InfoNCELoss(init_temperature=0.1, learnable_temperature=False)
    assert list(frozen.parameters()) == []
    assert "logit_scale" in frozen.state_dict()
    assert frozen.temperature == pytest.approx(0.1)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="init_temperature"):
        InfoNCELoss(init_temperature=0.0)
    with pytest.raises(ValueError, match="exceeds"):
        InfoNCELoss(init_temperature=0.001, max_logit_scale=100.0)
    with pytest.raises(ValueError, match="shape"):
        InfoNCELoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="shape"):
        InfoNCELoss()(torch.randn(4), torch.randn(4))


def test_temperature_clamp_value_and_gradient() -> None:
    pred, target = make_inputs()
    loss_fn = InfoNCELoss().double()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)  # exp(10) ~ 22026, capped at 100
    assert float(loss_fn.scale().detach()) == pytest.approx(100.0)
    assert loss_fn.temperature == pytest.approx(0.01)
    loss = loss_fn(pred, target)
    assert torch.allclose(loss, brute_force_info_nce(pred, target, scale=100.0), atol=1e-6)
    loss.backward()
    # Above the cap the clamp blocks the gradient: the parameter gets exactly zero.
    assert loss_fn.logit_scale.grad is not None
    assert loss_fn.logit_scale.grad.item() == 0.0

    # Exactly at the cap the gradient passes (torch.clamp is inclusive at the bound) ...
    loss_fn.logit_scale.grad = None
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(100.0))
    loss_fn(pred, target).backward()
    assert loss_fn.logit_scale.grad.item() != 0.0

    # ... and clamp_logit_scale_ brings an overshooting parameter back to the cap, CLIP-style.
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)
    loss_fn.clamp_logit_scale_()
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(100.0))


def test_logit_scale_gradient_below_cap() -> None:
    pred, target = make_inputs()
    loss_fn = InfoNCELoss().double()
    loss_fn(pred, target).backward()
    assert loss_fn.logit_scale.grad is not None
    assert loss_fn.logit_scale.grad.item() != 0.0


def test_float32_under_bfloat16_autocast() -> None:
    pred, target = make_inputs(n=8, d=16, dtype=torch.float32)
    loss_fn = InfoNCELoss()
    reference = loss_fn(pred, target)
    linear = torch.nn.Linear(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # The autocast region produces bf16 embeddings, as a model under bf16-mixed would.
        pred_bf16 = linear(pred)
        assert pred_bf16.dtype == torch.bfloat16
        loss = loss_fn(pred, target)
        loss_from_bf16 = loss_fn(pred_bf16, target.bfloat16())
    assert loss.dtype == torch.float32
    assert loss_from_bf16.dtype == torch.float32
    # Float32 inputs inside autocast: no bf16 matmul happened.
    assert torch.allclose(loss, reference, atol=1e-6, rtol=0)
    # bf16 inputs: the loss itself is still fp32, computed from the upcast inputs.
    expected = loss_fn(pred_bf16.float(), target.bfloat16().float())
    assert torch.allclose(loss_from_bf16, expected, atol=1e-6, rtol=0)
    loss_from_bf16.backward()
    assert linear.weight.grad is not None and linear.weight.grad.dtype == torch.float32


def test_perfect_alignment_gives_low_loss() -> None:
    x = torch.eye(8, dtype=torch.float64)
    loss_fn = InfoNCELoss(init_temperature=0.01)
    assert loss_fn(x, x).item() < 1e-10
