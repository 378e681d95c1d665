"""scikit-learn's handwritten digits (1,797 images of 8×8, 10 classes): the embedded default.

The data ship inside the scikit-learn wheel, so this dataset works on any machine. Pixel
values are integers 0..16; there is no official test set, so the split is 70/15/15.
"""

from __future__ import annotations

import numpy as np

from sane.data.dataset import RawImages


def read_digits() -> RawImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None]  # [N, 1, 8, 8]
    return RawImages(
        train_x=images, train_y=np.asarray(bunch.target, dtype=np.int64), test_x=None,
        test_y=None, num_classes=10, source="sklearn.datasets.load_digits", scale=16.0,
    )
