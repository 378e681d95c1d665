"""Random token windows from a token store, augmented on the fly.

Each sample is one checkpoint of the chosen split, a window of ``window_size`` consecutive
tokens starting at a uniformly random position (each sample its own start), and ``views``
augmented copies of it: a random permutation of the whole model (relative to the stored,
aligned model; gathered by index arithmetic, see :mod:`sane.weights.augment`) and noise. All
views of a sample share the window, so mask and positions are shared too (a permutation moves
rows only within a layer, and every row of a layer has the same length).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sane.errors import ConfigError
from sane.weights.augment import WindowPermuter, add_noise, gather_window
from sane.weights.permutations import random_permutation
from sane.weights.store import TokenStore


@dataclass(frozen=True)
class WindowBatch:
    """``tokens`` ``[V, B, W, d_t]`` float32 (V views); ``clean`` the same views before noise;
    ``mask`` ``[B, W, d_t]`` bool;
    ``positions`` ``[B, W, 3]`` int64 ``(n, l, k)``; ``rows`` ``[B]`` store rows;
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
    """Batches of augmented windows of one split; ``epoch(e)`` is deterministic in
    ``(seed, e)``."""

    def __init__(
        self, store: TokenStore, split: str = "train", config: WindowConfig = WindowConfig(),
        *, seed: int = 0,
    ) -> None:
        n = store.manifest.num_tokens
        if not 1 <= config.window_size <= n:
            raise ConfigError(f"window_size must lie in [1, {n}] (tokens per model), "
                              f"got {config.window_size}")
        if config.batch_size < 1 or config.views < 1 or config.windows_per_checkpoint < 1:
            raise ConfigError("batch_size, views and windows_per_checkpoint must be positive")
        if config.permute and store.spec is None:
            raise ConfigError(f"{store.path}: the architecture has no permutation spec; "
                              "draw windows with permute=False")
        self.store, self.config, self.seed = store, config, seed
        self.rows = store.split_rows(split)
        if len(self.rows) == 0:
            raise ConfigError(f"{store.path}: the {split} split has no checkpoints")
        self.permuter = WindowPermuter(store.manifest, store.spec) if config.permute else None
        self._flat = store.tokens.reshape(len(store.rows), -1)

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
        c, n = self.config, self.store.manifest.num_tokens
        starts = torch.randint(0, n - c.window_size + 1, (len(rows),), generator=generator)
        views = torch.empty(c.views, len(rows), c.window_size, self.store.manifest.token_size)
        windows = [slice(start, start + c.window_size) for start in starts.tolist()]
        for j, (row, window) in enumerate(zip(rows.tolist(), windows)):
            for v in range(c.views):
                if self.permuter is not None and not (v == 0 and c.canonical_first):
                    perms = random_permutation(self.store.spec, generator)
                    source = self.permuter.source(perms, window.start, c.window_size)
                    gather_window(self._flat[row], source, out=views[v, j])
                else:
                    views[v, j] = torch.from_numpy(np.array(self.store.tokens[row, window]))
        mask = torch.stack([self.store.mask[w] for w in windows])
        noisy = add_noise(views, mask, generator, multiplicative=c.multiplicative_noise,
                          additive=c.additive_noise)
        return WindowBatch(
            tokens=noisy, clean=views, mask=mask,
            positions=torch.stack([self.store.positions[w] for w in windows]),
            rows=torch.from_numpy(rows.copy()),
            properties=torch.from_numpy(self.store.properties[rows]),
        )
