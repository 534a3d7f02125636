"""Long-tailed subsampling (Cui et al. 2019): class y keeps ``int(n_max · IF^(−y/(C−1)))``."""

from __future__ import annotations

import numpy as np
import torch

from softmax_repro.config import ConfigError, check_int


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class counts ``int(n_max · imbalance^(−y/(C−1)))`` for ``y = 0..C−1``.

    ``imbalance`` (the imbalance factor) is ``n_max / n_min`` up to rounding; 1 means balanced.
    """
    check_int("n_max", n_max, 1)
    check_int("num_classes", num_classes, 2)
    if isinstance(imbalance, bool) or not isinstance(imbalance, int | float) or imbalance < 1:
        raise ConfigError(f"imbalance={imbalance!r} is not allowed; it must be a number >= 1")
    counts = [int(n_max * imbalance ** (-y / (num_classes - 1))) for y in range(num_classes)]
    if counts[-1] < 1:
        raise ConfigError(
            f"imbalance={imbalance} with n_max={n_max} leaves class "
            f"{num_classes - 1} empty; use n_max >= imbalance"
        )
    return counts


def subsample_longtail(labels: torch.Tensor, counts: list[int], seed: int) -> torch.Tensor:
    """Indices of a random subset of ``labels`` with exactly ``counts[y]`` examples of class y.

    Args:
        labels: ``[N]`` int64 class labels.
        counts: wanted examples per class.
        seed: seeds which examples are kept.

    Returns:
        ``[sum(counts)]`` int64 indices, sorted.

    Raises:
        ConfigError: a class has fewer examples than asked for.
    """
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    keep = []
    for cls, count in enumerate(counts):
        pool = np.flatnonzero(labels_np == cls)
        if count > pool.size:
            raise ConfigError(
                f"class {cls} has {pool.size} examples but {count} were asked for; lower n_max"
            )
        keep.append(rng.choice(pool, size=count, replace=False))
    return torch.as_tensor(np.sort(np.concatenate(keep)), dtype=torch.int64)
