"""Architectures: parameter counts, key layouts, options and determinism."""

import pytest
import torch
from torch import nn

from sane.errors import ConfigError
from sane.zoo.architectures import ARCHITECTURES, ArchConfig, build_model, count_parameters

CASES = [
    # (config, input shape, parameters)
    (ArchConfig(name="cnn_s"), (2, 1, 28, 28), 2_464),
    (ArchConfig(name="cnn_s", in_channels=3), (2, 3, 28, 28), 2_864),
    (ArchConfig(name="cnn_s", dropout=0.5), (2, 1, 28, 28), 2_464),
    (ArchConfig(name="cnn_s_wide"), (2, 1, 28, 28), 8_950),
    (ArchConfig(name="cnn_s_deep"), (2, 1, 28, 28), 2_464 + 6 * 6 * 9 + 6),
    (ArchConfig(name="cnn_l", in_channels=3, input_size=32), (2, 3, 32, 32), 10_853),
    (ArchConfig(name="mlp", input_size=8, hidden=(16,)), (2, 1, 8, 8), 64 * 16 + 16 + 16 * 10 + 10),
    (ArchConfig(name="cnn1d", input_size=40), (2, 1, 40), 5_338),
    # stem 72 + 16, block 8→8 1,184, block 8→16 (with downsample) 3,680, fc 170
    (ArchConfig(name="resnet_s"), (2, 1, 28, 28), 5_122),
    (ArchConfig(name="resnet_s_deep"), (2, 1, 28, 28), 5_122 + 1_184 + 2 * 2_304 + 64),
    (ArchConfig(name="resnet18", in_channels=3, input_size=32), (1, 3, 32, 32), 11_173_962),
    (ArchConfig(name="resnet34", in_channels=3, input_size=32), (1, 3, 32, 32), 21_282_122),
    (ArchConfig(name="resnet50", in_channels=3, input_size=32), (1, 3, 32, 32), 23_520_842),
    (ArchConfig(name="resnet101", in_channels=3, input_size=32), (1, 3, 32, 32), 42_512_970),
    (ArchConfig(name="resnet18", in_channels=3, num_classes=100), (1, 3, 32, 32), 11_220_132),
]


@pytest.mark.parametrize(("config", "shape", "params"), CASES)
def test_parameter_counts_and_output_shape(config, shape, params):
    model = build_model(config, seed=0).eval()
    assert count_parameters(model) == params
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (shape[0], config.num_classes)


def test_every_registered_architecture_is_covered():
    assert {c.name for c, _, _ in CASES} == set(ARCHITECTURES)


def test_cnn_keys_follow_model_zoos_layout():
    plain = build_model(ArchConfig(name="cnn_s"))
    dropout = build_model(ArchConfig(name="cnn_s", dropout=0.5))
    large = build_model(ArchConfig(name="cnn_l", in_channels=3, input_size=32))

    def layers(m):
        return sorted({int(k.split(".")[1]) for k in m.state_dict()})

    assert layers(plain) == [0, 3, 6, 9, 11]
    assert layers(dropout) == [0, 4, 8, 11, 14]  # dropout modules shift the indices
    assert layers(large) == [0, 4, 8, 13, 16]


def test_resnet_uses_torchvision_keys():
    keys = build_model(ArchConfig(name="resnet18", in_channels=3)).state_dict().keys()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv2.weight",
                "layer2.0.downsample.0.weight", "layer4.1.bn2.num_batches_tracked", "fc.bias"):
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys


def test_bottleneck_follows_torchvision_v1_5():
    model = build_model(ArchConfig(name="resnet50", in_channels=3, input_size=32))
    keys = model.state_dict().keys()
    for key in ("layer1.0.conv3.weight", "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
                "layer4.2.bn3.bias", "fc.weight"):
        assert key in keys
    assert "layer1.1.downsample.0.weight" not in keys
    first = model.layer2[0]  # the stride sits on the 3×3 convolution (v1.5), not the 1×1
    assert (first.conv1.stride, first.conv2.stride, first.conv3.stride) == ((1, 1), (2, 2), (1, 1))
    assert first.conv1.kernel_size == (1, 1) and first.conv2.kernel_size == (3, 3)
    assert model.fc.in_features == 2048
    assert len(build_model(ArchConfig(name="resnet101", in_channels=3)).layer3) == 23


