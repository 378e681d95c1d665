"""sane: weight-space learning with SANE (Sequential Autoencoder for Neural Embeddings).

Data flows one way. A module imports only from its own layer or lower ones, lowest first:
the top-level helpers (``sane.errors``, ``sane.atomic``, ``sane.settings``, ...), ``data``,
``zoo``, ``weights``, ``model``, ``downstream``, ``run``, ``pipeline``, ``train``, ``stages``,
``reproduce``, and the ``sane`` command (``commands``, ``cli``); no two modules import each
other (``tests/test_layering.py``). Each stage reads and writes files on disk so that the
``sane`` command can resume from any of them.
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
