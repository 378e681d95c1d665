"""sane: weight-space learning with SANE (Sequential Autoencoder for Neural Embeddings).

Data flows one way: ``data -> zoo -> weights -> train -> downstream``; each stage reads and
writes files on disk so that the ``sane`` command can resume from any of them.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``sane.SANE`` and ``sane.Pipeline`` without importing torch for ``import sane`` (the
    CLI stays fast)."""
    if name == "SANE":
        from sane.model import SANE

        return SANE
    if name == "Pipeline":
        from sane.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'sane' has no attribute {name!r}")
