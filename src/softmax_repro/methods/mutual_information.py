"""Mutual information I(X;Y) of Gaussian class mixtures: the exact value and neural estimates.

Exact value: for the classes ``x | y=k ~ N(m_k · 1_d, I_d)`` only the component of ``x`` along
``1_d/√d`` differs between classes (mean ``m_k √d``, unit variance); the orthogonal part is the same
``N(0, I)`` for every class. So I(X;Y) equals the MI of a 1-D mixture, computed here by quadrature.

Estimators (all in nats, all means of a point-wise score over a labelled test set):

* ``softmax``: log K − CE of a network trained with softmax cross-entropy (Qin et al.); it estimates
  I(X;Y) when the classes are balanced.
* ``pc_softmax``: mean of log[exp(z_y) / Σ_k p_k exp(z_k)] (probability-corrected softmax) of a
  network trained with the PC-softmax loss. That loss equals Balanced Softmax plus a per-class
  constant (−log[e^{z_y}/Σ p_k e^{z_k}] = −log[p_y e^{z_y}/Σ p_k e^{z_k}] + log p_y), so its
  gradient is Balanced Softmax's: training reuses :class:`~losses.BalancedSoftmaxLoss`.
* ``infonce`` (van den Oord et al.), ``nwj`` (Nguyen, Wainwright, Jordan) and ``mine`` (the
  Donsker–Varadhan bound that MINE maximises) with a critic ``f(x, y) = T(x)_y``. Because Y is
  discrete, expectations under the product of marginals are summed exactly over the K labels
  weighted by the label prior instead of shuffling pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import logsumexp as np_logsumexp
from scipy.stats import norm

from softmax_repro.methods.losses import BalancedSoftmaxLoss

MI_METHODS: tuple[str, ...] = ("softmax", "pc_softmax", "infonce", "nwj", "mine")


def _normalised(priors: Sequence[float]) -> np.ndarray:
    p = np.asarray(priors, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any(p <= 0):
        raise ValueError(f"priors must be a non-empty list of positive numbers, got {priors!r}")
    return p / p.sum()


def entropy(priors: Sequence[float]) -> float:
    """Entropy H(Y) in nats of the label distribution ``priors`` (normalised here)."""
    p = _normalised(priors)
    return float(-(p * np.log(p)).sum())


def exact_mutual_information(
    means: Sequence[float], priors: Sequence[float], dim: int = 1, grid_points: int = 200_001
) -> float:
    """Exact I(X;Y) in nats of ``x | y=k ~ N(means[k] · 1_dim, I_dim)`` with ``P(y=k) ∝ priors[k]``.

    Reduces to the 1-D mixture with means ``means[k] · √dim`` and unit variance, then integrates
    ``Σ_k p_k ∫ N(t; μ_k, 1) log[N(t; μ_k, 1) / Σ_j p_j N(t; μ_j, 1)] dt`` by the trapezoidal rule
    on ``grid_points`` points spanning 12 standard deviations beyond the extreme means.
    """
    if len(means) != len(priors):
        raise ValueError(f"{len(means)} means but {len(priors)} priors")
    if dim < 1:
        raise ValueError(f"dim={dim} must be >= 1")
    p = _normalised(priors)
    mu = np.asarray(means, dtype=np.float64) * math.sqrt(dim)
    t = np.linspace(mu.min() - 12.0, mu.max() + 12.0, grid_points)
    log_pdf = norm.logpdf(t[None, :] - mu[:, None])  # [K, T]
    log_mix = np_logsumexp(log_pdf + np.log(p)[:, None], axis=0)  # [T]
    per_class = np.trapezoid(np.exp(log_pdf) * (log_pdf - log_mix), t, axis=1)  # [K]
    return float(max(0.0, (p * per_class).sum()))


def pointwise_mi(
    logits: torch.Tensor, y: torch.Tensor, priors: Sequence[float] | None = None
) -> torch.Tensor:
    """Point-wise score log[exp(z_y) / Σ_k p_k exp(z_k)] per example, in nats.

    Args:
        logits: ``[N, K]`` network outputs z.
        y: ``[N]`` int64 labels.
        priors: label prior ``p`` (normalised here); ``None`` = uniform, which gives
            ``log K + log softmax(z)_y`` (the companion paper's point-wise MI).

    Returns:
        ``[N]`` float tensor.
    """
    num_classes = logits.shape[1]
    if priors is None:
        log_p = torch.full((num_classes,), -math.log(num_classes), dtype=logits.dtype)
    else:
        if len(priors) != num_classes:
            raise ValueError(f"{len(priors)} priors for {num_classes} classes")
        log_p = torch.as_tensor(np.log(_normalised(priors)), dtype=logits.dtype)
    log_p = log_p.to(logits.device)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - torch.logsumexp(logits + log_p, dim=1)


def softmax_mi_estimate(logits: torch.Tensor, y: torch.Tensor) -> float:
    """log K − CE: the softmax cross-entropy MI estimate (nats) over the examples given."""
    ce = F.cross_entropy(logits, y)
    return float(math.log(logits.shape[1]) - ce)


def pc_softmax_mi_estimate(
    logits: torch.Tensor, y: torch.Tensor, priors: Sequence[float]
) -> float:
    """PC-softmax MI estimate: mean of log[exp(z_y) / Σ_k p_k exp(z_k)] (nats)."""
    return float(pointwise_mi(logits, y, priors).mean())


def infonce_bound(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoNCE lower bound (nats) of N pairs with the critic ``f(x_i, y_j) = scores[i, y_j]``.

    ``mean_i [f(x_i, y_i) − log (1/N) Σ_j exp f(x_i, y_j)]``. With a discrete Y the inner sum groups
    by label: ``(1/N) Σ_j exp f(x_i, y_j) = Σ_k p̂_k exp scores[i, k]`` with the batch frequencies p̂,
    so it is computed in ``O(N K)`` rather than ``O(N²)`` (and is the PC-softmax score with the
    batch's own label prior).

    Args:
        scores: ``[N, K]`` critic outputs.
        y: ``[N]`` labels.

    Returns:
        Scalar tensor (differentiable), at most ``log N``.
    """
    counts = torch.bincount(y, minlength=scores.shape[1]).to(scores.dtype)
    log_freq = torch.log(counts / y.numel())  # −inf for absent labels, which drop out
    z_y = scores.gather(1, y[:, None]).squeeze(1)
    return (z_y - torch.logsumexp(scores + log_freq, dim=1)).mean()


def _log_marginal_term(scores: torch.Tensor, priors: Sequence[float]) -> torch.Tensor:
    """``[N]`` values log Σ_k p_k exp scores[i, k] (product-of-marginals expectation over y)."""
    log_p = torch.as_tensor(np.log(_normalised(priors)), dtype=scores.dtype, device=scores.device)
    return torch.logsumexp(scores + log_p, dim=1)


def nwj_bound(scores: torch.Tensor, y: torch.Tensor, priors: Sequence[float]) -> torch.Tensor:
    """NWJ lower bound ``E_{p(x,y)}[f] − e^{−1} E_{p(x)p(y)}[e^f]`` (nats, scalar tensor)."""
    z_y = scores.gather(1, y[:, None]).squeeze(1)
    return z_y.mean() - torch.exp(_log_marginal_term(scores, priors) - 1.0).mean()


def dv_bound(scores: torch.Tensor, y: torch.Tensor, priors: Sequence[float]) -> torch.Tensor:
    """Donsker–Varadhan bound ``E_{p(x,y)}[f] − log E_{p(x)p(y)}[e^f]`` that MINE maximises."""
    z_y = scores.gather(1, y[:, None]).squeeze(1)
    log_marginal = _log_marginal_term(scores, priors)
    return z_y.mean() - (torch.logsumexp(log_marginal, dim=0) - math.log(scores.shape[0]))


def training_loss(
    method: str, class_counts: Sequence[int]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``(logits [B, K], y [B]) -> scalar`` a network is trained with for ``method``.

    ``softmax``: cross-entropy. ``pc_softmax``: Balanced Softmax with the training counts (same
    gradient as the PC-softmax loss). ``infonce`` / ``nwj`` / ``mine``: the negated bound, with the
    label prior of the training counts.
    """
    if method == "softmax":
        return F.cross_entropy
    if method == "pc_softmax":
        return BalancedSoftmaxLoss(class_counts)
    if method == "infonce":
        return lambda s, y: -infonce_bound(s, y)
    if method == "nwj":
        return lambda s, y: -nwj_bound(s, y, class_counts)
    if method == "mine":
        return lambda s, y: -dv_bound(s, y, class_counts)
    raise ValueError(f"method={method!r}; choose one of {MI_METHODS}")


def estimate(
    method: str, logits: torch.Tensor, y: torch.Tensor, class_counts: Sequence[int]
) -> float:
    """The MI estimate (nats) of ``method`` from a trained network's test ``logits`` ``[N, K]``.

    ``class_counts`` are the training counts, i.e. the label prior the estimator assumes.
    """
    with torch.no_grad():
        if method == "softmax":
            return softmax_mi_estimate(logits, y)
        if method == "pc_softmax":
            return pc_softmax_mi_estimate(logits, y, class_counts)
        if method == "infonce":
            return float(infonce_bound(logits, y))
        if method == "nwj":
            return float(nwj_bound(logits, y, class_counts))
        if method == "mine":
            return float(dv_bound(logits, y, class_counts))
    raise ValueError(f"method={method!r}; choose one of {MI_METHODS}")
