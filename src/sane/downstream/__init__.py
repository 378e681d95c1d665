"""Downstream uses of SANE: features of a population and linear probes on them; sampling new
models with batch-norm conditioning."""

from sane.downstream.features import baseline_features, sane_embeddings, store_features
from sane.downstream.probes import ALPHAS, LinearProbe, markdown_table, probe_table
from sane.downstream.sampling import Samples, SamplingConfig, Target, kde_sample, sample_models
from sane.zoo.batchnorm import condition_batchnorm

__all__ = ["ALPHAS", "LinearProbe", "Samples", "SamplingConfig", "Target", "baseline_features",
           "condition_batchnorm", "kde_sample", "markdown_table", "probe_table",
           "sample_models", "sane_embeddings", "store_features"]
