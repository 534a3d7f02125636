"""Minimax risk classifiers (MRCs) for the 0-1 loss with linear features, and their error bounds.

Mazuelas, Zanoni, Pérez, "Minimax classification with 0-1 loss and performance guarantees"
(NeurIPS 2020; arXiv 2010.07964; first as arXiv 1902.00693), the method of the official library
MRCpy; used in chapter 08_exact_answers. Written here because ``mrcpy`` 3.0.0 fails with the
project's scikit-learn 1.9 (its feature mappings lack ``__sklearn_tags__``) and pulls ``gurobipy``.

Feature map ``Φ(x, y) = e_y ⊗ ψ(x)`` with ``ψ(x) = [1, x]`` (MRCpy's ``phi='linear'`` with an
intercept), so ``Φ(x, y)ᵀμ = ψ(x)·μ_y`` for ``μ`` ``[C, d]``. The uncertainty set holds the
distributions whose feature means lie within ``λ`` of the sample mean ``τ``:
``𝒰 = {p : |E_p Φ − τ| ≤ λ}``, ``λ = s · std(Φ) / √n`` (MRCpy's default ``s = 0.3``).

- Minimax risk (Theorem 2 of the paper): ``R(𝒰) = min_μ 1 − τᵀμ + φ(μ) + λᵀ|μ|`` with
  ``φ(μ) = max_{x, C ⊆ Y, C ≠ ∅} (Σ_{y∈C} Φ(x, y)ᵀμ − 1) / |C|``; the best ``C`` of each size is
  the top-scoring classes, so no subset is enumerated. The classifier is
  ``h(y|x) ∝ (Φ(x, y)ᵀμ* − φ(μ*))₊`` (normalised; uniform when all parts are 0), and for every
  ``μ``, ``1 − τᵀμ + φ(μ) + λᵀ|μ|`` bounds the expected 0-1 loss of the rule built from ``μ`` under
  every ``p ∈ 𝒰`` — the *upper* bound.
- Lower bound (weak LP duality; MRCpy's ``get_lower_bound`` for the randomised rule): for any
  ``μ``, ``1 − τᵀμ − λᵀ|μ| + min_{x, y} (Φ(x, y)ᵀμ − h(y|x))`` bounds ``E_p[1 − h(Y|X)]`` from
  below for every ``p ∈ 𝒰``; it is maximised over ``μ``.

As in MRCpy the maxima and minima over ``x`` run over the training inputs, and both convex,
non-smooth problems are solved by the subgradient method with Nesterov extrapolation of Tao et al.
(2019) (MRCpy's ``solver='subgrad'``: ``θ_k = 2/(k+1)``, step ``1/(k+1)^{3/2}``, best iterate kept).
A suboptimal ``μ`` only loosens a bound; it never invalidates it. The bounds hold for the
randomised rule ``h``; if the data's distribution lies in ``𝒰`` its expected error lies in
``[lower, upper]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor


def linear_features(x: Tensor) -> Tensor:
    """``ψ(x) = [1, x]`` ``[n, d + 1]``."""
    return torch.cat([torch.ones(len(x), 1, dtype=x.dtype), x], dim=1)


def feature_moments(psi: Tensor, labels: Tensor, num_classes: int,
                    s: float) -> tuple[Tensor, Tensor]:
    """``τ`` and ``λ = s·std(Φ)/√n`` ``[C, d]`` from features ``ψ`` ``[n, d]``, labels ``[n]``."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(psi.dtype)  # [n, C]
    phi = onehot.unsqueeze(2) * psi.unsqueeze(1)  # [n, C, d]
    tau = phi.mean(dim=0)
    std = phi.std(dim=0, unbiased=False)
    return tau, s * std / len(labels) ** 0.5


def varphi(mu: Tensor, psi: Tensor) -> tuple[Tensor, int, Tensor]:
    """``φ(μ)``, the maximising training input and its class set (a boolean mask ``[C]``)."""
    scores = psi @ mu.T  # [n, C]
    ordered, order = torch.sort(scores, dim=1, descending=True)
    sizes = torch.arange(1, scores.shape[1] + 1, dtype=scores.dtype)
    values = (torch.cumsum(ordered, dim=1) - 1.0) / sizes  # [n, C]: best set of each size
    flat = int(torch.argmax(values))
    row, size = divmod(flat, scores.shape[1])
    mask = torch.zeros(scores.shape[1], dtype=torch.bool)
    mask[order[row, : size + 1]] = True
    return values.reshape(-1)[flat], row, mask


