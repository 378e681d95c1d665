"""Which axes of which tensors share a channel permutation, found by tracing with ``torch.fx``.

:func:`trace_channel_groups` follows the channel axis (dim 1) of every tensor through the traced
graph of a model as a *channel group* (union-find):

* convolutions and linear layers start a new group for their output; their weight's input axis
  takes the group of the tensor they read;
* batch-norm, pooling, elementwise activations and dropout keep the group (batch-norm parameters
  and running statistics follow it);
* an elementwise binary op (a residual ``add``) merges its operands' groups: a residual stream
  shares one permutation;
* ``flatten(1)`` keeps the group, so a linear layer after ``conv → flatten`` permutes its input
  axis block-wise (``C`` blocks of ``h·w`` contiguous entries);
* the groups of the model's inputs and outputs are never permuted.

Anything else (concatenation, reshapes, grouped convolutions, layer norm...) raises
:class:`~sane.errors.ConfigError` naming the graph node, rather than producing a wrong result.

The result is plain sizes and per-axis group names. The public entry point,
:func:`~sane.weights.permutations.permutation_spec`, wraps them into a
:class:`~sane.weights.permutations.PermutationSpec`; it lives beside the spec it returns, so
callers import one module, and this one depends on nothing of the permutation algebra.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from sane.errors import ConfigError

# The channel group acting on each axis of a tensor (None: not permuted).
Axes = tuple[str | None, ...]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.tanh, torch.sigmoid, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.tanh, F.sigmoid, F.softplus, F.hardtanh, F.hardswish,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
}
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.mul, operator.truediv,
    torch.add, torch.sub, torch.mul, torch.div,
}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous"}
_BINARY_METHODS = {"add", "sub", "mul", "div"}

# Layout of a tensor: "spatial" [N, C, *S], "flat" [N, C], or None (unknown: a model input).
_SPATIAL, _FLAT = "spatial", "flat"


@dataclass(frozen=True)
class _Value:
    """A tensor in the traced graph: the channel group of its dim 1 and its layout."""

    group: int
    layout: str | None


class _Groups:
    """Union-find over channel groups; a merged group keeps its earliest producer's name."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int | None] = []
        self.name: list[str | None] = []
        self.fixed: list[bool] = []

    def new(self, size: int | None, name: str | None, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, node: fx.Node) -> int:
        a, b = sorted((self.find(a), self.find(b)))
        if a == b:
            return a
        if None not in (self.size[a], self.size[b]) and self.size[a] != self.size[b]:
            raise ConfigError(f"node {node.name!r} ({node.target}) joins channel groups of "
                              f"sizes {self.size[a]} and {self.size[b]}")
        self.parent[b] = a
        self.size[a] = self.size[a] if self.size[a] is not None else self.size[b]
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        return a


