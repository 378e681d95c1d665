"""Haloing: chunks cover the sequence, spans carry context, stitching is exact."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sane.errors import ConfigError, FormatError
from sane.model import SANE, SANEConfig
from sane.model.halo import Sequences, halo_chunks, haloed, haloed_pieces
from sane.weights import detokenize, tokenize
from sane.weights.token_ranges import detokenize_pieces

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


def test_sequences_read_on_demand_give_the_same_bits_and_stream_in_bounded_reads():
    model = SANE(CONFIG).eval()
    tokens, positions = _sequence(3, 57, seed=2)
    reads = []

    def read(i, start, stop):
        reads.append((i, start, stop))
        return tokens[i, start:stop].clone()

    with torch.no_grad():
        expected = model.encode_sequence(tokens, positions, window=6, halo=2, batch_size=4)
        lazy = model.encode_sequence(Sequences(3, 57, read), positions, window=6, halo=2,
                                     batch_size=4)
        assert torch.equal(lazy, expected)
        embedded = model.embed(Sequences(3, 57, read), positions, window=6, halo=2,
                               batch_size=4)
        assert torch.equal(embedded, expected.mean(dim=1))
    # One read per sequence per batch of 4 spans of 10 tokens: at most 3·6 + 10 tokens.
    assert max(stop - start for _, start, stop in reads) <= 3 * 6 + 10
    assert {i for i, _, _ in reads} == {0, 1, 2}


def test_pieces_stream_the_sequence_in_order():
    x = torch.randn(2, 23, 4)
    n = torch.arange(23)
    positions = torch.stack([n, n % 4, n % 7], -1)
    pieces = [(i, start, y.clone()) for i, start, y in
              haloed_pieces(lambda s, p: s * 2, x, positions, window=5, halo=3, batch_size=3)]
    assert [(i, start) for i, start, _ in pieces] == [(i, s) for i in (0, 1)
                                                      for s in range(0, 23, 5)]
    for i, start, y in pieces:
        assert torch.equal(y, 2 * x[i, start : start + len(y)])


def test_decoded_pieces_detokenize_like_the_whole_decoded_sequence():
    model = SANE(CONFIG).eval()
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    tokens = tokenize(net.state_dict(), 5)  # rows of 5 and 4 values: 5 tokens
    positions = tokens.positions
    z = torch.randn(2, 5, 3)
    with torch.no_grad():
        whole = model.decode_sequence(z, positions, window=2, halo=1)
        pieces = model.decode_pieces(z, positions, window=2, halo=1)
        for i, own in itertools.groupby(pieces, key=lambda piece: piece[0]):
            state = detokenize_pieces(((start, y) for _, start, y in own), tokens.manifest)
            expected = detokenize(whole[i], tokens.manifest)
            assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_bad_haloing_arguments():
    with pytest.raises(ConfigError, match="window >= 1"):
        halo_chunks(10, 0, 2)
    with pytest.raises(FormatError, match=r"positions \[N, 3\]"):
        haloed(lambda s, p: s, torch.zeros(1, 5, 2), torch.zeros(4, 3, dtype=torch.long),
               window=2, halo=1)
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        haloed(lambda s, p: s, torch.zeros(1, 5, 2), torch.zeros(5, 3, dtype=torch.long),
               window=2, halo=1, batch_size=0)
