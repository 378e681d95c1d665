"""Training SANE: window sampling from token stores and the pretraining loop."""

from sane.train.pretraining import PretrainConfig, load_pretrain_config, pretrain
from sane.train.windows import WindowBatch, WindowConfig, WindowSampler

__all__ = ["PretrainConfig", "WindowBatch", "WindowConfig", "WindowSampler",
           "load_pretrain_config", "pretrain"]
