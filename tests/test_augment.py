"""Window permutations as index maps over the flat token store, and noise."""

import numpy as np
import pytest
import torch

from sane.errors import FormatError
from sane.weights import apply_permutation, permutation_spec, random_permutation, tokenize
from sane.weights.augment import WindowPermuter, add_noise, gather_window
from sane.zoo.architectures import ArchConfig, build_model

CASES = [
    (ArchConfig(name="cnn_s"), None, False),
    (ArchConfig(name="cnn_s", dropout=0.5), 7, False),  # rows split over several tokens
    (ArchConfig(name="cnn_l", in_channels=3, input_size=32), 64, False),
    (ArchConfig(name="mlp", input_size=6, hidden=(12, 8)), 5, False),
    (ArchConfig(name="cnn1d", input_size=40), 30, False),
    pytest.param(ArchConfig(name="resnet18", in_channels=3, input_size=32), 288, True,
                 marks=pytest.mark.slow),  # BN tokens too
]


def _trained_like(config):
    """A model whose weights (and batch-norm statistics) are all distinct random values."""
    generator = torch.Generator().manual_seed(0)
    state = build_model(config, seed=0).state_dict()
    return {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in state.items()}


@pytest.mark.parametrize(("config", "token_size", "batchnorm"), CASES)
def test_gathered_window_equals_window_of_permuted_and_retokenized_model(
    config, token_size, batchnorm
):
    state = _trained_like(config)
    model = build_model(config)
    spec = permutation_spec(model)
    tokens = tokenize(state, token_size, model=model, include_batchnorm=batchnorm)
    permuter = WindowPermuter(tokens.manifest, spec)
    flat = tokens.tokens.numpy().reshape(-1)
    n = tokens.manifest.num_tokens
    for seed in range(3):
        perms = random_permutation(spec, torch.Generator().manual_seed(seed))
        permuted = tokenize(apply_permutation(state, spec, perms), token_size, model=model,
                            include_batchnorm=batchnorm).tokens
        assert not torch.equal(permuted, tokens.tokens)
        for start, length in [(0, n), (n // 3, min(97, n - n // 3)), (n - 1, 1)]:
            window = gather_window(flat, permuter.source(perms, start, length))
            assert torch.equal(window, permuted[start : start + length])


def test_identity_is_a_plain_slice_and_padding_is_marked():
    state = _trained_like(ArchConfig(name="cnn_s"))
    tokens = tokenize(state, 16)
    permuter = WindowPermuter(tokens.manifest, permutation_spec(build_model(ArchConfig())))
    source = permuter.source(None, 10, 50)
    assert np.array_equal(source < 0, ~tokens.mask[10:60].numpy())
    window = gather_window(tokens.tokens.numpy().reshape(-1), source)
    assert torch.equal(window, tokens.tokens[10:60])


def test_bad_windows_and_permutations_raise():
    tokens = tokenize(_trained_like(ArchConfig(name="cnn_s")))
    spec = permutation_spec(build_model(ArchConfig()))
    permuter = WindowPermuter(tokens.manifest, spec)
    with pytest.raises(FormatError, match="outside the 48 tokens"):
        permuter.source(None, 40, 9)
    perms = random_permutation(spec, torch.Generator().manual_seed(0))
    perms.pop(next(iter(perms)))
    with pytest.raises(FormatError, match="missing or malformed"):
        permuter.source(perms, 0, 4)


def test_noise_touches_real_values_only_and_is_seeded():
    tokens = tokenize(_trained_like(ArchConfig(name="cnn_s")))
    x, mask = tokens.tokens, tokens.mask

    def noisy(seed, **scales):
        return add_noise(x, mask, torch.Generator().manual_seed(seed), **scales)

    a = noisy(1, multiplicative=0.1, additive=0.01)
    assert torch.equal(a, noisy(1, multiplicative=0.1, additive=0.01))
    assert not torch.equal(a, noisy(2, multiplicative=0.1, additive=0.01))
    assert torch.all(a[~mask] == 0) and torch.all(a[mask] != x[mask])
    ratio = (noisy(3, multiplicative=0.1)[mask] / x[mask] - 1).std()
    assert 0.08 < ratio < 0.12  # multiplicative: x·(1 + 0.1·ε)
    assert torch.equal(noisy(4), x)
