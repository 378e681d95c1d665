"""An exact stand-in for SANE, shared by the sampling tests: with it and no noise, every
sample is one whole prompt, so the sampling path around the model can be checked exactly."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sane.model.halo import Sequences


class IdentityAutoencoder:
    """Stands in for SANE: latents are the tokens themselves, so sampling is exact."""

    def __init__(self, token_size: int) -> None:
        self.config = SimpleNamespace(d_latent=token_size, token_size=token_size,
                                      window_size=16)

    def eval(self) -> IdentityAutoencoder:
        return self

    def encode_sequence(self, tokens, positions, *, window=None, halo=None):
        """The tokens, however they are cut into windows."""
        if isinstance(tokens, Sequences):  # made on demand, as the pipeline gives them
            return torch.stack([tokens.read(i, 0, tokens.length) for i in range(tokens.count)])
        return tokens.clone()

    def decode_sequence(self, z, positions):
        return z.clone()

    def decode_pieces(self, z, positions):
        """Each model's tokens as one piece: ``(i, 0, tokens [N, d_t])``."""
        return ((i, 0, z[i].clone()) for i in range(len(z)))


class IdentitySANE:
    """``SANE.from_pretrained`` stand-in whose model is :class:`IdentityAutoencoder` for
    tokens of ``token_size`` values."""

    def __init__(self, token_size: int = 201) -> None:
        self.token_size = token_size

    def from_pretrained(self, path, **options):
        return IdentityAutoencoder(self.token_size)
