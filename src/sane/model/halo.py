"""Haloing: run a window model over a sequence of any length, chunk by chunk, with context.

The sequence ``[0, N)`` is cut into consecutive *content* chunks of ``window`` tokens (the
last may be shorter). Each chunk passes through the model inside a span of
``window + 2·halo`` tokens (the whole sequence when it is shorter): ``halo`` tokens of
context on each side, shifted inwards at the ends of the sequence so that every span has the
same length and all spans batch together. Only the content part of each output is kept
(SANE §2, "Haloing"). Positions keep their absolute index ``n``.

Memory need not grow with ``N`` beyond the output: the input may be :class:`Sequences` whose
tokens are made batch by batch (e.g. from a state dict), and :func:`haloed_pieces` hands the
outputs over piece by piece instead of stitching ``[B, N, d_out]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
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


@dataclass(frozen=True)
class Sequences:
    """``count`` sequences of ``length`` tokens that are made only when needed:
    ``read(i, start, stop)`` returns tokens ``[stop - start, d_in]`` of sequence ``i`` (for
    instance tokenized from a state dict on demand), so that haloing a model never holds all
    its tokens at once."""

    count: int
    length: int
    read: Callable[[int, int, int], torch.Tensor]


def haloed(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor | Sequences,
    positions: torch.Tensor,
    *,
    window: int,
    halo: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """``fn`` applied to ``x [B, N, d_in]`` (a tensor or :class:`Sequences`) with
    ``positions [N, 3]`` (shared by all B sequences) through haloed chunks, ``batch_size``
    spans per call; returns ``[B, N, d_out]``."""
    b, n = _check(x, positions, batch_size)
    out = None
    for i, start, y in haloed_pieces(fn, x, positions, window=window, halo=halo,
                                     batch_size=batch_size):
        if out is None:
            out = y.new_empty(b, n, y.shape[-1])
        out[i, start : start + len(y)] = y
    return out


def haloed_pieces(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor | Sequences,
    positions: torch.Tensor,
    *,
    window: int,
    halo: int,
    batch_size: int = 64,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """:func:`haloed`, streamed: yields ``(i, start, y)``, the outputs ``y [length, d_out]``
    of tokens ``[start, start + length)`` of sequence ``i``, sequence by sequence in order.

    Memory is one batch of spans whatever ``N``: a :class:`Sequences` input is read one batch
    at a time (one ``read`` per sequence in the batch, covering its spans), and the pieces are
    views of their batch's output (holding one holds that output).
    """
    b, n = _check(x, positions, batch_size)
    if isinstance(x, Sequences):
        read = x.read
    else:
        def read(i: int, start: int, stop: int) -> torch.Tensor:
            return x[i, start:stop]
    span, chunks = halo_chunks(n, window, halo)  # bad arguments fail here, not when iterated
    # Every (sequence, chunk) pair is one span; spans are cut lazily, batch by batch.
    pairs = [(i, c) for i in range(b) for c in chunks]

    def pieces() -> Iterator[tuple[int, int, torch.Tensor]]:
        for first in range(0, len(pairs), batch_size):
            part = pairs[first : first + batch_size]
            spans = []
            for i, same in itertools.groupby(part, key=lambda pair: pair[0]):
                own = [c for _, c in same]
                low = own[0].start
                block = read(i, low, own[-1].start + span)  # [span of the group, d_in]
                spans += [block[c.start - low : c.start - low + span] for c in own]
            x_part = torch.stack(spans)
            where = torch.stack([positions[c.start : c.start + span] for _, c in part])
            y = fn(x_part, where.to(x_part.device))
            for j, (i, c) in enumerate(part):
                yield i, c.content_start, y[j, c.content_start - c.start :
                                            c.content_stop - c.start]

    return pieces()


def _check(x: torch.Tensor | Sequences, positions: torch.Tensor, batch_size: int
           ) -> tuple[int, int]:
    """``(B, N)`` of a haloing input, checked against ``positions`` and ``batch_size``."""
    shape = [x.count, x.length, "d"] if isinstance(x, Sequences) else list(x.shape)
    if len(shape) != 3 or positions.shape != (shape[1], 3):
        raise FormatError(f"haloing takes x [B, N, d] and positions [N, 3], got {shape} and "
                          f"{list(positions.shape)}")
    b, n = shape[0], shape[1]
    if n == 0:
        raise FormatError("haloing needs a sequence of at least one token")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    return b, n
