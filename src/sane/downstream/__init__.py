"""Downstream uses of SANE: features of a population and linear probes on them; sampling new
models with batch-norm conditioning, and the copy baselines they are judged against."""

from sane.downstream.copies import COPIES, copy_baselines
from sane.downstream.features import baseline_features
from sane.downstream.probes import (
    ALPHAS,
    ClassRow,
    LinearProbe,
    ProbeRow,
    markdown_table,
    probe_table,
)
from sane.downstream.sampling import (
    Samples,
    SamplingConfig,
    Scores,
    Target,
    kde_sample,
)
from sane.zoo.batchnorm import condition_batchnorm

__all__ = ["ALPHAS", "COPIES", "ClassRow", "LinearProbe", "ProbeRow", "Samples",
           "SamplingConfig", "Scores", "Target", "baseline_features", "condition_batchnorm",
           "copy_baselines", "kde_sample",
           "markdown_table", "probe_table"]
