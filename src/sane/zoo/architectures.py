"""Architectures of model zoos, registered by name and built from an :class:`ArchConfig`.

The small CNNs reproduce the Model Zoos definitions (Schürholt et al., 2022) layer for layer,
including their state-dict keys (``module_list.<i>.weight``), so that published checkpoints load
directly: CNN-s inserts dropout modules only when ``dropout > 0`` (which shifts the indices),
CNN-l always has them. ResNets (basic blocks for 18/34, bottleneck blocks for 50/101) use
torchvision's key names with a CIFAR stem (3×3 stride-1 convolution, no max-pool); their
parameter counts are the usual CIFAR figures (e.g. kuangliu/pytorch-cifar).

Initialization follows Model Zoos: the chosen scheme for every convolution and linear weight
(``uniform`` is U(0, 1) and ``normal`` N(0, 1), as there), biases 0.01, batch-norm defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sane.errors import ConfigError
from sane.settings import from_table, require

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leakyrelu": nn.LeakyReLU,
    "silu": nn.SiLU,
}

INITS: dict[str, Callable[[torch.Tensor], Any]] = {
    "uniform": nn.init.uniform_,
    "normal": nn.init.normal_,
    "kaiming_uniform": nn.init.kaiming_uniform_,
    "kaiming_normal": nn.init.kaiming_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
}

BIAS_INIT = 0.01


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild an architecture.

    ``input_size`` is the image side (or signal length for ``cnn1d``); ``width`` multiplies the
    hidden widths of the small CNNs and the MLP; ``hidden`` sets the MLP's hidden sizes
    (before ``width``).
    """

    name: str = "cnn_s"
    activation: str = "tanh"
    dropout: float = 0.0
    init: str = "uniform"
    in_channels: int = 1
    num_classes: int = 10
    input_size: int = 28
    width: int = 1
    hidden: tuple[int, ...] = (64, 32)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_arch_value(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "architecture") -> ArchConfig:
        """The config :meth:`to_dict` wrote (missing keys take their defaults); ConfigError
        naming ``where`` and the key of a bad value."""
        return from_table(cls, d, where)


def check_arch_value(key: str, value: Any) -> None:
    """The rule of the :class:`ArchConfig` field ``key``: ConfigError ``"<key> must be ...,
    got <value>"`` unless ``value`` obeys it (known name, activation and init; dropout in
    [0, 1); positive sizes)."""
    if key == "name":
        require(value in ARCHITECTURES, key, f"one of {sorted(ARCHITECTURES)}", value)
    elif key == "activation":
        require(value in ACTIVATIONS, key, f"one of {sorted(ACTIVATIONS)}", value)
    elif key == "init":
        require(value in INITS, key, f"one of {sorted(INITS)}", value)
    elif key == "dropout":
        require(0 <= value < 1, key, "in [0, 1)", value)
    elif key == "hidden":
        require(all(h >= 1 for h in value), key, "positive sizes", list(value))
    else:  # in_channels, num_classes, input_size, width
        require(value >= 1, key, "positive", value)


Builder = Callable[[ArchConfig], nn.Module]
ARCHITECTURES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: add a builder to :data:`ARCHITECTURES` under ``name``."""

    def add(fn: Builder) -> Builder:
        ARCHITECTURES[name] = fn
        return fn

    return add


def build_model(config: ArchConfig, seed: int | None = None) -> nn.Module:
    """Build and initialize the architecture ``config.name``.

    With ``seed``, initialization uses a private RNG seeded with it (the global RNG is left
    untouched), so the same config and seed always give the same weights.
    """
    if seed is None:
        return _initialize(ARCHITECTURES[config.name](config), config.init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _initialize(ARCHITECTURES[config.name](config), config.init)


@functools.lru_cache(maxsize=64)
def _state_layout(arch_json: str) -> tuple[tuple[str, tuple[int, ...], torch.dtype], ...]:
    state = build_model(ArchConfig.from_dict(json.loads(arch_json)), seed=0).state_dict()
    return tuple((k, tuple(t.shape), t.dtype) for k, t in state.items())


def state_layout(config: ArchConfig) -> tuple[tuple[str, tuple[int, ...], torch.dtype], ...]:
    """``(key, shape, dtype)`` of every state-dict entry of ``config``'s model, in module
    order (cached per config)."""
    return _state_layout(json.dumps(config.to_dict(), sort_keys=True))


def input_shape(config: ArchConfig) -> tuple[int, ...]:
    """The shape of one input: ``(channels, length)`` for 1-D convolutions, else
    ``(channels, size, size)``."""
    one_dim = any(isinstance(m, nn.Conv1d) for m in build_model(config).modules())
    sides = (config.input_size,) * (1 if one_dim else 2)
    return (config.in_channels, *sides)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _initialize(model: nn.Module, init: str) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            INITS[init](m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, BIAS_INIT)
    return model


class Sequential(nn.Module):
    """A feed-forward stack kept in ``module_list`` (the Model Zoos key layout)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.module_list = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_list(x)


