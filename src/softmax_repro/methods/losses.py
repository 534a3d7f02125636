"""Softmax losses for classification with a known label prior.

Shapes: ``logits`` is ``[B, C]`` (float), ``target`` is ``[B]`` (int64 in ``0..C-1``), and
``class_counts`` is ``[C]`` (training examples per class). All losses return the batch mean.

- :func:`softmax_cross_entropy`: plain softmax CE.
- :class:`BalancedSoftmaxLoss`: Ren et al. 2020, Eq. 4 — CE on ``logits + power * log n``. With
  ``power=1`` it is logit adjustment with τ = 1 (Menon et al. 2021) and has the same gradient as
  Qin et al.'s PC-softmax training loss.
- :func:`posthoc_logit_adjustment`: train with CE, subtract ``log prior`` at test time.
- :class:`FocalLoss` (Lin et al. 2017) and :func:`class_balanced_weights` (inverse frequency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_counts(class_counts: Tensor | list[int] | list[float]) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2:
        raise ValueError(
            f"class_counts must be a 1-D list of >= 2 counts, got shape {tuple(counts.shape)}"
        )
    if (counts <= 0).any():
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(
            f"class_counts must all be > 0 (log 0 = -inf); "
            f"classes {empty} have no training examples"
        )
    return counts


def log_prior(class_counts: Tensor | list[int] | list[float]) -> Tensor:
    """``log(n_j / Σ n)`` as a float32 ``[C]`` tensor."""
    counts = _check_counts(class_counts)
    return (counts / counts.sum()).log().float()


def softmax_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean softmax cross-entropy ``-log softmax(logits)[target]``."""
    return F.cross_entropy(logits, target)


class BalancedSoftmaxLoss(nn.Module):
    """Balanced Softmax: ``-log( n_y^p e^{η_y} / Σ_i n_i^p e^{η_i} )`` with ``p = power``.

    Equivalent to cross-entropy on ``η + p·log n``. Predictions at test time use the plain logits.
    ``power=0`` gives plain CE; ``power=0.25`` is the paper's "Balanced Softmax ¼".

    Args:
        class_counts: ``[C]`` training examples per class, all > 0.
        power: exponent on the counts, >= 0.
    """

    def __init__(self, class_counts: Tensor | list[int] | list[float], power: float = 1.0) -> None:
        super().__init__()
        if power < 0:
            raise ValueError(f"power={power!r} must be >= 0")
        self.power = float(power)
        self.register_buffer("log_counts", _check_counts(class_counts).log().float())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.per_example(logits, target).mean()

    def per_example(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss of each example ``[B]`` (no reduction)."""
        if logits.shape[-1] != self.log_counts.numel():
            raise ValueError(
                f"logits have {logits.shape[-1]} classes "
                f"but class_counts has {self.log_counts.numel()}"
            )
        return F.cross_entropy(logits + self.power * self.log_counts, target, reduction="none")


def posthoc_logit_adjustment(
    logits: Tensor, class_counts: Tensor | list[int], tau: float = 1.0
) -> Tensor:
    """Logits ``η − τ·log prior`` for balanced-test prediction of a CE-trained model ``[B, C]``."""
    return logits - tau * log_prior(class_counts).to(logits.device)


class FocalLoss(nn.Module):
    """Focal loss ``-(1 - p_y)^γ log p_y`` (Lin et al. 2017); ``gamma=0`` is plain CE."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma={gamma!r} must be >= 0")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
        return (-((1.0 - log_p.exp()) ** self.gamma) * log_p).mean()


def class_balanced_weights(class_counts: Tensor | list[int] | list[float]) -> Tensor:
    """Per-class loss weights ``∝ 1/n_j``, normalised to mean 1 over classes (float32 ``[C]``)."""
    inverse = 1.0 / _check_counts(class_counts)
    return (inverse * inverse.numel() / inverse.sum()).float()


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class weights (e.g. :func:`class_balanced_weights`).

    The batch loss is the weighted mean ``Σ w_{y_i} ℓ_i / Σ w_{y_i}`` (torch's convention).
    """

    def __init__(self, class_weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, weight=self.class_weights)


def class_balanced_sample_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Per-example sampling weights ``1/n_{y_i}`` so every class is drawn equally often ``[N]``."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    if (counts[labels] == 0).any():
        raise ValueError("a label outside 0..num_classes-1 was given")
    return 1.0 / counts[labels]
