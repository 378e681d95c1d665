"""Downstream uses of SANE: features of a population and linear probes on them."""

from sane.downstream.features import baseline_features, sane_embeddings, store_features
from sane.downstream.probes import ALPHAS, LinearProbe, markdown_table, probe_table

__all__ = ["ALPHAS", "LinearProbe", "baseline_features", "markdown_table", "probe_table",
           "sane_embeddings", "store_features"]
