"""Generators: ATGAN's image-to-image G (paper 000, Table 1) and the perturbation
generator of paper 002 (Fig. 2, Table 1)."""

from __future__ import annotations

import torch
import torch.nn as nn

from robustgan.models.registry import register_model


class ResBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity (the residual block of Johnson et al.)."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


def conv(cin, cout, k, s, act):
    """Conv(f, k, s) + BN + activation; padding keeps size / s exactly for even sizes."""
    return [nn.Conv2d(cin, cout, k, s, padding=(k - 1) // 2 if k % 2 else (k - s) // 2), nn.BatchNorm2d(cout), act()]


def tconv(cin, cout, k, s, act):
    """TransConv(f, k, s) + BN + activation; doubles the size exactly (14 -> 28, 16 -> 32)."""
    if k % 2:  # odd kernel: padding (k-1)/2 plus output_padding s-1
        layer = nn.ConvTranspose2d(cin, cout, k, s, padding=(k - 1) // 2, output_padding=s - 1)
    else:  # even kernel (4, stride 2): padding 1, no output padding
        layer = nn.ConvTranspose2d(cin, cout, k, s, padding=(k - s) // 2)
    return [layer, nn.BatchNorm2d(cout), act()]


def _lrelu():
    return nn.LeakyReLU(0.2)


class ImageGenerator(nn.Module):
    """ATGAN's G: maps a (possibly adversarial) image to an image, output (tanh(h)+1)/2 so
    pixels lie in [0, 1] (paper 000, Section 3.3). Shape (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return (torch.tanh(self.body(x)) + 1) / 2


@register_model("image_generator")
def atgan_g_mnist(in_channels=1, **_):
    """Table 1, MNIST column. The last Conv has as many filters as the image has channels."""
    c = in_channels
    return ImageGenerator([
        *conv(c, 8, 3, 1, nn.ReLU), *conv(8, 16, 3, 2, nn.ReLU), *conv(16, 32, 3, 2, nn.ReLU),
        *(ResBlock(32) for _ in range(4)),
        *tconv(32, 16, 3, 2, nn.ReLU), *tconv(16, 8, 3, 2, nn.ReLU),
        nn.Conv2d(8, c, 3, 1, 1),
    ])


@register_model("image_generator")
def atgan_g_svhn(in_channels=3, **_):
    """Table 1, SVHN column."""
    c = in_channels
    return ImageGenerator([
        *conv(c, 64, 4, 2, _lrelu), *conv(64, 128, 4, 2, _lrelu),
        *tconv(128, 128, 4, 2, _lrelu), *tconv(128, 64, 4, 2, _lrelu),
        nn.Conv2d(64, c, 3, 1, 1),
    ])


@register_model("image_generator")
def atgan_g_cifar10(in_channels=3, **_):
    """Table 1, CIFAR-10 column."""
    c = in_channels
    return ImageGenerator([
        *conv(c, 128, 4, 2, _lrelu), *tconv(128, 128, 4, 2, _lrelu),
        nn.Conv2d(128, c, 3, 1, 1),
    ])


class PerturbationGenerator(nn.Module):
    """Paper 002, Fig. 2 / Table 1: CycleGAN-style ResNet generator. 7x7 s1, 5x5 s2, 5x5 s2,
    4 residual blocks (128 channels at width x1, 256 at x2), two 5x5 stride-2 up-convs, 7x7
    to ``out_channels``. The output eps * tanh(h) is a perturbation with |delta|_inf <= eps.
    Widths of the non-residual layers are not in the paper; we read CycleGAN's ratios
    (c/4, c/2, c with c the residual width). Input (N, in_channels, H, W) with H, W % 4 == 0."""

    def __init__(self, in_channels, out_channels, eps=16 / 255, width=1):
        super().__init__()
        c = 128 * width
        self.eps = eps
        self.body = nn.Sequential(
            *conv(in_channels, c // 4, 7, 1, nn.ReLU), *conv(c // 4, c // 2, 5, 2, nn.ReLU), *conv(c // 2, c, 5, 2, nn.ReLU),
            *(ResBlock(c) for _ in range(4)),
            *tconv(c, c // 2, 5, 2, nn.ReLU), *tconv(c // 2, c // 4, 5, 2, nn.ReLU),
            nn.Conv2d(c // 4, out_channels, 7, 1, 3),
        )

    def forward(self, inp):
        return self.eps * torch.tanh(self.body(inp))


@register_model("perturbation_generator")
def perturbation_g(in_channels=3, out_channels=None, eps=16 / 255, width=1, **_):
    return PerturbationGenerator(in_channels, out_channels or in_channels, eps, width)
