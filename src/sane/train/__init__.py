"""Training SANE: window sampling from token stores, the pretraining loop, its run directory."""

from sane.train.config import PretrainConfig, load_pretrain_config
from sane.train.pretraining import pretrain
from sane.train.windows import WindowBatch, WindowConfig, WindowSampler

__all__ = ["PretrainConfig", "WindowBatch", "WindowConfig", "WindowSampler",
           "load_pretrain_config", "pretrain"]
