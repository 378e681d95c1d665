"""A neural-functional property predictor: the ``NFN`` row of ``sane probe``.

A permutation-invariant network over the weights of each checkpoint (NFN_HNP of Zhou et
al. 2023, "Permutation Equivariant Neural Functionals"), trained end to end to predict model
properties, as the peers of the equivariant line do; SANE's probes are linear on frozen
embeddings instead. The layers are the ``nfn`` package's (``pip install 'sane[nfn]'``):
``HNPLinear`` layers, each followed by a ReLU, equivariant to the hidden neurons'
permutations (the first layer's inputs and the last layer's outputs keep their order), then
``HNPPool`` (invariant) and an MLP head, as in the package authors' generalization
predictor. Permuting a checkpoint's hidden neurons leaves its predictions unchanged up to
float rounding.

The network reads a feed-forward chain of convolutions and linear layers with biases
(CNN-s, CNN-l, MLP): a weight ``[out, in, *kernel]`` enters as ``[1, out, in, k, 1]`` with
its kernel flattened (``k`` entries; 1 for a linear layer), and a linear layer after a
flatten reads ``in = channels · positions`` as ``[out, channels, positions]``, the blocks
the permutation spec moves together. Each weight and bias tensor is standardized by one mean
and one standard deviation over the training checkpoints (scalars, so invariance holds).

One network predicts every property (one output each, targets standardized on the training
split, mean squared error over the known values): the properties of a checkpoint are related
(epoch, accuracy, gap) and share what the layers extract, and one training per size costs a
third of one per property. Each size of :attr:`NFNConfig.channels` is trained for up to
``epochs`` epochs; after every epoch the validation R² of each property is measured, and each
property keeps the (size, epoch) with the best, as the ridge probes keep their strength per
property. Training a size stops ``patience`` epochs after its last improvement on any
property.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sane.downstream.intervals import r2
from sane.errors import ConfigError, FormatError
from sane.settings import require
from sane.weights.permutations import PermutationSpec

if TYPE_CHECKING:
    from nfn.common import WeightSpaceFeatures

StateDicts = Sequence[Mapping[str, torch.Tensor]]
# (validation R², what was selected, the network): the best so far for one property
Snapshot = tuple[float, dict[str, Any], nn.Module | None]


def require_nfn() -> ModuleType:
    """The ``nfn`` package, or a :class:`~sane.errors.ConfigError` saying how to install it."""
    try:
        import nfn
    except ImportError:
        raise ConfigError("the NFN probe needs the nfn package: pip install 'sane[nfn]'"
                          ) from None
    return nfn


@dataclass(frozen=True)
class NFNConfig:
    """How the NFN probe is trained. ``channels``: the sizes tried, each the channels of its
    ``HNPLinear`` layers (validation chooses per property); ``head``: the width of the two
    hidden layers of the MLP head; at most ``epochs`` passes over the training checkpoints
    in batches of ``batch_size`` (Adam, learning rate ``lr``), stopped ``patience`` epochs
    after the last validation improvement; ``seed`` fixes initialization and batch order.

    The defaults are the package authors' generalization predictor (channels 16, 16, 5, a
    head of 1000, batches of 8, Adam 1e-3, 50 epochs) with two smaller sizes beside it. On
    the ``fmnist-seed`` zoo's validation split (70 training models) a head of 32, weight
    decay, dropout, a lower learning rate, larger batches and NP layers did not do better."""

    channels: tuple[tuple[int, ...], ...] = ((4, 4), (8, 8), (16, 16, 5))
    head: int = 1000
    epochs: int = 50
    patience: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        require(len(self.channels) > 0 and all(
            len(c) > 0 and all(isinstance(w, int) and w > 0 for w in c) for c in self.channels),
            "channels", "a non-empty list of non-empty lists of positive ints", self.channels)
        for key in ("head", "epochs", "patience", "batch_size"):
            value = getattr(self, key)
            require(isinstance(value, int) and value > 0, key, "a positive int", value)
        require(self.lr > 0, "lr", "a positive number", self.lr)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "channels": [list(c) for c in self.channels]}


@dataclass(frozen=True)
class ChainLayer:
    """One layer of a feed-forward chain: its weight and bias keys and ``inputs``, the
    number of units it reads (the previous layer's outputs; the first layer's input
    channels)."""

    weight: str
    bias: str
    inputs: int


def layer_chain(state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec
                ) -> tuple[ChainLayer, ...]:
    """The layers of ``state_dict`` as a feed-forward chain: every tensor of two or more
    dimensions is a weight ``[out, in, *kernel]`` with a bias ``[out]``, its outputs permuted
    by the permutation that permutes the next layer's inputs (the last layer's outputs by
    none). Anything else (a residual connection, a layer without bias, batch norm) raises
    :class:`~sane.errors.ConfigError` naming the key."""
    expected = ("the NFN probe reads a feed-forward chain of convolutions and linear layers "
                "with biases (CNN-s, CNN-l, MLP)")
    weights = [k for k, t in state_dict.items() if t.dim() >= 2]
    if not weights:
        raise ConfigError(f"{expected}; the state dict has no weight matrix")
    chain, previous, seen = [], None, set()
    for i, key in enumerate(weights):
        axes = spec.axes.get(key)
        if axes is None:
            raise FormatError(f"state dict key {key!r} is not in the permutation spec")
        bias = key.removesuffix("weight") + "bias"
        if not key.endswith("weight") or bias not in state_dict:
            raise ConfigError(f"{expected}; {key!r} has no bias")
        last = i == len(weights) - 1
        if (axes[1] != previous or any(a is not None for a in axes[2:])
                or spec.axes.get(bias) != (axes[0],) or (axes[0] is None) != last):
            raise ConfigError(f"{expected}; {key!r} does not continue the chain (its axes "
                              f"are permuted by {list(axes)}, the previous layer's outputs "
                              f"by {previous!r})")
        if axes[0] in seen:
            raise ConfigError(f"{expected}; {key!r} shares its output permutation "
                              f"{axes[0]!r} with an earlier layer (a residual connection)")
        seen.add(axes[0])
        inputs = state_dict[key].shape[1] if previous is None else spec.sizes[previous]
        chain.append(ChainLayer(key, bias, inputs))
        previous = axes[0]
    inside = {name for layer in chain for name in (layer.weight, layer.bias)}
    for key, axes in spec.axes.items():
        if key not in inside and any(a is not None for a in axes):
            raise ConfigError(f"{expected}; {key!r} is permuted outside the chain")
    return tuple(chain)


def weight_space(states: StateDicts, chain: Sequence[ChainLayer]) -> WeightSpaceFeatures:
    """The checkpoints ``states`` as the ``nfn`` package's batched weight-space features:
    per layer a weight ``[B, 1, out, in, k, 1]`` and a bias ``[B, 1, out]``, float32."""
    from nfn.common import WeightSpaceFeatures

    weights, biases = [], []
    for layer in chain:
        w = torch.stack([s[layer.weight].detach() for s in states]).float()
        weights.append(w.reshape(len(states), 1, w.shape[1], layer.inputs, -1, 1))
        biases.append(torch.stack([s[layer.bias].detach() for s in states]).float()[:, None])
    features = WeightSpaceFeatures(weights, biases)
    if not all(torch.isfinite(t).all() for pair in features for t in pair):
        raise FormatError("the NFN probe's checkpoints hold NaN or infinite weights")
    return features


class NFNProbe:
    """An invariant neural functional from checkpoints to properties, sized and stopped on a
    validation split (see the module docstring).

    ``fit(states, y [M, P], validation=(states_val, y_val [V, P]))`` (NaN where a property
    is unknown); ``predict(states) -> [M, P]``; ``score(states, y) -> [P]`` R² per property.
    After fitting: ``selected_`` per property ``{"channels", "epoch", "validation_r2"}``,
    ``history_`` one record per (size, epoch) with the training loss, the validation R² per
    property and its seconds, ``seconds_`` the training time.
    """

    def __init__(self, spec: PermutationSpec, config: NFNConfig | None = None) -> None:
        self.spec = spec
        self.config = NFNConfig() if config is None else config

    def fit(self, states: StateDicts, y: np.ndarray, *,
            validation: tuple[StateDicts, np.ndarray], progress: bool = False) -> NFNProbe:
        require_nfn()
        start = time.perf_counter()
        states_val, y_val = validation
        y, y_val = _targets(y, len(states), "training"), _targets(y_val, len(states_val),
                                                                  "validation")
        if y_val.shape[1] != y.shape[1]:
            raise FormatError(f"validation targets have {y_val.shape[1]} properties, "
                              f"training targets {y.shape[1]}")
        self.chain_ = layer_chain(states[0], self.spec)
        x = weight_space(states, self.chain_)
        self.scales_ = [(float(t.mean()), _positive(float(t.std()))) for pair in x for t in pair]
        x, x_val = self._standardized(x), self._standardized(weight_space(states_val,
                                                                          self.chain_))
        known = np.isfinite(y).sum(axis=0)
        if (known < 2).any():
            raise FormatError(f"property {int(np.argmin(known))} has {int(known.min())} "
                              "known training values; the NFN probe needs 2")
        self.target_mean_ = np.nanmean(y, axis=0)
        self.target_std_ = np.array([_positive(s) for s in np.nanstd(y, axis=0)])
        target = torch.tensor((y - self.target_mean_) / self.target_std_, dtype=torch.float32)
        target_val = (y_val - self.target_mean_) / self.target_std_  # R² is the same
        best: list[Snapshot] = [(-np.inf, {}, None) for _ in range(y.shape[1])]
        self.history_ = []
        for size, channels in enumerate(self.config.channels):
            self.history_ += _train_size(x, target, x_val, target_val, channels, self.config,
                                         self.config.seed + size, best, progress)
        if any(net is None for *_, net in best):
            raise FormatError("no NFN reached a finite validation R² (a property is "
                              "constant on the validation split)")
        self.selected_ = [selected for _, selected, _ in best]
        self.networks_ = [net for *_, net in best]
        self.seconds_ = time.perf_counter() - start
        return self

    def predict(self, states: StateDicts) -> np.ndarray:
        if not hasattr(self, "networks_"):
            raise ConfigError("fit the NFN probe before predicting")
        x = self._standardized(weight_space(states, self.chain_))
        out = np.stack([_forward(net, x)[:, p] for p, net in enumerate(self.networks_)], 1)
        return out * self.target_std_ + self.target_mean_

    def score(self, states: StateDicts, y: np.ndarray) -> np.ndarray:
        """R² of the predictions for ``states`` against ``y`` ``[M, P]``, per property (over
        the known values)."""
        y = _targets(y, len(states), "scored")
        predicted = self.predict(states)
        return np.array([_known_r2(y[:, p], predicted[:, p]) for p in range(y.shape[1])])

    def _standardized(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        tensors = [t for pair in x for t in pair]
        scaled = [(t - mean) / std for t, (mean, std) in zip(tensors, self.scales_)]
        return type(x)(scaled[0::2], scaled[1::2])


def _train_size(x: WeightSpaceFeatures, target: torch.Tensor, x_val: WeightSpaceFeatures,
                target_val: np.ndarray, channels: Sequence[int], config: NFNConfig, seed: int,
                best: list[Snapshot], progress: bool) -> list[dict[str, Any]]:
    """Train one network of ``channels`` (initialization and batch order from ``seed``) on
    standardized targets ``target`` ``[M, P]`` (``target_val`` ``[V, P]`` alike),
    replacing ``best[p]`` whenever it beats it on property ``p``'s validation R²; stop
    ``config.patience`` epochs after this network's last improvement on any property.
    Returns one record per epoch (its training loss, validation R² and seconds)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _network(x, channels, config.head, target.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(seed)
    own, since, history = np.full(target.shape[1], -np.inf), 0, []
    for epoch in tqdm(range(1, config.epochs + 1), desc=f"NFN {list(channels)}", unit="epoch",
                      disable=not progress):
        start = time.perf_counter()
        loss = _train_epoch(net, optimizer, x, target, config.batch_size, order)
        scores = [_known_r2(target_val[:, p], column)
                  for p, column in enumerate(_forward(net, x_val).T)]
        history.append({"channels": list(channels), "epoch": epoch, "train_loss": loss,
                        "validation_r2": scores, "seconds": time.perf_counter() - start})
        improved = [p for p, score in enumerate(scores)
                    if np.isfinite(score) and score > best[p][0]]
        snapshot = copy.deepcopy(net) if improved else None
        for p in improved:
            best[p] = (scores[p], {"channels": list(channels), "epoch": epoch,
                                   "validation_r2": scores[p]}, snapshot)
        since = 0 if any(s > o for s, o in zip(scores, own)) else since + 1
        own = np.fmax(own, scores)
        if since >= config.patience:
            break
    return history


def _network(x: WeightSpaceFeatures, channels: Sequence[int], head: int, outputs: int
             ) -> nn.Sequential:
    """``HNPLinear`` layers of ``channels`` with ReLUs, ``HNPPool``, then an MLP head with two
    hidden layers of ``head`` units and ``outputs`` outputs: weight-space features of ``B``
    checkpoints to ``[B, outputs]``."""
    from nfn.common import network_spec_from_wsfeat
    from nfn.layers import HNPLinear, HNPPool, TupleOp

    spec = network_spec_from_wsfeat(x)
    layers: list[nn.Module] = []
    width = 1
    for c in channels:
        layers += [HNPLinear(spec, width, c), TupleOp(nn.ReLU())]
        width = c
    pooled = width * HNPPool.get_num_outs(spec)
    return nn.Sequential(*layers, HNPPool(spec), nn.Flatten(start_dim=-2),
                         nn.Linear(pooled, head), nn.ReLU(), nn.Linear(head, head), nn.ReLU(),
                         nn.Linear(head, outputs))


def _train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, x: WeightSpaceFeatures,
                 target: torch.Tensor, batch_size: int, order: torch.Generator) -> float:
    """One pass over the training checkpoints in a random order; mean squared error over
    the known (finite) targets. Returns the mean batch loss."""
    net.train()
    losses = []
    perm = torch.randperm(len(target), generator=order)
    for start in range(0, len(perm), batch_size):
        batch = perm[start : start + batch_size]
        known = torch.isfinite(target[batch])
        optimizer.zero_grad()
        error = net(_rows(x, batch)) - torch.nan_to_num(target[batch])
        loss = (error[known] ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _forward(net: nn.Module, x: WeightSpaceFeatures, chunk: int = 256) -> np.ndarray:
    """``[B, outputs]`` float64: the network's outputs for every checkpoint of ``x``."""
    net.eval()
    count = len(x.biases[0])
    with torch.no_grad():
        return np.concatenate([
            net(_rows(x, torch.arange(s, min(s + chunk, count)))).double().numpy()
            for s in range(0, count, chunk)])


def _rows(x: WeightSpaceFeatures, index: torch.Tensor) -> WeightSpaceFeatures:
    return type(x)([w[index] for w in x.weights], [b[index] for b in x.biases])


def _known_r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    """R² over the known (finite) values of ``truth``; NaN where undefined."""
    known = np.isfinite(truth)
    return r2(truth[known], predicted[known]) if known.sum() >= 2 else float("nan")


def _targets(y: Any, rows: int, what: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != rows or rows < 2:
        raise FormatError(f"{what} targets must be [{rows}, P] for {rows} >= 2 checkpoints, "
                          f"got {list(y.shape)}")
    return y


def _positive(std: float) -> float:
    """A standard deviation to divide by: 1 where the values are constant."""
    return std if std > 1e-12 else 1.0
