"""Theorem 1 of Ren et al. 2020, on a problem whose posteriors are known exactly.

Classes are isotropic Gaussians ``x | y=c ~ N(μ_c, σ² I)`` in ``D`` dimensions. Under a label
prior ``π`` the Bayes posterior is ``p(c | x) = softmax_c(log π_c − ‖x − μ_c‖² / (2σ²))``; its
log-odds are linear in ``x``, so a linear softmax classifier can represent it exactly.

Theorem 1 says: a softmax trained on long-tailed data (prior ``π_c = n_c / N``) estimates the
*prior-shifted* posterior ``p_π(c | x)``, whereas Balanced Softmax (CE on ``η + log n``) makes the
plain logits ``η`` estimate the *balanced* posterior ``p_u(c | x)`` (uniform prior), which is the
Bayes-optimal posterior for a balanced test set. :func:`exact_posterior` gives both; distances
between a model's predicted posterior and the exact one are :func:`total_variation` and
:func:`kl_divergence`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianClasses:
    """Isotropic Gaussian class-conditional densities.

    Attributes:
        means: ``[C, D]`` class means.
        sigma: the common standard deviation σ > 0 of every coordinate.
    """

    means: Tensor
    sigma: float

    def __post_init__(self) -> None:
        if self.means.ndim != 2 or self.means.shape[0] < 2:
            raise ValueError(f"means must be [C, D] with C >= 2, got {tuple(self.means.shape)}")
        if not self.sigma > 0:
            raise ValueError(f"sigma={self.sigma!r} must be > 0")

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(x | c)`` ``[N, C]`` (float64) for inputs ``x`` ``[N, D]``."""
        x = x.double()
        sq = torch.cdist(x, self.means.double()) ** 2
        return -sq / (2 * self.sigma**2) - 0.5 * self.dim * math.log(2 * math.pi * self.sigma**2)

    def sample(self, counts: Tensor | list[int], generator: torch.Generator | None = None,
               ) -> tuple[Tensor, Tensor]:
        """``counts[c]`` points of each class: ``x`` ``[N, D]`` float32, ``y`` ``[N]`` int64
        (grouped by class; shuffle if order matters)."""
        counts = torch.as_tensor(counts, dtype=torch.int64)
        if counts.shape != (self.num_classes,) or (counts < 0).any():
            raise ValueError(f"counts must be {self.num_classes} non-negative integers")
        y = torch.repeat_interleave(torch.arange(self.num_classes), counts)
        noise = torch.randn(y.numel(), self.dim, generator=generator, dtype=torch.float64)
        return (self.means.double()[y] + self.sigma * noise).float(), y


def make_gaussian_classes(num_classes: int, dim: int, separation: float, seed: int,
                          ) -> GaussianClasses:
    """Random class means ``separation · u_c`` with ``u_c`` uniform on the unit sphere; σ = 1.

    ``separation`` (in units of σ) sets how much the classes overlap, hence how much the prior
    matters: small separation = a posterior far from one-hot, where Theorem 1 is visible.
    """
    if num_classes < 2 or dim < 1 or not separation > 0:
        raise ValueError("need num_classes >= 2, dim >= 1 and separation > 0")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    return GaussianClasses(means=separation * directions, sigma=1.0)


def exact_posterior(log_likelihood: Tensor, prior: Tensor | list[float]) -> Tensor:
    """Bayes posterior ``p(c | x) ∝ prior_c · p(x | c)`` ``[N, C]`` (float64).

    Args:
        log_likelihood: ``[N, C]`` ``log p(x | c)``.
        prior: ``[C]`` class prior (or unnormalised counts: it is normalised here), all > 0.
    """
    prior = torch.as_tensor(prior, dtype=torch.float64)
    if prior.shape != log_likelihood.shape[-1:] or (prior <= 0).any():
        raise ValueError(f"prior must be {log_likelihood.shape[-1]} positive numbers")
    return torch.softmax(log_likelihood.double() + (prior / prior.sum()).log(), dim=-1)


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Total-variation distance ``½ Σ_c |p_c − q_c|`` per row ``[N]`` (in [0, 1])."""
    return 0.5 * (p.double() - q.double()).abs().sum(dim=-1)


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """``KL(p ‖ q) = Σ_c p_c log(p_c / q_c)`` per row ``[N]`` (nats; ``q`` floored at ``eps``)."""
    p, q = p.double(), q.double().clamp_min(eps)
    return torch.where(p > 0, p * (p.clamp_min(eps).log() - q.log()), 0.0).sum(dim=-1)
