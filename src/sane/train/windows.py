"""Random token windows from a token store, augmented on the fly.

Each sample is one checkpoint of the chosen split, a window of ``window_size`` consecutive
tokens starting at a uniformly random position (each sample its own start), and ``views``
augmented copies of it: a random permutation of the whole model (relative to the stored,
aligned model; gathered by index arithmetic, see :mod:`sane.weights.augment`) and noise. All
views of a sample share the window, so mask and positions are shared too (a permutation moves
rows only within a layer, and every row of a layer has the same length).

The store of a mixed zoo (:class:`~sane.weights.store.StoreSet`) is sampled as one: its
checkpoints are drawn together, each window from its own layout, with that layout's
positions, mask and permutations, so one batch mixes architectures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sane.errors import ConfigError
from sane.weights.augment import WindowPermuter, add_noise, gather_window
from sane.weights.permutations import random_permutation
from sane.weights.store import StoreSet, TokenStore


@dataclass(frozen=True)
class WindowBatch:
    """``tokens`` ``[V, B, W, d_t]`` float32 (V views); ``clean`` the same views before noise;
    ``mask`` ``[B, W, d_t]`` bool;
    ``positions`` ``[B, W, 3]`` int64 ``(n, l, k)``; ``rows`` ``[B]`` store rows (of a
    store set: numbered through its layouts in order);
    ``properties`` ``[B, P]`` float64 (``TokenStore.property_names``)."""

    tokens: torch.Tensor
    clean: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    rows: torch.Tensor
    properties: torch.Tensor


@dataclass(frozen=True)
class WindowConfig:
    """How windows are drawn and augmented.

    ``permute``: each view is the model under a fresh random permutation (needs a store whose
    architecture has a permutation spec); ``canonical_first``: view 0 keeps the stored
    (aligned) order and only the other views are permuted (SANE's two views: the aligned model
    and a permuted one); ``multiplicative_noise``/``additive_noise``: standard deviations on
    the standardized weights (SANE: multiplicative 0.1), drawn for every view;
    ``windows_per_checkpoint``: windows drawn from each checkpoint per epoch (each pass over
    the checkpoints in a fresh random order; SANE draws enough to about cover every model);
    ``drop_last``: skip a last, smaller batch (contrastive losses want full batches).
    """

    window_size: int = 64
    batch_size: int = 32
    views: int = 1
    permute: bool = True
    canonical_first: bool = False
    multiplicative_noise: float = 0.0
    additive_noise: float = 0.0
    windows_per_checkpoint: int = 1
    drop_last: bool = True


class WindowSampler:
    """Batches of augmented windows of one split of a store (or of every layout of a store
    set); ``epoch(e)`` is deterministic in ``(seed, e)``."""

    def __init__(
        self, store: TokenStore | StoreSet, split: str = "train",
        config: WindowConfig = WindowConfig(), *, seed: int = 0,
    ) -> None:
        self.stores = store.layouts
        n = min(s.manifest.num_tokens for s in self.stores)
        if not 1 <= config.window_size <= n:
            raise ConfigError(f"window_size must lie in [1, {n}] (tokens per model), "
                              f"got {config.window_size}")
        if config.batch_size < 1 or config.views < 1 or config.windows_per_checkpoint < 1:
            raise ConfigError("batch_size, views and windows_per_checkpoint must be positive")
        if config.permute and any(s.spec is None for s in self.stores):
            raise ConfigError(f"{store.path}: the architecture has no permutation spec; "
                              "draw windows with permute=False")
        self.store, self.config, self.seed = store, config, seed
        offsets = np.cumsum([0] + [len(s.rows) for s in self.stores])
        self.rows = np.concatenate([s.split_rows(split) + o
                                    for s, o in zip(self.stores, offsets)])
        self._offsets = offsets
        if len(self.rows) == 0:
            raise ConfigError(f"{store.path}: the {split} split has no checkpoints")
        self.permuters = [WindowPermuter(s.manifest, s.spec) if config.permute else None
                          for s in self.stores]
        self._flat = [s.tokens.reshape(len(s.rows), -1) for s in self.stores]

    def __len__(self) -> int:
        """Batches per epoch."""
        windows = len(self.rows) * self.config.windows_per_checkpoint
        full, rest = divmod(windows, self.config.batch_size)
        return full + (rest > 0 and not self.config.drop_last)

    def epoch(self, epoch: int) -> Iterator[WindowBatch]:
        """The batches of ``windows_per_checkpoint`` passes over the split's checkpoints, each
        in a seeded random order."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = np.concatenate([
            self.rows[torch.randperm(len(self.rows), generator=generator).numpy()]
            for _ in range(self.config.windows_per_checkpoint)
        ])
        b = self.config.batch_size
        for i in range(len(self)):
            yield self.batch(order[i * b : (i + 1) * b], generator)

    def batch(self, rows: np.ndarray, generator: torch.Generator) -> WindowBatch:
        """Windows of the store rows ``rows``, random starts and augmentations from
        ``generator``."""
        c = self.config
        views = torch.empty(c.views, len(rows), c.window_size,
                            self.stores[0].manifest.token_size)
        layout = np.searchsorted(self._offsets, rows, side="right") - 1
        highs = torch.tensor([self.stores[k].manifest.num_tokens - c.window_size + 1
                              for k in layout.tolist()])
        if bool((highs == highs[0]).all()):  # one layout: uniform starts in one draw
            starts = torch.randint(0, int(highs[0]), (len(rows),), generator=generator)
        else:
            starts = (torch.rand(len(rows), generator=generator) * highs).long()
        masks, positions, properties = [], [], []
        for j, (k, start) in enumerate(zip(layout.tolist(), starts.tolist())):
            store, row = self.stores[k], int(rows[j] - self._offsets[k])
            window = slice(start, start + c.window_size)
            for v in range(c.views):
                if self.permuters[k] is not None and not (v == 0 and c.canonical_first):
                    perms = random_permutation(store.spec, generator)
                    source = self.permuters[k].source(perms, start, c.window_size)
                    gather_window(self._flat[k][row], source, out=views[v, j])
                else:
                    views[v, j] = torch.from_numpy(np.array(store.tokens[row, window]))
            masks.append(store.mask[window])
            positions.append(store.positions[window])
            properties.append(store.properties[row])
        mask = torch.stack(masks)
        noisy = add_noise(views, mask, generator, multiplicative=c.multiplicative_noise,
                          additive=c.additive_noise)
        return WindowBatch(
            tokens=noisy, clean=views, mask=mask, positions=torch.stack(positions),
            rows=torch.from_numpy(rows.copy()),
            properties=torch.from_numpy(np.stack(properties)),
        )
