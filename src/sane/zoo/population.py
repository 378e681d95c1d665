"""Many small networks trained at once as one batched network (the population engine).

On a CPU, a small CNN trained alone leaves most of the machine idle: every step is a chain of
tiny kernels. Here ``K`` models of one architecture become one network whose tensors hold
all ``K`` models side by side, and each model still does exactly what it would do alone:

* convolutions are grouped convolutions (``groups=K``) over the ``K`` models' channel blocks,
  in channels-last memory layout (the fastest measured on CPU); linear layers are batched
  matrix products (``baddbmm``) over ``[K, B, features]``;
* every model sees its own images in its own order, drops its own units with its own dropout
  probability and random stream, and takes its own loss (mean over its batch), so gradients
  never mix between models;
* :class:`~sane.zoo.stacked_optimizer.StackedOptimizer` is torch's Adam or
  SGD-with-momentum, applied per model with per-model learning rate, weight decay and
  momentum.

Every stacked parameter has the models' blocks along its first dimension, model ``k`` owning
rows ``[k·r, (k+1)·r)``; linear weights ``[out, in]`` are kept as ``[K·out, in]`` so that one
rule slices all of them. Floating-point rounding differs from a model trained alone (grouped
kernels sum in another order), so the two agree to rounding, not bit for bit; for a fixed
group and thread count the engine itself is deterministic.

Random streams are derived from a model's seed and the epoch (:func:`stream_seed`), so an
epoch can be rerun from its starting checkpoint without any saved generator state.

Architectures that cannot be stacked (batch norm, residual connections: the ResNets) train one
model at a time: :class:`SingleNet` wraps one ordinary module in the interface of a
:class:`StackedNet` with ``K = 1``, so the same epoch loop, optimizer and checkpoints serve
both; its state includes the batch-norm running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sane.errors import ConfigError, FormatError
from sane.zoo.architectures import ACTIVATIONS, Sequential
from sane.zoo.stacked_optimizer import StackedOptimizer

# Named random streams of one model (the numbers only have to differ).
ORDER_STREAM = 1
DROPOUT_STREAM = 2

_ACTIVATION_TYPES = tuple({type(make()) for make in ACTIVATIONS.values()})
_POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d)


def stream_seed(seed: int, stream: int, epoch: int) -> int:
    """A 63-bit seed for random stream ``stream`` of the model with ``seed`` in ``epoch``."""
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def data_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order ``[n]`` in which the model with ``seed`` sees the training images in ``epoch``."""
    generator = torch.Generator().manual_seed(stream_seed(seed, ORDER_STREAM, epoch))
    return torch.randperm(n, generator=generator)


# -- the stacked network ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Op:
    """One layer of the stacked network: ``kind`` is conv, linear, pool, act, flatten or dropout.

    ``module`` is the template layer (pool, activation) or the parametrized layer whose stride
    and padding a convolution reuses; ``params`` indexes :attr:`StackedNet.params`.
    """

    kind: str
    module: nn.Module | None = None
    params: tuple[int, int] = (-1, -1)
    site: int = -1


def is_stackable(model: nn.Module) -> bool:
    """Whether the population engine can train ``model``: a plain feed-forward stack."""
    if not isinstance(model, Sequential) or any(True for _ in model.buffers()):
        return False
    allowed = (*_CONV_TYPES, nn.Linear, *_POOL_TYPES, *_ACTIVATION_TYPES, nn.Dropout, nn.Flatten)
    return all(isinstance(m, allowed) and getattr(m, "groups", 1) == 1
               for m in model.module_list)


def _layers(model: nn.Module) -> tuple[list[nn.Module], list[float]]:
    """The layers without dropout, and the dropout probability after each of them."""
    layers: list[nn.Module] = []
    after: list[float] = []
    for m in model.module_list:
        if isinstance(m, nn.Dropout):
            if not layers:
                raise ConfigError("dropout before the first layer is not supported")
            after[-1] = float(m.p)
        else:
            layers.append(m)
            after.append(0.0)
    return layers, after


def _signature(layer: nn.Module) -> tuple:
    params = tuple(tuple(p.shape) for p in layer.parameters())
    extra = (layer.stride, layer.padding, layer.dilation) if isinstance(layer, _CONV_TYPES) else ()
    return (type(layer).__name__, params, extra, layer.extra_repr())


