"""Haloing: run a window model over a sequence of any length, chunk by chunk, with context.

The sequence ``[0, N)`` is cut into consecutive *content* chunks of ``window`` tokens (the
last may be shorter). Each chunk passes through the model inside a span of
``window + 2·halo`` tokens (the whole sequence when it is shorter): ``halo`` tokens of
context on each side, shifted inwards at the ends of the sequence so that every span has the
same length and all spans batch together. Only the content part of each output is kept
(SANE §2, "Haloing"). Positions keep their absolute index ``n``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sane.errors import ConfigError, FormatError


@dataclass(frozen=True)
class Chunk:
    """One pass: the span ``[start, start + length)`` of the sequence goes through the model;
    its outputs ``[content_start - start, content_stop - start)`` are kept."""

    start: int
    content_start: int
    content_stop: int


def halo_chunks(length: int, window: int, halo: int) -> tuple[int, list[Chunk]]:
    """``(span_length, chunks)`` covering ``[0, length)`` with content chunks of ``window``."""
    if window < 1 or halo < 0:
        raise ConfigError(f"haloing needs window >= 1 and halo >= 0, got window {window}, "
                          f"halo {halo}")
    span = min(length, window + 2 * halo)
    chunks = []
    for content_start in range(0, length, window):
        content_stop = min(content_start + window, length)
        start = min(max(content_start - halo, 0), length - span)
        chunks.append(Chunk(start, content_start, content_stop))
    return span, chunks


def haloed(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    positions: torch.Tensor,
    *,
    window: int,
    halo: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """``fn`` applied to ``x [B, N, d_in]`` with ``positions [N, 3]`` (shared by all B
    sequences) through haloed chunks, ``batch_size`` spans per call; returns
    ``[B, N, d_out]``."""
    if x.ndim != 3 or positions.shape != (x.shape[1], 3):
        raise FormatError(f"haloing takes x [B, N, d] and positions [N, 3], got "
                          f"{list(x.shape)} and {list(positions.shape)}")
    if x.shape[1] == 0:
        raise FormatError("haloing needs a sequence of at least one token")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    b, n = x.shape[:2]
    span, chunks = halo_chunks(n, window, halo)
    # Every (sequence, chunk) pair is one span; spans are cut lazily, batch by batch.
    pairs = [(i, c) for i in range(b) for c in chunks]
    out = None
    for first in range(0, len(pairs), batch_size):
        part = pairs[first : first + batch_size]
        spans = torch.stack([x[i, c.start : c.start + span] for i, c in part])
        where = torch.stack([positions[c.start : c.start + span] for _, c in part])
        y = fn(spans, where.to(x.device))
        if out is None:
            out = y.new_empty(b, n, y.shape[-1])
        for j, (i, c) in enumerate(part):
            out[i, c.content_start : c.content_stop] = y[
                j, c.content_start - c.start : c.content_stop - c.start]
    return out
