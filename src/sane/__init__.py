"""sane: weight-space learning with SANE (Sequential Autoencoder for Neural Embeddings).

Data flows one way: ``data -> zoo -> weights -> train -> downstream``; each stage reads and
writes files on disk so that the ``sane`` command can resume from any of them.
"""

__version__ = "0.1.0"