class StackedNet:
    """``K`` models of one feed-forward architecture as one network.

    The models may differ in their weights and dropout probabilities (including none), not in
    their layers. ``params`` are the stacked leaf tensors the optimizer updates; ``rows[i]``
    is the number of rows of ``params[i]`` each model owns.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if not models:
            raise ValueError("a population needs at least one model")
        for model in models:
            if not is_stackable(model):
                raise ConfigError(f"{type(model).__name__} cannot be trained as a population: "
                                  "only feed-forward stacks of conv, linear, pool, activation, "
                                  "dropout and flatten layers can")
        per_model = [_layers(m) for m in models]
        template = per_model[0][0]
        for layers, _ in per_model:
            if [_signature(a) for a in layers] != [_signature(b) for b in template]:
                raise ConfigError("models of one population must share their layers")
        self.k = len(models)
        self.keys = [self._state_keys(m) for m in models]
        self.ops: list[_Op] = []
        self.params: list[torch.Tensor] = []
        self.rows: list[int] = []
        # Dropout probability per model at each dropout site: [sites][K].
        self.dropout: list[torch.Tensor] = []
        for i, layer in enumerate(template):
            if isinstance(layer, (*_CONV_TYPES, nn.Linear)):
                group = [layers[i] for layers, _ in per_model]
                first = self._stack([m.weight for m in group], conv=isinstance(layer, nn.Conv2d))
                second = self._stack([m.bias for m in group], conv=False)
                kind = "linear" if isinstance(layer, nn.Linear) else "conv"
                self.ops.append(_Op(kind, layer, (first, second)))
            elif isinstance(layer, nn.Flatten):
                self.ops.append(_Op("flatten"))
            elif isinstance(layer, nn.Tanh):
                self.ops.append(_Op("tanh"))
            else:
                self.ops.append(_Op("pool" if isinstance(layer, _POOL_TYPES) else "act", layer))
            probs = [after[i] for _, after in per_model]
            if any(p > 0 for p in probs):
                self.ops.append(_Op("dropout", site=len(self.dropout)))
                self.dropout.append(torch.tensor(probs, dtype=torch.float64))

    @staticmethod
    def _state_keys(model: nn.Module) -> list[str]:
        keys = list(model.state_dict())
        names = [n for n, _ in model.named_parameters()]
        if keys != names:
            raise ConfigError("population models must keep every state in their parameters")
        return keys

    def _stack(self, tensors: list[torch.Tensor | None], conv: bool) -> int:
        if any(t is None for t in tensors):
            raise ConfigError("population models need a bias in every conv and linear layer")
        stacked = torch.cat([t.detach() for t in tensors])  # type: ignore[misc]
        if conv:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        self.params.append(stacked.requires_grad_(True))
        self.rows.append(tensors[0].shape[0])  # type: ignore[union-attr]
        return len(self.params) - 1

    # -- weights in and out --------------------------------------------------------------
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each model's state dict, with the keys and shapes of its own module."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.k)]
        for i, (param, r) in enumerate(zip(self.params, self.rows)):
            for k in range(self.k):
                out[k][self.keys[k][i]] = param.detach()[k * r:(k + 1) * r].contiguous()
        return out

    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Overwrite the weights with ``states`` (one state dict per model, as saved)."""
        with torch.no_grad():
            for k, state in enumerate(states):
                if set(state) != set(self.keys[k]):
                    raise FormatError(f"state dict keys {sorted(state)} do not match the "
                                      f"architecture's {self.keys[k]}")
                for i, (param, r) in enumerate(zip(self.params, self.rows)):
                    value = state[self.keys[k][i]]
                    block = param[k * r:(k + 1) * r]
                    if value.shape != block.shape or value.dtype != block.dtype:
                        raise FormatError(f"{self.keys[k][i]}: expected {block.dtype} "
                                          f"{tuple(block.shape)}, got {value.dtype} "
                                          f"{tuple(value.shape)}")
                    block.copy_(value)

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor,
                dropout: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
        """Logits ``[K, B, classes]`` of inputs ``x [B, K·C, *S]`` (see :func:`per_model_batch`).

        ``dropout`` gives each model's generator (``None`` for a model without dropout);
        without it, dropout is off (evaluation mode).
        """
        # Layouts: "channels" [B, K·C, *S] (model k in channel block k), "features" [K, B, F].
        h, layout = x, "channels"
        for op in self.ops:
            if op.kind == "conv":
                w, b = (self.params[i] for i in op.params)
                conv = F.conv2d if w.ndim == 4 else F.conv1d
                layer = op.module
                h = conv(h, w, b, layer.stride, layer.padding, layer.dilation, groups=self.k)
                if h.ndim == 4:
                    # With one input channel the layout is ambiguous and the convolution may
                    # answer in NCHW, which makes pooling several times slower.
                    h = h.contiguous(memory_format=torch.channels_last)
            elif op.kind == "linear":
                w, b = (self.params[i] for i in op.params)
                w = w.view(self.k, -1, w.shape[-1])  # [K, out, in]
                h = torch.baddbmm(b.view(self.k, 1, -1), h, w.transpose(1, 2))
            elif op.kind == "flatten":
                if layout == "channels":
                    h = h.reshape(h.shape[0], self.k, -1).transpose(0, 1)
                    layout = "features"
            elif op.kind == "tanh":
                # The fast tanh pays off on convolution outputs, not on a few features.
                h = _Tanh.apply(h) if layout == "channels" else torch.tanh(h)
            elif op.kind == "dropout":
                if dropout is not None:
                    h = _drop(h, layout, self.dropout[op.site], dropout)
            else:
                h = op.module(h)
        return h


