"""Training SANE: window sampling from token stores (the pretraining loop comes later)."""

from sane.train.windows import WindowBatch, WindowConfig, WindowSampler

__all__ = ["WindowBatch", "WindowConfig", "WindowSampler"]