def _nesterov_subgradient(
    value_and_subgradient: Callable[[Tensor], tuple[Tensor, Tensor]], shape: tuple[int, int],
    iterations: int, dtype: torch.dtype,
) -> tuple[Tensor, float]:
    """Minimise a convex non-smooth function (MRCpy's ``subgrad`` scheme); best point and value."""
    w = torch.zeros(shape, dtype=dtype)
    w_prev = torch.zeros_like(w)
    theta, theta_prev = 1.0, 1.0
    best_value, grad = value_and_subgradient(w)
    best, best_value = w, float(best_value)
    for k in range(1, iterations + 1):
        y = w + theta * (1.0 / theta_prev - 1.0) * (w - w_prev)
        value, grad = value_and_subgradient(y)
        if float(value) < best_value:
            best, best_value = y, float(value)
        theta_prev, theta = theta, 2.0 / (k + 1)
        w_prev, w = w, y - grad / (k + 1) ** 1.5
    value, _ = value_and_subgradient(w)
    if float(value) < best_value:
        best, best_value = w, float(value)
    return best, best_value


@dataclasses.dataclass(frozen=True)
class MinimaxRiskClassifier:
    """A fitted MRC: ``mu`` ``[C, d]``, ``phi_value = φ(μ)``, ``upper`` and ``lower`` bounds."""

    mu: Tensor
    phi_value: float
    upper: float
    lower: float

    def probabilities(self, x: Tensor) -> Tensor:
        """``h(y|x)`` ``[n, C]`` of the randomised rule for raw inputs ``x`` ``[n, d − 1]``."""
        return rule_probabilities(self.mu, self.phi_value, linear_features(x))

    def predict(self, x: Tensor) -> Tensor:
        """The deterministic rule ``argmax_y Φ(x, y)ᵀμ`` (MRCpy's ``predict``) ``[n]``."""
        return torch.argmax(linear_features(x) @ self.mu.T, dim=1)


def rule_probabilities(mu: Tensor, phi_value: float, psi: Tensor) -> Tensor:
    """``(Φ(x, y)ᵀμ − φ(μ))₊`` normalised per row; uniform where the row is all 0. ``[n, C]``."""
    raw = (psi @ mu.T - phi_value).clamp(min=0.0)
    total = raw.sum(dim=1, keepdim=True)
    uniform = torch.full_like(raw, 1.0 / raw.shape[1])
    return torch.where(total > 1e-12, raw / total.clamp(min=1e-12), uniform)


def fit_mrc(x: Tensor, labels: Tensor, num_classes: int, s: float = 0.3,
            iterations: int = 10_000) -> MinimaxRiskClassifier:
    """Fit the 0-1-loss MRC with linear features; compute its upper and lower error bounds.

    ``x`` ``[n, p]`` (float64 recommended), ``labels`` ``[n]``; ``iterations`` subgradient steps
    for each of the two problems (MRCpy's default: 10,000).
    """
    if s < 0:
        raise ValueError(f"s={s} must be >= 0")
    psi = linear_features(x)
    tau, lam = feature_moments(psi, labels, num_classes, s)
    shape = (num_classes, psi.shape[1])

    def upper_objective(mu: Tensor) -> tuple[Tensor, Tensor]:
        phi, row, mask = varphi(mu, psi)
        grad = -tau + lam * torch.sign(mu)
        grad[mask] += psi[row] / mask.sum()
        return 1.0 - (tau * mu).sum() + phi + (lam * mu.abs()).sum(), grad

    mu, upper = _nesterov_subgradient(upper_objective, shape, iterations, psi.dtype)
    phi_value = float(varphi(mu, psi)[0])
    rule = rule_probabilities(mu, phi_value, psi)  # [n, C] on the training inputs

    def negative_lower(nu: Tensor) -> tuple[Tensor, Tensor]:
        gaps = rule - psi @ nu.T  # h(y|x) − Φ(x, y)ᵀν
        flat = int(torch.argmax(gaps))
        row, label = divmod(flat, gaps.shape[1])
        grad = tau + lam * torch.sign(nu)
        grad[label] -= psi[row]
        return -1.0 + (tau * nu).sum() + (lam * nu.abs()).sum() + gaps[row, label], grad

    _, negative = _nesterov_subgradient(negative_lower, shape, iterations, psi.dtype)
    return MinimaxRiskClassifier(mu=mu, phi_value=phi_value, upper=upper, lower=-negative)


def expected_error(probabilities: Tensor, labels: Tensor) -> float:
    """Expected 0-1 loss of a randomised rule on labelled points: ``mean(1 − h(y_i|x_i))``."""
    return float(1.0 - probabilities[torch.arange(len(labels)), labels].mean())
