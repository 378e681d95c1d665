"""The SANE autoencoder: transformer blocks, the model, its losses."""

from sane.model.losses import masked_mse, nt_xent, sane_loss, squared_sums
from sane.model.sane import PRESETS, SANE, SANEConfig, describe

__all__ = ["PRESETS", "SANE", "SANEConfig", "describe", "masked_mse", "nt_xent", "sane_loss",
           "squared_sums"]