class _Tanh(torch.autograd.Function):
    """``tanh`` as ``expm1(2x) / (expm1(2x) + 2)``: within 2 ulp of ``torch.tanh`` and about
    twice as fast on CPU, where torch's tanh is several times slower than its ``expm1``
    (measured on one thread: 0.6 against 1.0–1.2 ms for CNN-s's first activation of 6 models
    at batch 64, a few percent of the training step). The gradient is torch's own formula,
    ``grad · (1 - y²)``. Inputs are clamped to ±9, where float32 tanh is already ±1."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        e = x.mul(2).clamp_(-18, 18).expm1_()
        y = e.div_(e + 2)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def _drop(h: torch.Tensor, layout: str, probs: torch.Tensor,
          generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Dropout with model ``k``'s probability ``probs[k]`` and its own random stream.

    ``h`` is ``[B, K·C, *S]`` (``layout="channels"``) or ``[K, B, F]`` (``"features"``). Each
    model draws the uniform numbers of its own block in its own ``[B, *S, C]`` (or ``[B, F]``)
    order, so its masks do not depend on the other models of the population.
    """
    k = len(generators)
    if layout == "features":
        per_model = tuple(h.shape[1:])
    else:
        per_model = (h.shape[0], *h.shape[2:], h.shape[1] // k)
    uniform = torch.zeros(k, *per_model)
    for i, generator in enumerate(generators):
        if probs[i] > 0:
            assert generator is not None
            uniform[i].uniform_(generator=generator)
    keep = (1 - probs).to(torch.float32).view(k, *[1] * len(per_model))
    # Like torch's dropout: keep with probability 1 - p, scale the kept units by 1 / (1 - p).
    # A model without dropout has keep = 1 > uniform = 0, so its mask is all ones.
    mask = (uniform < keep).to(h.dtype) / keep
    if layout == "channels":
        # [K, B, *S, C] -> [B, *S, K, C] -> [B, K·C, *S], channels-last like h.
        mask = mask.movedim(0, -2).reshape(*per_model[:-1], -1).movedim(-1, 1)
    return h * mask


# -- one network that cannot be stacked --------------------------------------------------------

# Layers that draw from torch's global random state in training mode.
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.FeatureAlphaDropout)


class SingleNet:
    """One ordinary module with the interface of a :class:`StackedNet` of ``K = 1`` model.

    For architectures the engine cannot stack (see :func:`is_stackable`): the module runs as
    it is, in training mode (batch norm normalizes with batch statistics and updates its
    running statistics) while it trains, in evaluation mode otherwise. ``params`` are the
    module's own parameters in ``named_parameters`` order and ``rows[i]`` is
    ``params[i].shape[0]`` (all rows belong to the one model), so :class:`StackedOptimizer`
    updates them in place. Modules with active dropout are refused: their masks would come
    from torch's global random state, which an epoch rerun from its checkpoint cannot
    reproduce.
    """

    def __init__(self, model: nn.Module) -> None:
        if any(isinstance(m, _DROPOUT_TYPES) and m.p > 0 for m in model.modules()):
            raise ConfigError(f"{type(model).__name__} has dropout, which a model trained alone "
                              "cannot resume exactly")
        named = list(model.named_parameters())
        for name, param in named:
            if param.ndim == 0:
                raise ConfigError(f"{type(model).__name__}.{name} is a scalar parameter, which "
                                  "training does not support")
        self.model = model
        self.k = 1
        self.params = [param for _, param in named]
        self.rows = [param.shape[0] for param in self.params]
        self.keys = [[name for name, _ in named]]
        self.dropout: list[torch.Tensor] = []

    # -- weights in and out --------------------------------------------------------------
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """``[state]``: a copy of the module's full state dict, buffers included."""
        state = self.model.state_dict()
        return [{key: value.detach().cpu().clone(memory_format=torch.contiguous_format)
                 for key, value in state.items()}]

    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Overwrite parameters and buffers with ``states`` (``[state]``, as saved)."""
        if len(states) != 1:
            raise ValueError(f"one state dict expected, got {len(states)}")
        state, expected = states[0], self.model.state_dict()
        if set(state) != set(expected):
            raise FormatError(f"state dict keys {sorted(state)} do not match the "
                              f"architecture's {list(expected)}")
        for key, target in expected.items():
            value = state[key]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise FormatError(f"{key}: expected {target.dtype} {tuple(target.shape)}, got "
                                  f"{value.dtype} {tuple(value.shape)}")
        self.model.load_state_dict(state)

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor,
                dropout: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
        """Logits ``[1, B, classes]`` of inputs ``x [B, C, *S]`` (:func:`per_model_batch`).

        Training mode when ``dropout`` is given (``[None]``: the module draws no random
        numbers), evaluation mode without it, as for a :class:`StackedNet`.
        """
        self.model.train(dropout is not None)
        return self.model(x).unsqueeze(0)


# -- epochs ----------------------------------------------------------------------------------

def model_layout(x: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` as ``[N, H, W, C]`` (signals ``[N, C, L]`` unchanged).

    Gathering per-model batches from this layout gives channels-last batches with one copy.
    """
    return x.permute(0, 2, 3, 1).contiguous() if x.ndim == 4 else x.contiguous()


