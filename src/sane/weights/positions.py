"""Token positions for an architecture SANE was not pretrained on, mapped into the range it
was pretrained on.

SANE learns one embedding per global index ``n``, layer ``l`` and row ``k`` (a position
table each, :mod:`sane.model.transformer`), and only the entries its pretraining zoo used
are ever trained: a deeper or wider model's tokens would fall on untrained entries or
outside the tables. The tokens themselves do not depend on the architecture (every token
holds ``token_size`` values of one row), so a target model's token is given the position of
the *corresponding* token of the pretraining architecture, relative to each layer:

- layer ``l`` of ``L_t`` target layers → ``round(l · (L_s − 1) / (L_t − 1))`` of the ``L_s``
  source layers (first to first, last to last, the ones between spread evenly);
- row ``k`` of ``R_t`` rows in its layer → ``floor(k · R_s / R_t)`` of the ``R_s`` rows of
  that source layer (its relative place in the layer);
- chunk ``c`` of a row split into several tokens → ``min(c, C_s − 1)`` of the source row's
  ``C_s`` chunks;
- ``n`` is then the source token at that layer, row and chunk.

A target with the source's own layout maps onto itself. Headroom in the position tables
would not help: entries no pretraining window visited keep their random initialization.
"""

from __future__ import annotations

import torch

from sane.errors import FormatError
from sane.weights.manifest import TokenManifest


def relative_positions(source: TokenManifest, target: TokenManifest) -> torch.Tensor:
    """``[N_t, 3]`` int64 positions ``(n, l, k)`` of ``target``'s tokens within ``source``'s
    layout (see the module docstring)."""
    if source.token_size != target.token_size:
        raise FormatError(f"the target's tokens hold {target.token_size} values, the "
                          f"pretrained SANE's {source.token_size}: tokenize the target with "
                          f"token_size={source.token_size}")
    if not source.layers or not target.layers:
        raise FormatError("relative positions need at least one tokenized layer on each side")
    rows = []
    last_source, last_target = len(source.layers) - 1, len(target.layers) - 1
    for index, layer in enumerate(target.layers):
        mapped = round(index * last_source / last_target) if last_target else 0
        src = source.layers[mapped]
        row = torch.arange(layer.rows) * src.rows // layer.rows
        chunk = torch.clamp(torch.arange(layer.tokens_per_row), max=src.tokens_per_row - 1)
        row, chunk = row.repeat_interleave(layer.tokens_per_row), chunk.repeat(layer.rows)
        n = src.start + row * src.tokens_per_row + chunk
        rows.append(torch.stack([n, torch.full_like(n, mapped), row], dim=1))
    return torch.cat(rows)
