"""Layer-wise analysis (SANE §4) on arrays: the spread of each layer's token latents, and how
a model-level metric relates to test accuracy.

The SANE metric of layer ``l`` of a model is ``ẑ_l``: the standard deviation of that layer's
token latents over its tokens, averaged over the latent dimensions (SANE Eq. 8). The stage
that computes it for a store beside the spectral metrics is :mod:`sane.stages.analyze`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats


def layer_spread(latents: torch.Tensor, layer: torch.Tensor, layers: int) -> np.ndarray:
    """``ẑ_l`` of models with token ``latents [B, N, d_z]`` whose tokens belong to layers
    ``layer [N]`` (of ``layers``): ``[B, layers]`` float64 (0 for a layer of one token)."""
    z = latents.double()
    out = np.empty((len(z), layers))
    for index in range(layers):
        mine = z[:, layer == index]  # [B, tokens of the layer, d_z]
        spread = mine.std(dim=1) if mine.shape[1] > 1 else torch.zeros_like(mine[:, 0])
        out[:, index] = spread.mean(dim=1).numpy()
    return out


def correlations(values: np.ndarray, accuracy: np.ndarray) -> dict[str, float | None]:
    """Pearson and Spearman correlation of ``values`` with ``accuracy`` over the rows where
    both are finite (None with fewer than three such rows or a constant side), and the number
    of rows used."""
    keep = np.isfinite(values) & np.isfinite(accuracy)
    if keep.sum() < 3 or np.ptp(values[keep]) == 0 or np.ptp(accuracy[keep]) == 0:
        return {"pearson": None, "spearman": None, "checkpoints": int(keep.sum())}
    return {"pearson": float(stats.pearsonr(values[keep], accuracy[keep])[0]),
            "spearman": float(stats.spearmanr(values[keep], accuracy[keep])[0]),
            "checkpoints": int(keep.sum())}
