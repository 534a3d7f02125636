"""Gaussian class mixtures whose mutual information I(X;Y) is known (Qin et al.'s synthetic setup).

Class ``k`` draws ``x ~ N(m_k · 1_d, I_d)`` with a scalar offset ``m_k``; the paper uses five
classes with ``m = (0, +2, −2, +4, −4)``, 10,000 training points per class (balanced) or
5k/10k/15k/20k/25k (imbalanced), and a test set of one fifth of the training counts.
:func:`centred_means` builds the same pattern for any number of classes and spacing (more classes
and a smaller spacing overlap more, so I(X;Y) lies further below log K).
"""

from __future__ import annotations

import numpy as np
import torch

PAPER_MEANS: tuple[float, ...] = (0.0, 2.0, -2.0, 4.0, -4.0)
"""The per-class offsets ``m_k`` of the paper's five classes (class mean ``m_k · 1_d``)."""

IMBALANCE_RATIOS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5)
"""Imbalanced counts relative to the balanced per-class count (10k -> 5k/10k/15k/20k/25k)."""

BALANCES: tuple[str, ...] = ("balanced", "imbalanced")


def centred_means(num_classes: int, spacing: float) -> tuple[float, ...]:
    """``num_classes`` offsets ``spacing`` apart, centred on 0, ordered by ``|m|`` (positive first).

    ``centred_means(5, 2.0)`` is :data:`PAPER_MEANS`; the order decides which class gets which
    imbalance ratio (:func:`imbalance_ratios`).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    if spacing <= 0:
        raise ValueError(f"spacing={spacing} must be > 0")
    grid = [spacing * (k - (num_classes - 1) / 2) for k in range(num_classes)]
    return tuple(float(m) + 0.0 for m in sorted(grid, key=lambda m: (round(abs(m), 9), -m)))


def imbalance_ratios(num_classes: int) -> tuple[float, ...]:
    """Imbalanced counts relative to the balanced count: evenly from 0.5 to 2.5 (the paper's
    :data:`IMBALANCE_RATIOS` for five classes)."""
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    return tuple(float(r) for r in np.linspace(0.5, 2.5, num_classes))


def class_counts(balance: str, n_per_class: int, num_classes: int = 5) -> tuple[int, ...]:
    """Per-class sample counts of the paper's setup.

    Args:
        balance: ``"balanced"`` (``n_per_class`` each) or ``"imbalanced"`` (``n_per_class`` times
            :func:`imbalance_ratios`: 0.5, 1, 1.5, 2, 2.5 for five classes).
        n_per_class: the balanced per-class count (the paper: 10,000 for training).
        num_classes: number of classes (the paper: 5).

    Returns:
        One count per class, in the order of the class means.
    """
    if balance not in BALANCES:
        raise ValueError(f"balance={balance!r}; choose one of {BALANCES}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be >= 1")
    if balance == "balanced":
        return (n_per_class,) * num_classes
    return tuple(max(1, round(r * n_per_class)) for r in imbalance_ratios(num_classes))


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