def _dropout(p: float) -> list[nn.Module]:
    """A dropout module when ``p > 0``, else nothing (Model Zoos' CNN-s and MLP layout)."""
    return [nn.Dropout(p)] if p > 0 else []


def _conv_out(size: int, kernel: int, pool: int = 1) -> int:
    out = (size - kernel + 1) // pool
    if out < 1:
        raise ConfigError(f"input size too small: a {kernel}-wide kernel leaves {out}")
    return out


@register("cnn_s")
def cnn_s(c: ArchConfig) -> nn.Module:
    """CNN-s of Model Zoos: 2,464 parameters for 1×28×28 inputs and 10 classes (width 1)."""
    return _cnn_s(c, deep=False)


@register("cnn_s_wide")
def cnn_s_wide(c: ArchConfig) -> nn.Module:
    """CNN-s with every hidden width doubled (8,950 parameters), for architecture transfer."""
    return cnn_s(dataclasses.replace(c, width=2 * c.width))


@register("cnn_s_deep")
def cnn_s_deep(c: ArchConfig) -> nn.Module:
    """CNN-s with one more convolution (3×3, same padding, ``6 × width`` channels) after the
    second block: 6 layers, 2,794 parameters, for architecture transfer."""
    return _cnn_s(c, deep=True)


def _cnn_s(c: ArchConfig, *, deep: bool) -> nn.Module:
    act = ACTIVATIONS[c.activation]
    w1, w2, w3, h = 8 * c.width, 6 * c.width, 4 * c.width, 20 * c.width
    side = _conv_out(_conv_out(_conv_out(c.input_size, 5, 2), 5, 2), 2)
    extra = [nn.Conv2d(w2, w2, 3, padding=1), act(), *_dropout(c.dropout)] if deep else []
    return Sequential([
        nn.Conv2d(c.in_channels, w1, 5), nn.MaxPool2d(2, 2), act(), *_dropout(c.dropout),
        nn.Conv2d(w1, w2, 5), nn.MaxPool2d(2, 2), act(), *_dropout(c.dropout),
        *extra,
        nn.Conv2d(w2, w3, 2), act(),
        nn.Flatten(),
        nn.Linear(w3 * side * side, h), act(), *_dropout(c.dropout),
        nn.Linear(h, c.num_classes),
    ])


@register("cnn_l")
def cnn_l(c: ArchConfig) -> nn.Module:
    """CNN-l of Model Zoos: 10,853 parameters for 3×32×32 inputs and 10 classes.

    Dropout modules are always present (``p`` may be 0), so the keys are fixed:
    ``module_list.{0,4,8,13,16}``.
    """
    act = ACTIVATIONS[c.activation]
    w1, w2, w3, h = 16 * c.width, 32 * c.width, 15 * c.width, 20 * c.width
    side = _conv_out(_conv_out(_conv_out(c.input_size, 3, 2), 3, 2), 3, 2)
    return Sequential([
        nn.Conv2d(c.in_channels, w1, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(c.dropout),
        nn.Conv2d(w1, w2, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(c.dropout),
        nn.Conv2d(w2, w3, 3), nn.MaxPool2d(2, 2), act(), nn.Dropout(c.dropout),
        nn.Flatten(),
        nn.Linear(w3 * side * side, h), act(), nn.Dropout(c.dropout),
        nn.Linear(h, c.num_classes),
    ])


@register("mlp")
def mlp(c: ArchConfig) -> nn.Module:
    """Flatten, then ``hidden`` linear layers (× ``width``) each followed by act [+ dropout]."""
    act = ACTIVATIONS[c.activation]
    sizes = [c.in_channels * c.input_size * c.input_size, *(h * c.width for h in c.hidden)]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), act(), *_dropout(c.dropout)]
    layers.append(nn.Linear(sizes[-1], c.num_classes))
    return Sequential(layers)