def per_model_batch(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[b, K·C, *S]``: model ``k``'s images ``x[index[k]]`` in channel block ``k``."""
    k, b = index.shape
    picked = x[index.T]  # [b, K, H, W, C] or [b, K, C, L]
    if x.ndim == 4:
        h, w, c = x.shape[1:]
        # An explicit copy: a reshape could return a view whose strides are not channels-last
        # (with one channel), and the convolution would then take the slow NCHW path.
        nhwc = picked.permute(0, 2, 3, 1, 4).contiguous().view(b, h, w, k * c)
        return nhwc.permute(0, 3, 1, 2)
    return picked.reshape(b, -1, x.shape[-1])


def train_epoch(
    net: StackedNet | SingleNet,
    optimizer: StackedOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seeds: Sequence[int],
    epoch: int,
    batch_size: int,
    on_step: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train every model for one epoch over its own order of the images ``x`` (model layout).

    Each step, model ``k`` takes the next ``batch_size`` images of :func:`data_order` and one
    optimizer step on its mean cross-entropy. Returns the running mean loss and accuracy
    ``[K]`` over the epoch (dropout on, weights changing), as the Model Zoos record them.
    ``on_step(fraction)`` is called after each step with the fraction of the epoch it was.
    """
    n, k = len(y), net.k
    orders = torch.stack([data_order(seed, epoch, n) for seed in seeds])  # [K, N]
    generators = [
        torch.Generator().manual_seed(stream_seed(seed, DROPOUT_STREAM, epoch))
        if any(p[i] > 0 for p in net.dropout) else None
        for i, seed in enumerate(seeds)
    ]
    loss_sum = torch.zeros(k, dtype=torch.float64)
    correct = torch.zeros(k, dtype=torch.int64)
    for start in range(0, n, batch_size):
        index = orders[:, start:start + batch_size]  # [K, b]
        labels = y[index]
        logits = net.forward(per_model_batch(x, index), dropout=generators)
        b = index.shape[1]
        losses = F.cross_entropy(logits.reshape(k * b, -1), labels.reshape(-1),
                                 reduction="none").view(k, b).mean(1)
        # Summing the per-model means leaves each model the gradient of its own loss.
        grads = torch.autograd.grad(losses.sum(), net.params)
        optimizer.step(grads)
        loss_sum += losses.detach().double() * b
        correct += (logits.detach().argmax(-1) == labels).sum(1)
        if on_step is not None:
            on_step(b / n)
    return loss_sum / n, correct.double() / n


@torch.no_grad()
def evaluate(net: StackedNet | SingleNet, x: torch.Tensor, y: torch.Tensor, *,
             images_per_pass: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy ``[K]`` of every model on ``x`` (model layout), no dropout.

    Every model sees the same batches, laid out as in training (one dense convolution over
    shared images would need a slow conversion to channels-last). ``images_per_pass`` bounds
    ``batch × K``: small passes stay in cache.
    """
    n, k = len(y), net.k
    batch = max(1, images_per_pass // k)
    loss_sum = torch.zeros(k, dtype=torch.float64)
    correct = torch.zeros(k, dtype=torch.int64)
    for start in range(0, n, batch):
        labels = y[start:start + batch]
        index = torch.arange(start, start + len(labels)).expand(k, -1)
        logits = net.forward(per_model_batch(x, index))
        b = len(labels)
        losses = F.cross_entropy(logits.reshape(k * b, -1), labels.repeat(k), reduction="none")
        loss_sum += losses.view(k, b).double().sum(1)
        correct += (logits.argmax(-1) == labels).sum(1)
    return loss_sum / n, correct.double() / n
