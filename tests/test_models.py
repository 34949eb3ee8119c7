"""seer.models.CenterTapConv2d: on 1 x 1 maps the center-tap path gives nn.Conv2d's output and
gradients (float64, every case where center_tap_on_1x1 applies it), other inputs take
nn.Conv2d's own path, and the timm trunk keeps its parameters and state-dict keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seer.models import CenterTapConv2d, build_backbone, center_tap_on_1x1

# (in, out, kernel, stride, padding, dilation, groups, bias): 'same'-padded odd kernels.
APPLIES = [
    (16, 16, 3, 1, 1, 1, 2, False),  # a RegNet block's grouped 3x3
    (24, 16, 3, 2, 1, 1, 8, True),  # a stage's strided first conv
    (5, 7, 5, 1, 2, 1, 1, True),  # odd channel counts, 5x5
    (6, 6, 3, 1, 2, 2, 3, False),  # dilated
]
# Convolutions whose padding does not keep 1 x 1 at 1 x 1, even kernels, 1x1 kernels.
LEFT_ALONE = [
    nn.Conv2d(4, 4, 3, padding=0),
    nn.Conv2d(4, 4, 2, padding=1),
    nn.Conv2d(4, 4, 1),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(4, 4, 3, padding="same"),
]


def _pair(args):
    torch.manual_seed(0)
    cin, cout, k, s, p, d, g, bias = args
    plain = nn.Conv2d(cin, cout, k, s, p, d, g, bias).double()
    fast = center_tap_on_1x1(nn.Sequential(nn.Conv2d(cin, cout, k, s, p, d, g, bias).double()))[0]
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("args", APPLIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_center_tap_matches_conv2d_on_1x1_maps(args, channels_last):
    plain, fast = _pair(args)
    assert type(fast) is CenterTapConv2d
    x = torch.randn(9, args[0], 1, 1, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for conv in (plain, fast):
        xi = x.detach().requires_grad_()
        y = conv(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in conv.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [2, 3, 8])
def test_center_tap_takes_conv2d_path_on_larger_maps(size):
    plain, fast = _pair(APPLIES[1])
    x = torch.randn(3, 24, size, size, dtype=torch.float64)
    torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("conv", LEFT_ALONE, ids=lambda c: repr(c))
def test_center_tap_left_alone(conv):
    assert type(center_tap_on_1x1(nn.Sequential(conv))[0]) is nn.Conv2d


def test_trunk_keeps_its_state_dict():
    import timm

    trunk = build_backbone("regnetx_002", downsample="avg")
    plain = timm.create_model("regnetx_002", num_classes=0, downsample="avg")
    assert list(trunk.state_dict()) == list(plain.state_dict())
    swapped = [m for m in trunk.modules() if type(m) is CenterTapConv2d]
    assert swapped and all(m.kernel_size == (3, 3) for m in swapped)
    plain.load_state_dict(trunk.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(trunk.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-5)
