"""Permutation specs from the traced graph: function invariance of random permutations for every
zoo architecture and odd custom models, spec structure, exact application, bad graphs and input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sane.errors import ConfigError, FormatError
from sane.weights import (
    PermutationSpec,
    apply_permutation,
    permutation_spec,
    random_permutation,
)
from sane.weights.permutations import (
    PermutedState,
    block_index,
    compose,
    identity_permutation,
    invert,
)
from sane.zoo.architectures import ArchConfig, build_model


class OddDropout(nn.Module):
    """Dropout before the first layer, between conv and batch-norm, inside a residual branch,
    after flatten and after the last layer; functional ops mixed with modules."""

    def __init__(self) -> None:
        super().__init__()
        self.drop_in = nn.Dropout(0.3)
        self.conv = nn.Conv2d(3, 6, 3)
        self.drop2d = nn.Dropout2d(0.2)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(6 * 2 * 2, 7), nn.GELU(), nn.Dropout())
        self.head = nn.Linear(7, 3)
        self.drop_out = nn.Dropout(0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.drop2d(self.conv(self.drop_in(x)))))
        h = h + F.dropout(torch.tanh(self.conv2(h)), 0.2, self.training)
        h = torch.flatten(F.max_pool2d(h, 2), 1)
        return self.drop_out(self.head(self.fc(h)))


ZOO_MODELS = {
    "cnn_s": (ArchConfig(init="kaiming_normal"), (1, 28, 28)),
    "cnn_s_dropout": (ArchConfig(dropout=0.5, init="kaiming_normal"), (1, 28, 28)),
    "cnn_s_wide": (ArchConfig(name="cnn_s_wide", init="kaiming_normal"), (1, 28, 28)),
    "cnn_l": (ArchConfig(name="cnn_l", activation="relu", in_channels=3, input_size=32,
                         init="kaiming_normal"), (3, 32, 32)),
    "mlp": (ArchConfig(name="mlp", activation="gelu", dropout=0.2, init="kaiming_normal"),
            (1, 28, 28)),
    "cnn1d": (ArchConfig(name="cnn1d", activation="relu", input_size=40, init="kaiming_normal"),
              (1, 40)),
    "resnet18": (ArchConfig(name="resnet18", activation="relu", in_channels=3, input_size=32,
                            init="kaiming_normal"), (3, 16, 16)),
    "resnet34": (ArchConfig(name="resnet34", activation="relu", in_channels=3, input_size=32,
                            init="kaiming_normal"), (3, 16, 16)),
}


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every batch-norm non-trivial affine parameters and running statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=generator))
                m.bias.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def outputs(model: nn.Module, state_dict: dict, x: torch.Tensor) -> torch.Tensor:
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return model.eval()(x)


def check_invariance(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> None:
    """A random permutation keeps the outputs; undoing it on one tensor breaks them."""
    generator = torch.Generator().manual_seed(seed)
    randomize_batchnorm(model, generator)
    spec = permutation_spec(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    assert list(spec.axes) == list(original)  # every key, in state-dict order
    perms = {name: p if not torch.equal(p, torch.arange(len(p))) else p.flip(0)
             for name, p in random_permutation(spec, generator).items()}  # none is the identity
    permuted = apply_permutation(original, spec, perms)
    for key, names in spec.axes.items():  # every permuted tensor that is not constant moves
        if any(names) and not bool((original[key] == original[key].flatten()[0]).all()):
            assert not torch.equal(permuted[key], original[key]), key

    x = torch.randn(2, *input_shape, generator=generator)
    expected = outputs(model, original, x)
    got = outputs(model, permuted, x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)

    first = next(k for k, names in spec.axes.items() if names and names[0] is not None)
    broken = outputs(model, {**permuted, first: original[first]}, x)
    assert not torch.allclose(broken, expected, rtol=1e-2, atol=1e-2 * scale)


@pytest.mark.parametrize("name", [n for n in ZOO_MODELS if not n.startswith("resnet")])
def test_zoo_architectures_are_invariant_under_random_permutations(name: str) -> None:
    config, input_shape = ZOO_MODELS[name]
    check_invariance(build_model(config, seed=1), input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnets_are_invariant_under_random_permutations(name: str) -> None:
    config, input_shape = ZOO_MODELS[name]
    check_invariance(build_model(config, seed=1), input_shape)


def test_custom_model_with_dropout_everywhere_is_invariant() -> None:
    torch.manual_seed(0)
    model = OddDropout()
    check_invariance(model, (3, 6, 6))
    spec = permutation_spec(model)
    # conv and conv2 share the residual stream; fc's input is 6 blocks of 2·2 entries
    assert spec.sizes == {"conv": 6, "fc.1": 7}
    assert spec.axes["conv2.weight"] == ("conv", "conv", None, None)
    assert spec.axes["bn.running_var"] == ("conv",)
    assert spec.axes["fc.1.weight"] == ("fc.1", "conv")
    assert spec.axes["head.weight"] == (None, "fc.1")
    assert spec.axes["conv.weight"][1] is None and spec.axes["head.bias"] == (None,)


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_sequential_specs_follow_the_modules_not_fixed_indices(dropout: float) -> None:
    # Model Zoos' hard-coded CNN-s spec (module_list.0/3/6/9/11) only fits dropout 0
    model = build_model(ArchConfig(dropout=dropout), seed=0)
    layers = layer_names(model)
    spec = permutation_spec(model)
    assert list(spec.sizes) == layers[:-1]  # every hidden layer's output, the last one not
    for previous, layer in zip([None, *layers[:-1]], layers):
        output = None if layer == layers[-1] else layer
        assert spec.axes[f"{layer}.weight"][:2] == (output, previous)
        assert spec.axes[f"{layer}.bias"] == (output,)
    assert set(spec.axes) == set(model.state_dict())


def test_dropout_does_not_change_the_structure_of_the_spec() -> None:
    def structure(spec: PermutationSpec, state_dict: dict) -> list:
        index = {name: i for i, name in enumerate(spec.sizes)}
        return [(tuple(state_dict[k].shape), tuple(index.get(n) for n in names))
                for k, names in spec.axes.items()]

    plain, dropout = (build_model(ArchConfig(dropout=p), seed=0) for p in (0.0, 0.5))
    assert list(plain.state_dict()) != list(dropout.state_dict())
    assert (structure(permutation_spec(plain), plain.state_dict())
            == structure(permutation_spec(dropout), dropout.state_dict()))


def test_flatten_maps_channels_to_blocks() -> None:
    model = build_model(ArchConfig(name="cnn_l", in_channels=3, input_size=32), seed=0)
    spec = permutation_spec(model)
    layers = layer_names(model)
    last_conv, first_linear = layers[2], layers[3]
    assert spec.axes[f"{first_linear}.weight"][1] == last_conv
    in_features = model.state_dict()[f"{first_linear}.weight"].shape[1]
    assert in_features == spec.sizes[last_conv] * 2 * 2  # 15 channels of 2×2 pixels
    assert block_index(torch.tensor([2, 0, 1]), 6).tolist() == [4, 5, 0, 1, 2, 3]
    assert block_index(torch.tensor([2, 0, 1]), 3).tolist() == [2, 0, 1]


@pytest.mark.parametrize(("name", "blocks"), [("resnet18", (2, 2, 2, 2)),
                                               ("resnet34", (3, 4, 6, 3))])
def test_resnet_spec_shares_the_residual_stream(name: str, blocks: tuple[int, ...]) -> None:
    model = build_model(ArchConfig(name=name, in_channels=3), seed=0)
    spec = permutation_spec(model)
    assert len(spec.sizes) == len(blocks) + sum(blocks)  # one stream per stage, one per block
    axes = spec.axes
    stream = axes["conv1.weight"][0]
    assert axes["conv1.weight"][1] is None
    for stage, n in enumerate(blocks, start=1):
        if stage > 1:
            down = f"layer{stage}.0.downsample"
            assert axes[f"{down}.0.weight"][1] == stream
            stream = axes[f"{down}.0.weight"][0]
            assert axes[f"{down}.1.running_mean"] == (stream,)
        for j in range(n):
            block = f"layer{stage}.{j}"
            inner = axes[f"{block}.conv1.weight"][0]
            assert inner != stream
            assert axes[f"{block}.conv2.weight"][:2] == (stream, inner)
            for bn, group in (("bn1", inner), ("bn2", stream)):
                for part in ("weight", "bias", "running_mean", "running_var"):
                    assert axes[f"{block}.{bn}.{part}"] == (group,)
                assert axes[f"{block}.{bn}.num_batches_tracked"] == ()
    assert axes["fc.weight"] == (None, stream) and axes["fc.bias"] == (None,)
    assert spec.sizes[stream] == 64 * 2 ** (len(blocks) - 1)


def test_apply_is_exact_invertible_and_composes() -> None:
    model = build_model(ArchConfig(name="cnn_l", in_channels=3, input_size=32), seed=0)
    spec = permutation_spec(model)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        state = {k: v.to(dtype) if v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
        p = random_permutation(spec, torch.Generator().manual_seed(1))
        q = random_permutation(spec, torch.Generator().manual_seed(2))
        once = apply_permutation(state, spec, p)
        assert all(once[k].dtype == state[k].dtype for k in state)
        back = apply_permutation(once, spec, invert(p))
        assert all(torch.equal(back[k], state[k]) for k in state)
        twice = apply_permutation(once, spec, q)
        direct = apply_permutation(state, spec, compose(p, q))
        assert all(torch.equal(twice[k], direct[k]) for k in state)
    identity = apply_permutation(state, spec, identity_permutation(spec))
    assert all(torch.equal(identity[k], state[k]) for k in state)


def test_random_permutation_is_seeded() -> None:
    spec = permutation_spec(build_model(ArchConfig(), seed=0))
    draw = [random_permutation(spec, torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert all(torch.equal(draw[0][n], draw[1][n]) for n in spec.sizes)
    assert any(not torch.equal(draw[0][n], draw[2][n]) for n in spec.sizes)


def test_invalid_permutations_and_state_dicts_raise() -> None:
    model = build_model(ArchConfig(), seed=0)
    spec = permutation_spec(model)
    state = model.state_dict()
    name = next(iter(spec.sizes))
    n = spec.sizes[name]
    good = identity_permutation(spec)
    bad_perms = {
        "not a permutation": {**good, name: torch.zeros(n, dtype=torch.int64)},
        "int64 of shape": {**good, name: torch.arange(n + 1)},
        "int64": {**good, name: torch.arange(n, dtype=torch.int32)},
        "missing": {k: v for k, v in good.items() if k != name},
    }
    for message, perms in bad_perms.items():
        with pytest.raises(FormatError, match=message):
            apply_permutation(state, spec, perms)
    missing = {k: v for k, v in state.items() if k != "module_list.0.bias"}
    with pytest.raises(FormatError, match=r"missing keys \['module_list.0.bias'\]"):
        apply_permutation(missing, spec, good)
    with pytest.raises(FormatError, match=r"'module_list\.0\.weight': 2-d tensor"):
        apply_permutation({**state, "module_list.0.weight": torch.zeros(8, 5)}, spec, good)


def test_spec_json_round_trip_and_validation() -> None:
    spec = permutation_spec(build_model(ArchConfig(name="resnet18", in_channels=3), seed=0))
    assert PermutationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(FormatError, match="unknown permutations"):
        PermutationSpec.from_dict({"sizes": {"a": 2}, "axes": {"w": ["b", None]}})
    with pytest.raises(FormatError, match="positive int"):
        PermutationSpec.from_dict({"sizes": {"a": 0}, "axes": {}})
    with pytest.raises(FormatError, match="'sizes' and 'axes'"):
        PermutationSpec.from_dict({"sizes": {}})


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else x


class Viewed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.size(0), -1))


def sequential(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers)


@pytest.mark.parametrize(("model", "message"), [
    (Cat(), "operation cat is not supported"),
    (Scaled(), "tensor 'scale' is used outside a layer"),
    (Branching(), "cannot trace Branching"),
    (Viewed(), r"operation \.view\(\) is not supported"),
    (sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)),
     "grouped convolution '0'"),
    (sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
     "module '1' of type LayerNorm is not supported"),
    (sequential(nn.Conv2d(1, 2, 3), nn.Linear(1, 2)), "linear layer '1' applied to a spatial"),
    (sequential(nn.Conv2d(1, 2, 3), nn.Flatten(0), nn.Linear(8, 2)),
     "only flatten.start_dim=1, end_dim=-1. is supported, got start_dim=0"),
    (sequential(nn.Linear(4, 4), nn.MaxPool1d(2), nn.Linear(2, 2)),
     "pooling a flattened tensor"),
])
def test_unsupported_graphs_raise_config_error(model: nn.Module, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        permutation_spec(model)


def test_a_permuted_state_is_apply_permutation_made_entry_by_entry() -> None:
    model = build_model(ArchConfig(name="cnn_s"), seed=0)
    spec = permutation_spec(model)
    state = model.state_dict()
    perms = random_permutation(spec, torch.Generator().manual_seed(3))
    lazy, eager = PermutedState(state, spec, perms), apply_permutation(state, spec, perms)
    assert list(lazy) == list(eager) and len(lazy) == len(eager)
    for key in reversed(list(state)):
        assert torch.equal(lazy[key], eager[key]), key
    assert len(lazy._recent) == 2  # a layer's weight and bias, not the whole model
    with pytest.raises(FormatError):
        PermutedState({k: v for k, v in list(state.items())[1:]}, spec, perms)
