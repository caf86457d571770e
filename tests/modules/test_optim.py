import torch
from torch import nn

from jepa_lightning.modules.optim import build_optimizer, parameter_groups


def groups_of(module: nn.Module) -> list[dict]:
    return parameter_groups(module, {})


def train(module: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for step in range(steps):
        module(torch.full((2, 4), float(step + 1))).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_default_adamw_is_fused_and_steps_as_the_per_parameter_loop() -> None:
    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    loop_model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    loop_model.load_state_dict(fused_model.state_dict())
    fused, _ = build_optimizer(groups_of(fused_model), total_steps=10, warmup_steps=0)
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"]
    loop = torch.optim.AdamW(groups_of(loop_model), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98))
    for group in loop.param_groups:
        group["lr"] = 1e-3  # the warmup-free schedule's first value
    train(fused_model, fused, steps=1)
    train(loop_model, loop, steps=1)
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


class AdamWWithoutFusedKernel(torch.optim.AdamW):
    """AdamW as torch before 2.4 on the CPU: fused=True is refused."""

    def __init__(self, *args, fused=None, **kwargs) -> None:
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on supported devices")
        super().__init__(*args, **kwargs)


def test_default_adamw_falls_back_where_no_fused_kernel_exists(monkeypatch) -> None:
    monkeypatch.setattr(torch.optim, "AdamW", AdamWWithoutFusedKernel)
    module = nn.Linear(4, 3)
    optimizer, _ = build_optimizer(groups_of(module), total_steps=10)
    assert isinstance(optimizer, AdamWWithoutFusedKernel) and not optimizer.defaults["fused"]
    assert optimizer.defaults["betas"] == (0.9, 0.98)
