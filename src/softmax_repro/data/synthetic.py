"""Gaussian class mixtures whose mutual information I(X;Y) is known (Qin et al.'s synthetic setup).

Class ``k`` draws ``x ~ N(m_k · 1_d, I_d)`` with a scalar offset ``m_k``; the paper uses five
classes with ``m = (0, +2, −2, +4, −4)``, 10,000 training points per class (balanced) or
5k/10k/15k/20k/25k (imbalanced), and a test set of one fifth of the training counts.
"""

from __future__ import annotations

import numpy as np
import torch

PAPER_MEANS: tuple[float, ...] = (0.0, 2.0, -2.0, 4.0, -4.0)
"""The per-class offsets ``m_k`` of the paper's five classes (class mean ``m_k · 1_d``)."""

IMBALANCE_RATIOS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5)
"""Imbalanced counts relative to the balanced per-class count (10k -> 5k/10k/15k/20k/25k)."""

BALANCES: tuple[str, ...] = ("balanced", "imbalanced")


def class_counts(balance: str, n_per_class: int) -> tuple[int, ...]:
    """Per-class sample counts of the paper's setup.

    Args:
        balance: ``"balanced"`` (``n_per_class`` each) or ``"imbalanced"`` (``n_per_class`` times
            0.5, 1, 1.5, 2, 2.5 for the classes in :data:`PAPER_MEANS` order).
        n_per_class: the balanced per-class count (the paper: 10,000 for training).

    Returns:
        One count per class, in :data:`PAPER_MEANS` order.
    """
    if balance not in BALANCES:
        raise ValueError(f"balance={balance!r}; choose one of {BALANCES}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be >= 1")
    if balance == "balanced":
        return (n_per_class,) * len(PAPER_MEANS)
    return tuple(max(1, round(r * n_per_class)) for r in IMBALANCE_RATIOS)


def sample_gaussian_classes(
    means: tuple[float, ...], counts: tuple[int, ...], dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``counts[k]`` points from ``N(means[k] · 1_dim, I_dim)`` for each class ``k``.

    Args:
        means: scalar offset per class.
        counts: number of points per class (same length as ``means``).
        dim: the input dimension d.
        seed: seed of the numpy generator (the draw is a pure function of the arguments).

    Returns:
        ``x`` float32 ``[N, dim]`` and ``y`` int64 ``[N]`` with ``N = sum(counts)``, shuffled.
    """
    if len(means) != len(counts):
        raise ValueError(f"{len(means)} means but {len(counts)} counts")
    if dim < 1:
        raise ValueError(f"dim={dim} must be >= 1")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(means)), counts)
    offsets = np.asarray(means, dtype=np.float64)[labels]
    x = offsets[:, None] + rng.standard_normal((labels.size, dim))
    order = rng.permutation(labels.size)
    return (
        torch.from_numpy(x[order].astype(np.float32)),
        torch.from_numpy(labels[order].astype(np.int64)),
    )