@register("cnn1d")
def cnn1d(c: ArchConfig) -> nn.Module:
    """1-D CNN for MNIST-1D (signals of length ``input_size``, 40 by default there)."""
    act = ACTIVATIONS[c.activation]
    w, h = 16 * c.width, 32 * c.width
    length = _conv_out(_conv_out(c.input_size, 5, 2), 5, 2)
    return Sequential([
        nn.Conv1d(c.in_channels, w, 5), act(), nn.MaxPool1d(2), *_dropout(c.dropout),
        nn.Conv1d(w, w, 5), act(), nn.MaxPool1d(2), *_dropout(c.dropout),
        nn.Flatten(),
        nn.Linear(w * length, h), act(), *_dropout(c.dropout),
        nn.Linear(h, c.num_classes),
    ])


def _no_dropout(c: ArchConfig) -> None:
    if c.dropout > 0:
        raise ConfigError(f"{c.name} has no dropout layers; set dropout to 0")


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with batch-norm and a residual connection;
    ``c_in`` channels in, ``planes`` out (expansion 1)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (torchvision v1.5): 1×1 down to ``planes`` channels, 3×3 with
    the stride, 1×1 up to ``4 · planes``, each with batch-norm, and a residual connection."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = act()
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """The projection shortcut (1×1 convolution + batch-norm, torchvision's ``downsample``)
    where the block changes shape, else ``None`` (identity)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


ResidualBlock = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """CIFAR-style ResNet with torchvision's state-dict keys (``conv1``, ``layer1.0.bn2``...):
    ``blocks[i]`` blocks of type ``block`` in stage ``i``, of width ``base · c.width · 2^i``
    (times the block's expansion at its output); the first block of every stage after the
    first has stride 2."""

    def __init__(self, blocks: tuple[int, ...], c: ArchConfig, base: int = 64,
                 block: ResidualBlock = BasicBlock) -> None:
        super().__init__()
        _no_dropout(c)
        act = ACTIVATIONS[c.activation]
        widths = [base * c.width * 2**i for i in range(len(blocks))]
        self.conv1 = nn.Conv2d(c.in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = act()
        c_in = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            layer = []
            for j in range(n):
                layer.append(block(c_in, planes, 1 if i == 0 or j else 2, act))
                c_in = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("resnet_s")
def resnet_s(c: ArchConfig) -> nn.Module:
    """A 2-block ResNet (one basic block in each of 2 stages of 8 and 16 channels × width,
    batch norm; 5,122 parameters for 1×28×28 inputs and 10 classes): the batch-norm path at
    CPU size."""
    return ResNet((1, 1), c, base=8)


@register("resnet_s_deep")
def resnet_s_deep(c: ArchConfig) -> nn.Module:
    """:func:`resnet_s` with two blocks per stage (4 blocks), for architecture transfer."""
    return ResNet((2, 2), c, base=8)


@register("resnet18")
def resnet18(c: ArchConfig) -> nn.Module:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11,173,962 parameters for 3 channels and 10
    classes."""
    return ResNet((2, 2, 2, 2), c)


@register("resnet34")
def resnet34(c: ArchConfig) -> nn.Module:
    """ResNet-34: basic blocks (3, 4, 6, 3); 21,282,122 parameters for 3 channels and 10
    classes."""
    return ResNet((3, 4, 6, 3), c)


@register("resnet50")
def resnet50(c: ArchConfig) -> nn.Module:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); 23,520,842 parameters for 3 channels and 10
    classes."""
    return ResNet((3, 4, 6, 3), c, block=Bottleneck)


@register("resnet101")
def resnet101(c: ArchConfig) -> nn.Module:
    """ResNet-101: bottleneck blocks (3, 4, 23, 3); 42,512,970 parameters for 3 channels and 10
    classes."""
    return ResNet((3, 4, 23, 3), c, block=Bottleneck)
