"""SANE's pretraining losses: masked reconstruction and NT-Xent, mixed by ``gamma``.

``L = (1 - gamma) · L_rec + gamma · L_c`` (SANE Eqs. 5-6). The reconstruction error is the mean
over real weights only: padding neither counts in the error nor dilutes the mean (the
reference code averaged over padding too, which scales the loss by the fraction of real
values and so by the architecture).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sane.errors import FormatError


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is True (``[..., d_t]`` each; the
    mask broadcasts over leading view dimensions)."""
    if prediction.shape != target.shape:
        raise FormatError(f"prediction {list(prediction.shape)} and target "
                          f"{list(target.shape)} differ in shape")
    mask = mask.expand_as(target)
    count = mask.sum()
    if count == 0:
        raise FormatError("the mask selects no real values")
    return ((prediction - target) ** 2 * mask).sum() / count


def squared_sums(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(SSE, SST)`` over the masked entries, SST about their mean: the explained variance
    of several batches is ``1 - sum(SSE) / sum(SST)``."""
    mask = mask.expand_as(target)
    real = target[mask]
    return ((prediction[mask] - real) ** 2).sum(), ((real - real.mean()) ** 2).sum()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR) of two views ``a``, ``b`` ``[B, d]``: row ``i`` of ``a`` and of ``b``
    are positives, all other ``2B - 2`` rows negatives; cosine similarity over
    ``temperature``; cross-entropy averaged over the ``2B`` rows."""
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2:
        raise FormatError(f"nt_xent needs two [B, d] views with B >= 2, got {list(a.shape)} "
                          f"and {list(b.shape)}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a row is not its own negative
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(logits, positives)


def sane_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    projections: tuple[torch.Tensor, torch.Tensor],
    *,
    gamma: float,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """``{"loss", "reconstruction", "contrast"}``: the mixed loss and its two parts."""
    rec = masked_mse(reconstruction, target, mask)
    con = nt_xent(*projections, temperature)
    return {"loss": (1 - gamma) * rec + gamma * con, "reconstruction": rec, "contrast": con}
