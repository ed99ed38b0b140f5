import pytest
import torch

from robustgan.errors import ConfigError
from robustgan.models import MODELS, ACDiscriminator, build
from robustgan.models.generators import ResBlock

SHAPES = [(1, 28), (3, 32)]
KNOWN_PARAMS = {"preact_resnet18": 11.17e6, "densenet40": 1.02e6, "cw_cnn": 0.312e6}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size", SHAPES)
def test_every_model_shapes_and_backward(name, channels, size):
    torch.manual_seed(0)
    model = build(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.rand(2, channels, size, size, requires_grad=True)
    out = model(x)
    kind = MODELS[name].kind
    if kind == "classifier":
        assert out.shape == (2, 7)
    else:
        assert out.shape == x.shape
    if kind == "image_generator":
        assert out.min() >= 0 and out.max() <= 1
    if kind == "perturbation_generator":
        assert out.abs().max() <= 16 / 255 + 1e-7
    out.float().pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,expected", sorted(KNOWN_PARAMS.items()))
def test_parameter_counts_near_known(name, expected):
    channels = 1 if name == "cw_cnn" else 3
    model = build(name, 10, channels, image_size=28 if channels == 1 else 32)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.03, count


def test_perturbation_generator_widths_and_inputs():
    g1 = build("perturbation_g", in_channels=6, out_channels=3, width=1)
    g2 = build("perturbation_g", in_channels=6, out_channels=3, width=2)
    def residual_width(g):
        return next(m for m in g.modules() if isinstance(m, ResBlock)).body[0].out_channels

    assert residual_width(g1) == 128 and residual_width(g2) == 256
    assert g1(torch.rand(2, 6, 32, 32)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("backbone", [n for n, e in sorted(MODELS.items()) if e.kind == "classifier"])
def test_ac_discriminator_heads(backbone):
    d = ACDiscriminator(build(backbone, 10, 3, image_size=32)).eval()
    x = torch.rand(3, 3, 32, 32)
    logits, realfake = d.both(x)
    assert logits.shape == (3, 10) and realfake.shape == (3,)
    assert torch.allclose(d(x), logits)
    assert d.backbone.first_activations(x).shape[:2] == (3, d.backbone.first_conv.out_channels)


def test_unknown_model_is_clear():
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'.*cw_cnn"):
        build("resnet9000")
