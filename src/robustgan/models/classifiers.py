"""Classifier backbones. Each takes pixels in [0, 1] (normalisation, if any, is its first
layer) and exposes ``features(x) -> (N, num_features)``, ``fc`` and ``first_conv``, so the
AC discriminator can add a head and the perceptual loss can read the first conv layer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustgan.models.registry import register_model


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _normalizer(normalize) -> nn.Module:
    return Normalize(*normalize) if normalize is not None else nn.Identity()


class Classifier(nn.Module):
    """Base: ``forward(x) = fc(features(x))``; ``first_activations(x)`` for eq. 4."""

    num_features: int
    fc: nn.Linear

    @property
    def first_conv(self) -> nn.Conv2d:
        """The first convolutional layer (a property, not a second registration of the
        module, so the state dict has no aliased tensors)."""
        return next(m for m in self.modules() if isinstance(m, nn.Conv2d))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def first_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the first convolutional layer (pre-nonlinearity), (N, C1, H', W')."""
        return self.first_conv(self.normalize(x))


# ------------------------------------------------------------------ Carlini-Wagner CNN
class CWCNN(Classifier):
    """The MNIST CNN of Carlini & Wagner (2017): conv32-conv32-pool-conv64-conv64-pool-
    fc200-fc200-fc(k), ReLU, dropout 0.5 after the first fc. ~312k parameters on 28x28."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28, normalize=None, dropout=0.5):
        super().__init__()
        self.normalize = _normalizer(normalize)
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 200), nn.ReLU(), nn.Dropout(dropout),
                                   nn.Linear(200, 200), nn.ReLU())
        self.num_features = 200
        self.fc = nn.Linear(200, num_classes)

    def features(self, x):
        return self.dense(self.convs(self.normalize(x)))


@register_model("classifier")
def cw_cnn(num_classes=10, in_channels=1, image_size=28, normalize=None, dropout=0.5, **_):
    return CWCNN(num_classes, in_channels, image_size, normalize, dropout)


# ------------------------------------------------------------------ DenseNet-40 (k=12)
class DenseLayer(nn.Module):
    def __init__(self, channels, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class Transition(nn.Sequential):
    def __init__(self, channels):
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNet(Classifier):
    """DenseNet (Huang et al. 2017), CIFAR variant without bottleneck/compression:
    depth 40, growth 12 -> 3 dense blocks of 12 layers, 16 stem channels; ~1.0M params."""

    def __init__(self, num_classes=10, in_channels=3, depth=40, growth=12, normalize=None):
        super().__init__()
        layers_per_block = (depth - 4) // 3
        self.normalize = _normalizer(normalize)
        channels = 16  # stem width of the non-BC DenseNet
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for b in range(3):
            for _ in range(layers_per_block):
                blocks.append(DenseLayer(channels, growth))
                channels += growth
            if b < 2:
                blocks.append(Transition(channels))
        blocks += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*blocks)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)

    def features(self, x):
        return self.body(self.normalize(x))


@register_model("classifier")
def densenet40(num_classes=10, in_channels=3, normalize=None, **_):
    return DenseNet(num_classes, in_channels, 40, 12, normalize)


# ------------------------------------------------------------------ PreAct ResNet-18
class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(Classifier):
    """Pre-activation ResNet-18 (He et al. 2016) with the CIFAR stem (3x3 conv, no
    max-pool); ~11.2M parameters."""

    def __init__(self, num_classes=10, in_channels=3, blocks=(2, 2, 2, 2), normalize=None):
        super().__init__()
        self.normalize = _normalizer(normalize)
        layers, cin = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)], 64
        for i, n in enumerate(blocks):
            cout = 64 * 2 ** i
            for j in range(n):
                layers.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        return self.body(self.normalize(x))


@register_model("classifier")
def preact_resnet18(num_classes=10, in_channels=3, normalize=None, **_):
    return PreActResNet(num_classes, in_channels, (2, 2, 2, 2), normalize)


# ------------------------------------------------------------------ shallow VGG (paper 002)
def _conv_bn_relu(cin, cout, dropout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(dropout)]


class ShallowVGG(Classifier):
    """Paper 002, Table 1 (discriminator column): [3x3]x2, pool, [3x3]x2, pool, [3x3]x3,
    pool, [3x3]x3, pool, flatten (1024 on 32x32), fc(k). BN + ReLU on every conv, dropout
    0.3 on the first two conv layers and 0.4 on the rest. The table gives no widths; we
    read 64-128-256-256 (256 x 2 x 2 = 1024 matches the flatten size). The last pool is
    adaptive to 2x2, identical to a stride-2 max-pool on 32x32 inputs and defined on 28x28."""

    def __init__(self, num_classes=10, in_channels=3, widths=(64, 128, 256, 256), normalize=None):
        super().__init__()
        self.normalize = _normalizer(normalize)
        plan, layers, cin, index = ((widths[0], 2), (widths[1], 2), (widths[2], 3), (widths[3], 3)), [], in_channels, 0
        for stage, (width, repeats) in enumerate(plan):
            for _ in range(repeats):
                layers += _conv_bn_relu(cin, width, 0.3 if index < 2 else 0.4)
                cin, index = width, index + 1
            layers.append(nn.MaxPool2d(2) if stage < 3 else nn.AdaptiveMaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.num_features = cin * 4
        self.fc = nn.Linear(self.num_features, num_classes)

    def features(self, x):
        return self.body(self.normalize(x))


@register_model("classifier")
def shallow_vgg(num_classes=10, in_channels=3, normalize=None, **_):
    return ShallowVGG(num_classes, in_channels, normalize=normalize)
