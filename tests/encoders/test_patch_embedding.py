import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VIT
from torch import nn

from jepa_lightning.encoders import VisionEncoder
from jepa_lightning.encoders.patch_embedding import PatchLinear, use_patch_linear


def _pair(kernel: tuple[int, int], bias: bool = True) -> tuple[nn.Conv2d, nn.Module]:
    torch.manual_seed(0)
    convolution = nn.Conv2d(3, 16, kernel, stride=kernel, bias=bias)
    patched = nn.Sequential(nn.Conv2d(3, 16, kernel, stride=kernel, bias=bias))
    patched.load_state_dict({"0." + k: v for k, v in convolution.state_dict().items()})
    assert use_patch_linear(patched) == 1
    return convolution, patched


@pytest.mark.parametrize(
    ("kernel", "size", "bias"),
    [((8, 8), (32, 32), True), ((4, 8), (32, 40), True), ((8, 8), (35, 43), False)],
)
def test_equals_the_convolution_with_its_gradients(
    kernel: tuple[int, int], size: tuple[int, int], bias: bool
) -> None:
    convolution, patched = _pair(kernel, bias)
    images = torch.randn(2, 3, *size)
    expected_input, actual_input = images.clone().requires_grad_(), images.clone().requires_grad_()
    expected = convolution(expected_input)
    actual = patched(actual_input)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (actual * weights).sum().backward()
    torch.testing.assert_close(actual_input.grad, expected_input.grad)
    torch.testing.assert_close(patched[0].weight.grad, convolution.weight.grad)
    if bias:
        torch.testing.assert_close(patched[0].bias.grad, convolution.bias.grad)


def test_under_bf16_autocast_matches_the_convolution() -> None:
    convolution, patched = _pair((8, 8))
    images = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = convolution(images), patched(images)
    assert actual.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected.float(), atol=0.03, rtol=0.02)


def test_under_autocast_gives_the_autocast_product_and_float32_gradients() -> None:
    # The patches are cast before the gather (half the bytes to move): the product is still
    # the one autocast gives the float32 patches, and the gradient reaches float32 images.
    layer = _pair((8, 8))[1][0]
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    patches = images.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(32, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.linear(patches, layer.weight.reshape(16, -1), layer.bias)
        actual = layer(images)
    assert torch.equal(actual.permute(0, 2, 3, 1).reshape(32, -1), expected)
    actual.float().sum().backward()
    assert images.grad is not None and images.grad.dtype == torch.float32


def test_unbatched_input_goes_to_the_convolution() -> None:
    convolution, patched = _pair((8, 8))
    image = torch.randn(3, 32, 32)
    torch.testing.assert_close(patched(image), convolution(image))


def test_replaces_only_patchifying_convolutions_and_keeps_their_parameters() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4),
        nn.Conv2d(8, 8, 3, stride=1, padding=1),
        nn.Conv2d(8, 8, 2, stride=2, padding=1),
        nn.Sequential(nn.Conv2d(8, 4, 2, stride=2, bias=False)),
    )
    weights = {name: param for name, param in model.named_parameters()}
    keys = list(model.state_dict())
    assert use_patch_linear(model) == 2
    assert [type(m) for m in (model[0], model[1], model[2], model[3][0])] == [
        PatchLinear,
        nn.Conv2d,
        nn.Conv2d,
        PatchLinear,
    ]
    assert list(model.state_dict()) == keys
    for name, param in model.named_parameters():
        assert param is weights[name]
    assert use_patch_linear(model) == 0  # already replaced


def test_vision_encoder_uses_it_and_encodes_as_the_convolution_does() -> None:
    torch.manual_seed(0)
    encoder = VisionEncoder(TINY_VIT)
    assert any(isinstance(m, PatchLinear) for m in encoder.modules())
    assert not any(type(m) is nn.Conv2d for m in encoder.modules())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tokens = encoder.encode(images).tokens
    projection = encoder.backbone.embeddings.patch_embeddings.projection
    convolution = nn.Conv2d(3, 32, 8, stride=8)
    convolution.load_state_dict(projection.state_dict())
    encoder.backbone.embeddings.patch_embeddings.projection = convolution
    torch.testing.assert_close(tokens, encoder.encode(images).tokens)