def trace_channel_groups(model: nn.Module) -> tuple[dict[str, int], dict[str, Axes]]:
    """Trace ``model`` with ``torch.fx`` and return the channel groups that can be permuted.

    Returns ``(sizes, axes)``, the fields of a
    :class:`~sane.weights.permutations.PermutationSpec`: ``sizes`` maps each permutable group to
    its number of channels, ``axes`` maps every state-dict key to one entry per tensor axis (the
    group acting on it, or ``None``). Groups are named after the first layer (in graph order)
    producing them, e.g. ``"module_list.0"`` or ``"layer1.0.conv1"``; the names depend on the
    model's structure only.
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # torch.fx raises many types for untraceable code
        raise ConfigError(f"cannot trace {type(model).__name__} with torch.fx: {error}") from error
    tracer = _ChannelTracer(dict(model.named_modules()))
    for node in graph.nodes:
        tracer.visit(node)
    return tracer.groups_of(model.state_dict())


class _ChannelTracer:
    """Walks a traced graph once, recording each state-dict key's channel group per axis."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.groups = _Groups()
        self.env: dict[fx.Node, _Value | None] = {}
        self.axes: dict[str, list[int | None]] = {}
        self.calls: dict[str, tuple[int, int]] = {}  # module -> (input group, output group)

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.env[node] = _Value(self.groups.new(None, None, fixed=True), None)
        elif node.op == "get_attr":
            raise ConfigError(f"node {node.name!r}: tensor {node.target!r} is used outside a "
                              "layer; only parameters of supported layers can be permuted")
        elif node.op == "call_module":
            self.env[node] = self._module(node, self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            self.env[node] = self._function(node)
        elif node.op == "output":
            for value in self._tensors(node):
                self.groups.fixed[self.groups.find(value.group)] = True

    def _tensors(self, node: fx.Node) -> list[_Value]:
        found: list[_Value] = []

        def collect(arg: fx.Node) -> fx.Node:
            if self.env[arg] is not None:
                found.append(self.env[arg])
            return arg

        fx.node.map_arg((node.args, node.kwargs), collect)
        return found

    def _single(self, node: fx.Node) -> _Value:
        tensors = self._tensors(node)
        if len(tensors) != 1:
            raise ConfigError(f"node {node.name!r} ({_op(node)}): expected one tensor input, "
                              f"got {len(tensors)}")
        return tensors[0]

    def _module(self, node: fx.Node, module: nn.Module) -> _Value:
        x = self._single(node)
        name = str(node.target)
        if isinstance(module, (*_CONV, nn.Linear)):
            return self._layer(node, name, module, x)
        if isinstance(module, _NORM):
            if name in self.calls:
                self.groups.union(self.calls[name][1], x.group, node)
            self.calls[name] = (x.group, x.group)
            self._record(name, module, lambda local, ndim: [x.group] if ndim == 1 else [])
            return x
        if isinstance(module, _POOL):
            return self._pool(node, x)
        if isinstance(module, nn.Flatten):
            return self._flatten(node, x, module.start_dim, module.end_dim)
        if isinstance(module, _ELEMENTWISE):
            return x
        raise ConfigError(f"node {node.name!r}: module {name!r} of type {type(module).__name__} "
                          "is not supported by permutation_spec")

    def _layer(self, node: fx.Node, name: str, module: nn.Module, x: _Value) -> _Value:
        if isinstance(module, nn.Linear):
            if x.layout == _SPATIAL:
                raise ConfigError(f"node {node.name!r}: linear layer {name!r} applied to a "
                                  "spatial tensor; flatten(1) it first")
            size, layout = module.out_features, _FLAT
        else:
            if x.layout == _FLAT:
                raise ConfigError(f"node {node.name!r}: convolution {name!r} applied to a "
                                  "flattened tensor")
            if module.groups != 1:
                raise ConfigError(f"node {node.name!r}: grouped convolution {name!r} "
                                  f"(groups={module.groups}) is not supported")
            size, layout = module.out_channels, _SPATIAL
        if name in self.calls:  # a layer called twice reads both inputs with the same columns
            self.groups.union(self.calls[name][0], x.group, node)
            out = self.calls[name][1]
        else:
            out = self.groups.new(size, name)
            self.calls[name] = (x.group, out)

        def axes(local: str, ndim: int) -> list[int | None]:
            return [out, x.group, *[None] * (ndim - 2)] if local == "weight" else [out]

        self._record(name, module, axes)
        return _Value(out, layout)

    def _record(
        self, name: str, module: nn.Module, axes: Callable[[str, int], list[int | None]]
    ) -> None:
        """Record ``axes(local name, ndim)`` for each parameter and buffer of ``module``."""
        for local, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if "." in local:
                raise ConfigError(f"module {name!r} has nested tensor {local!r}")
            self.axes[f"{name}.{local}"] = axes(local, tensor.dim())

    def _pool(self, node: fx.Node, x: _Value) -> _Value:
        if x.layout == _FLAT:
            raise ConfigError(f"node {node.name!r} ({_op(node)}): pooling a flattened tensor "
                              "would mix its channels")
        return _Value(x.group, _SPATIAL)

    def _flatten(self, node: fx.Node, x: _Value, start: Any, end: Any) -> _Value:
        if start != 1 or end != -1:
            raise ConfigError(f"node {node.name!r} ({_op(node)}): only flatten(start_dim=1, "
                              f"end_dim=-1) is supported, got start_dim={start}, end_dim={end}")
        return _Value(x.group, _FLAT)

    def _function(self, node: fx.Node) -> _Value | None:
        target = node.target
        is_method = node.op == "call_method"
        if _is_shape_query(node) or (target is operator.getitem and not self._tensors(node)):
            return None  # shape arithmetic: no tensor flows out
        if (is_method and target == "flatten") or target is torch.flatten:
            args = [*node.args[1:], *[None] * 2]
            start = node.kwargs.get("start_dim", 0 if args[0] is None else args[0])
            end = node.kwargs.get("end_dim", -1 if args[1] is None else args[1])
            return self._flatten(node, self._single(node), start, end)
        if (target in _ELEMENTWISE_METHODS) if is_method else (target in _ELEMENTWISE_FUNCTIONS):
            return self._single(node)
        if not is_method and target in _POOL_FUNCTIONS:
            return self._pool(node, self._single(node))
        if (target in _BINARY_METHODS) if is_method else (target in _BINARY_FUNCTIONS):
            return self._binary(node)
        raise ConfigError(f"node {node.name!r}: operation {_op(node)} is not supported by "
                          "permutation_spec")

    def _binary(self, node: fx.Node) -> _Value:
        tensors = self._tensors(node)
        if not 1 <= len(tensors) <= 2:
            raise ConfigError(f"node {node.name!r} ({_op(node)}): expected 1 or 2 tensor operands")
        group = tensors[0].group
        layouts = {v.layout for v in tensors} - {None}
        if len(layouts) > 1:
            raise ConfigError(f"node {node.name!r} ({_op(node)}) combines a flat and a spatial "
                              "tensor")
        for other in tensors[1:]:
            group = self.groups.union(group, other.group, node)
        return _Value(group, layouts.pop() if layouts else None)

    def groups_of(
        self, state_dict: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, int], dict[str, Axes]]:
        """The permutable groups' sizes and every key's group per axis (see
        :func:`trace_channel_groups`)."""
        unreached = [k for k in state_dict if k not in self.axes]
        if unreached:
            raise ConfigError(f"state-dict keys {unreached[:5]} belong to no layer reached by "
                              "the traced graph")
        groups = self.groups
        roots = sorted({groups.find(g) for names in self.axes.values() for g in names
                        if g is not None and not groups.fixed[groups.find(g)]})
        sizes = {groups.name[r]: groups.size[r] for r in roots}
        axes = {}
        for key, tensor in state_dict.items():
            names = tuple(
                None if g is None or groups.fixed[groups.find(g)] else groups.name[groups.find(g)]
                for g in self.axes[key]
            )
            for axis, name in enumerate(names):
                if name is not None and tensor.shape[axis] % sizes[name]:
                    raise ConfigError(f"{key!r} axis {axis}: size {tensor.shape[axis]} is not a "
                                      f"multiple of the {sizes[name]} channels of {name!r}")
            axes[key] = names
        return sizes, axes


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device")


def _op(node: fx.Node) -> str:
    target = node.target
    return f".{target}()" if node.op == "call_method" else getattr(target, "__name__", str(target))