def test_bottleneck_resnet_permutations_keep_its_function():
    # The residual stream of each stage (conv3 outputs and the downsample) shares one
    # permutation; the two inner widths of every block have their own. Float64, since the
    # uniform init makes float32 activations too large to compare tightly.
    from sane.weights import apply_permutation, permutation_spec, random_permutation

    model = build_model(ArchConfig(name="resnet50", in_channels=3, input_size=32,
                                   init="kaiming_normal"), seed=0).double().eval()
    generator = torch.Generator().manual_seed(0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.normal_(generator=generator)
        bn.running_var.uniform_(0.5, 2, generator=generator)
    spec = permutation_spec(model)
    assert len(spec.sizes) == 1 + 4 + 2 * (3 + 4 + 6 + 3)  # stem, 4 streams, 2 per block
    assert spec.axes["layer1.0.conv3.weight"][0] == spec.axes["layer1.1.conv1.weight"][1]
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)  # 8×8: fast
    with torch.no_grad():
        expected = model(x)
        state = model.state_dict()
        model.load_state_dict(apply_permutation(state, spec, random_permutation(spec, generator)))
        torch.testing.assert_close(model(x), expected)


def test_initialization_follows_model_zoos():
    model = build_model(ArchConfig(name="cnn_s", init="uniform"), seed=3)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(0 <= w.min() and w.max() <= 1 for w in weights)  # U(0, 1) as in Model Zoos
    assert all(torch.all(b == 0.01) for b in biases)
    resnet = build_model(ArchConfig(name="resnet18", in_channels=3, init="kaiming_uniform"))
    assert torch.all(resnet.bn1.weight == 1) and torch.all(resnet.fc.bias == 0.01)


def test_seed_makes_initialization_reproducible_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ArchConfig(init="kaiming_normal"), seed=7).state_dict()
    after = torch.rand(1)
    b = build_model(ArchConfig(init="kaiming_normal"), seed=7).state_dict()
    c = build_model(ArchConfig(init="kaiming_normal"), seed=8).state_dict()
    assert torch.equal(before, after)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["module_list.0.weight"], c["module_list.0.weight"])


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "gelu"])
def test_activation_option(activation):
    model = build_model(ArchConfig(activation=activation))
    kinds = {type(m).__name__.lower() for m in model.modules()}
    assert activation in kinds


@pytest.mark.parametrize(
    ("change", "message"),
    [({"name": "vgg"}, r"name must be one of \[.*'cnn_s'.*\], got 'vgg'"),
     ({"activation": "swish"}, r"activation must be one of \[.*'relu'.*\], got 'swish'"),
     ({"init": "zeros"}, r"init must be one of \[.*'uniform'.*\], got 'zeros'"),
     ({"dropout": 1.0}, "dropout"),
     ({"num_classes": 0}, "num_classes"), ({"input_size": 8}, "input size too small"),
     ({"name": "resnet18", "dropout": 0.5}, "resnet18 has no dropout layers")],
)
def test_bad_config_raises(change, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ArchConfig(**change))


def test_config_dict_round_trip_and_unknown_keys():
    config = ArchConfig(name="mlp", hidden=(8, 4), dropout=0.5)
    assert ArchConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="architecture: unknown key 'depth'; known: activation"):
        ArchConfig.from_dict({"name": "cnn_s", "depth": 3})


def test_input_shape_of_2d_and_1d_architectures():
    from sane.zoo.architectures import input_shape

    assert input_shape(ArchConfig(name="cnn_s")) == (1, 28, 28)
    assert input_shape(ArchConfig(name="cnn1d", input_size=40)) == (1, 40)
    assert input_shape(ArchConfig(name="resnet18", in_channels=3, input_size=32)) == (3, 32, 32)
