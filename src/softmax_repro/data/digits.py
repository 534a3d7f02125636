"""scikit-learn's bundled Digits (1,797 8×8 images, 10 classes), split deterministically."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from softmax_repro.config import check_in_range, check_int
from softmax_repro.data.mnist1d import Split

NUM_CLASSES = 10


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """Stratified train/test split of Digits; ``x`` float32 ``[N, 64]`` scaled to [0, 1]."""
    check_in_range("test_fraction", test_fraction, 0.05, 0.95)
    check_int("seed", seed, 0)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    return Split(
        torch.as_tensor(x_tr),
        torch.as_tensor(y_tr, dtype=torch.int64),
        torch.as_tensor(x_te),
        torch.as_tensor(y_te, dtype=torch.int64),
    )
