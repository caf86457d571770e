import pytest
import torch

from jepa_lightning.losses import MaskedTokenInfoNCELoss
from jepa_lightning.losses.masked_token_info_nce import sample_negative_columns


def brute_force_masked_token_info_nce(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop over every valid query; candidates are its positive plus the valid negatives.

    With ``columns`` (flat token indices), the negatives are restricted to those columns.
    """
    b, m, _ = pred.shape
    q = pred / pred.norm(dim=-1, keepdim=True)
    k = target / target.norm(dim=-1, keepdim=True)
    flat_k = k.reshape(b * m, -1)
    flat_valid = valid.reshape(-1)
    allowed = set(range(b * m)) if columns is None else {int(c) for c in columns}
    losses = []
    for i in range(b):
        for j in range(m):
            if not valid[i, j]:
                continue
            own = i * m + j
            negatives = [c for c in range(b * m) if c != own and flat_valid[c] and c in allowed]
            candidates = [own, *negatives]
            logits = torch.stack([torch.dot(q[i, j], flat_k[c]) for c in candidates]) / temperature
            losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def make_inputs(b: int = 3, m: int = 4, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    target = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    return pred, target


def test_matches_brute_force_all_valid() -> None:
    pred, target = make_inputs()
    loss = MaskedTokenInfoNCELoss(temperature=0.1)(pred, target)
    valid = torch.ones(3, 4, dtype=torch.bool)
    expected = brute_force_masked_token_info_nce(pred, target, valid, temperature=0.1)
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)


def test_matches_brute_force_with_valid_mask() -> None:
    pred, target = make_inputs()
    valid = torch.tensor(
        [[True, True, False, False], [True, True, True, True], [True, False, True, False]]
    )
    pred.requires_grad_()
    target.requires_grad_()
    loss = MaskedTokenInfoNCELoss(temperature=0.2)(pred, target, valid)
    pred_ref = pred.detach().clone().requires_grad_()
    target_ref = target.detach().clone().requires_grad_()
    expected = brute_force_masked_token_info_nce(pred_ref, target_ref, valid, temperature=0.2)
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)
    loss.backward()
    expected.backward()
    assert pred.grad is not None and pred_ref.grad is not None
    assert target.grad is not None and target_ref.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert torch.allclose(pred.grad, pred_ref.grad, atol=1e-6, rtol=0)
    assert torch.allclose(target.grad, target_ref.grad, atol=1e-6, rtol=0)
    # Padded positions get no gradient at all (neither query nor negative).
    assert (pred.grad[~valid] == 0).all()
    assert (target.grad[~valid] == 0).all()


def test_padding_content_is_irrelevant() -> None:
    pred, target = make_inputs()
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[0, 3] = False
    valid[2, 0] = False
    loss_fn = MaskedTokenInfoNCELoss()
    pred2, target2 = pred.clone(), target.clone()
    pred2[~valid] = 100.0
    target2[~valid] = -7.0
    assert torch.allclose(loss_fn(pred, target, valid), loss_fn(pred2, target2, valid))


def test_no_valid_tokens_gives_zero_with_graph() -> None:
    pred, target = make_inputs()
    pred.requires_grad_()
    loss = MaskedTokenInfoNCELoss()(pred, target, torch.zeros(3, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and (pred.grad == 0).all()


def test_float32_under_bfloat16_autocast() -> None:
    pred, target = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = MaskedTokenInfoNCELoss()(pred.bfloat16(), target.bfloat16())
    assert loss.dtype == torch.float32


def test_max_negatives_at_least_pool_equals_full_loss() -> None:
    pred, target = make_inputs()
    full = MaskedTokenInfoNCELoss()(pred, target)
    capped = MaskedTokenInfoNCELoss(max_negatives=12)(pred, target)
    assert torch.allclose(full, capped, atol=1e-12, rtol=0)


def test_max_negatives_matches_brute_force_on_drawn_columns() -> None:
    pred, target = make_inputs(b=4, m=5)
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[1, 4] = False
    loss_fn = MaskedTokenInfoNCELoss(temperature=0.1, max_negatives=7)
    loss = loss_fn(pred, target, valid, generator=torch.Generator().manual_seed(3))
    # Replay the draw the loss made: same generator state, same candidate pool.
    columns = sample_negative_columns(
        valid.reshape(-1).nonzero().squeeze(1), 7, torch.Generator().manual_seed(3)
    )
    expected = brute_force_masked_token_info_nce(pred, target, valid, 0.1, columns=columns)
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)


def test_max_negatives_deterministic_under_generator() -> None:
    pred, target = make_inputs(b=4, m=5)
    loss_fn = MaskedTokenInfoNCELoss(max_negatives=5)
    a = loss_fn(pred, target, generator=torch.Generator().manual_seed(0))
    b = loss_fn(pred, target, generator=torch.Generator().manual_seed(0))
    c = loss_fn(pred, target, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        MaskedTokenInfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="max_negatives"):
        MaskedTokenInfoNCELoss(max_negatives=0)
    loss_fn = MaskedTokenInfoNCELoss()
    with pytest.raises(ValueError, match="shape"):
        loss_fn(torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="valid"):
        loss_fn(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
