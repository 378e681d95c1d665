"""Haloing: chunks cover the sequence, spans carry context, stitching is exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sane.errors import ConfigError, FormatError
from sane.model import SANE, SANEConfig
from sane.model.halo import halo_chunks, haloed

CONFIG = SANEConfig(token_size=5, max_positions=(64, 4, 16), d_model=16, n_heads=2,
                    n_layers=1, d_latent=3, window_size=8)


@given(length=st.integers(1, 200), window=st.integers(1, 40), halo=st.integers(0, 20))
def test_chunks_partition_the_sequence_and_spans_hold_their_context(length, window, halo):
    span, chunks = halo_chunks(length, window, halo)
    assert span == min(length, window + 2 * halo)
    covered = []
    for c in chunks:
        assert 0 <= c.start <= c.content_start < c.content_stop <= c.start + span <= length
        assert c.content_stop - c.content_start <= window
        # As much context as fits: halo tokens on each side unless the sequence ends first.
        assert c.content_start - c.start >= min(halo, c.content_start)
        assert c.start + span - c.content_stop >= min(halo, length - c.content_stop)
        covered += range(c.content_start, c.content_stop)
    assert covered == list(range(length))


def test_stitching_puts_every_output_back_in_place():
    x = torch.randn(3, 23, 4)
    n = torch.arange(23)
    positions = torch.stack([n, n % 4, n % 7], -1)
    out = haloed(lambda s, p: torch.cat([s, p.float()], -1), x, positions, window=5, halo=3,
                 batch_size=4)
    assert torch.equal(out[..., :4], x)
    assert torch.equal(out[..., 4:], positions.float().expand(3, -1, -1))


def _sequence(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n)
    return torch.randn(b, n, 5, generator=g), torch.stack([i, i % 4, i % 16], -1)


def test_a_span_covering_the_model_gives_the_full_sequence_encoding():
    model = SANE(CONFIG).eval()
    tokens, positions = _sequence(2, 30)
    with torch.no_grad():
        full = model.encode(tokens, positions.expand(2, -1, -1))
        assert torch.equal(model.encode_sequence(tokens, positions, window=30, halo=0), full)
        torch.testing.assert_close(  # every chunk sees the whole model through its halo
            model.encode_sequence(tokens, positions, window=10, halo=10), full)
        # Without enough context the chunks differ from the full pass.
        assert not torch.allclose(model.encode_sequence(tokens, positions, window=10, halo=0),
                                  full, atol=1e-4)


def test_batch_size_and_decode_and_embed():
    model = SANE(CONFIG).eval()
    tokens, positions = _sequence(3, 41, seed=1)
    with torch.no_grad():
        z = model.encode_sequence(tokens, positions)  # defaults: window 4, halo 2
        assert model.halo_defaults() == (4, 2) and z.shape == (3, 41, 3)
        torch.testing.assert_close(model.encode_sequence(tokens, positions, batch_size=1), z)
        assert model.decode_sequence(z, positions).shape == (3, 41, 5)
        torch.testing.assert_close(model.embed(tokens, positions), z.mean(dim=1))


def test_bad_haloing_arguments():
    with pytest.raises(ConfigError, match="window >= 1"):
        halo_chunks(10, 0, 2)
    with pytest.raises(FormatError, match=r"positions \[N, 3\]"):
        haloed(lambda s, p: s, torch.zeros(1, 5, 2), torch.zeros(4, 3, dtype=torch.long),
               window=2, halo=1)
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        haloed(lambda s, p: s, torch.zeros(1, 5, 2), torch.zeros(5, 3, dtype=torch.long),
               window=2, halo=1, batch_size=0)
