"""Solvers for L2-regularised multinomial logistic regression, ADMM-Softmax among them.

Wu Fung, Tyrväinen, Ruthotto, Haber (2020), "ADMM-Softmax: an ADMM approach for multinomial
logistic regression" (ETNA 52; arXiv 1901.09450), used in chapter 08_exact_answers.

The problem (the paper's eq. 1.2 with a Tikhonov regulariser ``L = I``; features carry a constant
column, so the bias is regularised like every weight):

    min_W  F(W) = (1/n) Σ_i CE(W d_i, y_i) + (λ/2) ‖W‖²_F,     W ``[C, d]``, d_i ``[d]``.

It is strictly convex: every solver converges to the one minimiser, which scikit-learn's
``LogisticRegression(C = 1/(nλ), fit_intercept=False)`` also finds.

ADMM-Softmax (the paper's Algorithm 1) splits the logits off, ``Z = D Wᵀ`` (``D`` ``[n, d]``), and
iterates, with the scaled dual ``U`` ``[n, C]`` and penalty ``ρ``:

1. ``W``: ``(nλ I + ρ DᵀD) Wᵀ = ρ Dᵀ (Z − U)`` — a linear solve with a matrix factored once;
2. ``Z``: for each example separately, ``min_z CE(z, y_i) + (ρ/2)‖z − D_i Wᵀ − U_i‖²`` by a few
   Newton steps (a ``C × C`` system per example, all examples in one batch);
3. ``U ← U + D Wᵀ − Z``.

(The sum ``Σ_i CE`` rather than the mean is split, so ``ρ`` is per example, as in the paper.)
The baselines are Newton–Krylov (Newton with conjugate-gradient solves of Hessian-vector
products and Armijo backtracking), L-BFGS (SciPy's L-BFGS-B) and
mini-batch SGD. Every solver calls ``callback(iteration, W)`` after each outer iteration (SGD:
after each epoch), which is how the chapter records objective gaps and accuracies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize
from torch import Tensor

Callback = Callable[[int, Tensor], None]


def objective(weights: Tensor, features: Tensor, labels: Tensor, lam: float) -> Tensor:
    """``F(W)``: mean cross-entropy of ``features @ weights.T`` plus ``(λ/2)‖W‖²``. Scalar."""
    return F.cross_entropy(features @ weights.T, labels) + 0.5 * lam * (weights**2).sum()


def gradient(weights: Tensor, features: Tensor, labels: Tensor, lam: float) -> Tensor:
    """``∇F(W)`` ``[C, d]``: ``(1/n)(softmax(DWᵀ) − Y)ᵀ D + λW``."""
    probs = torch.softmax(features @ weights.T, dim=1)
    probs[torch.arange(len(labels)), labels] -= 1.0
    return probs.T @ features / len(labels) + lam * weights


def hessian_vector(weights: Tensor, features: Tensor, lam: float, vector: Tensor) -> Tensor:
    """``∇²F(W)[V]`` ``[C, d]`` for a direction ``V`` ``[C, d]`` (no Hessian is formed)."""
    probs = torch.softmax(features @ weights.T, dim=1)
    a = features @ vector.T  # [n, C]
    b = probs * a - probs * (probs * a).sum(dim=1, keepdim=True)
    return b.T @ features / len(features) + lam * vector


def admm_softmax(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    lam: float,
    rho: float,
    iterations: int,
    newton_steps: int = 3,
    callback: Callback | None = None,
) -> Tensor:
    """ADMM-Softmax (Algorithm 1 of Wu Fung et al.; see the module docstring). Returns ``W``."""
    n, d = features.shape
    dtype = features.dtype
    system = n * lam * torch.eye(d, dtype=dtype) + rho * features.T @ features
    factor = torch.linalg.cholesky(system)
    targets = F.one_hot(labels, num_classes).to(dtype)
    logits = torch.zeros(n, num_classes, dtype=dtype)
    dual = torch.zeros_like(logits)
    eye = torch.eye(num_classes, dtype=dtype)
    weights = torch.zeros(num_classes, d, dtype=dtype)
    for it in range(1, iterations + 1):
        weights = torch.cholesky_solve(rho * features.T @ (logits - dual), factor).T
        anchor = features @ weights.T + dual
        for _ in range(newton_steps):
            probs = torch.softmax(logits, dim=1)
            grad = probs - targets + rho * (logits - anchor)
            hess = torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1) + rho * eye
            logits = logits - torch.linalg.solve(hess, grad.unsqueeze(2)).squeeze(2)
        dual = dual + features @ weights.T - logits
        if callback is not None:
            callback(it, weights)
    return weights


def newton_krylov(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    lam: float,
    iterations: int,
    cg_iterations: int = 20,
    cg_tolerance: float = 1e-2,
    callback: Callback | None = None,
) -> Tensor:
    """Inexact Newton: CG on ``∇²F p = −∇F`` (relative residual ``cg_tolerance``), Armijo steps."""
    weights = torch.zeros(num_classes, features.shape[1], dtype=features.dtype)
    for it in range(1, iterations + 1):
        grad = gradient(weights, features, labels, lam)
        step = _conjugate_gradient(
            lambda v, w=weights: hessian_vector(w, features, lam, v), -grad, cg_iterations,
            cg_tolerance)
        value = objective(weights, features, labels, lam)
        slope = float((grad * step).sum())
        size = 1.0
        while size > 1e-8:
            trial = weights + size * step
            if objective(trial, features, labels, lam) <= value + 1e-4 * size * slope:
                break
            size /= 2
        weights = weights + size * step
        if callback is not None:
            callback(it, weights)
    return weights


def _conjugate_gradient(apply: Callable[[Tensor], Tensor], rhs: Tensor, iterations: int,
                        tolerance: float) -> Tensor:
    """Solve ``A x = rhs`` for a symmetric positive definite ``A`` given as ``apply``."""
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rr = float((residual**2).sum())
    stop = tolerance**2 * rr
    for _ in range(iterations):
        if rr <= stop:
            break
        ad = apply(direction)
        alpha = rr / float((direction * ad).sum())
        x = x + alpha * direction
        residual = residual - alpha * ad
        rr_new = float((residual**2).sum())
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return x


def lbfgs(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    lam: float,
    iterations: int,
    history: int = 10,
    callback: Callback | None = None,
) -> Tensor:
    """Full-batch L-BFGS (SciPy's L-BFGS-B without bounds, ``history`` correction pairs, its
    Moré–Thuente line search), one quasi-Newton iteration per callback. Tolerances are 0, so it
    runs ``iterations`` iterations unless the line search can make no progress.

    (``torch.optim.LBFGS`` with a strong-Wolfe line search stalled on the chapter's Digits problem
    at a relative gap of about 5·10⁻³, so SciPy's reference implementation is used instead.)
    """
    shape = (num_classes, features.shape[1])

    def value_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = torch.as_tensor(flat, dtype=features.dtype).reshape(shape)
        grad = gradient(w, features, labels, lam)
        return float(objective(w, features, labels, lam)), grad.reshape(-1).numpy()

    count = 0

    def report(flat: np.ndarray) -> None:
        nonlocal count
        count += 1
        if callback is not None:
            callback(count, torch.as_tensor(flat.copy(), dtype=features.dtype).reshape(shape))

    solution = optimize.minimize(
        value_and_grad, np.zeros(num_classes * features.shape[1]), jac=True, method="L-BFGS-B",
        callback=report,
        options={"maxiter": iterations, "maxcor": history, "gtol": 0.0, "ftol": 0.0})
    return torch.as_tensor(solution.x, dtype=features.dtype).reshape(shape)


def sgd(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    lam: float,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    callback: Callback | None = None,
) -> Tensor:
    """Mini-batch SGD on ``F`` (each batch's mean CE + the full regulariser), step ``lr/√epoch``.

    ``callback`` runs after every epoch; ``generator`` shuffles the examples.
    """
    n = len(labels)
    weights = torch.zeros(num_classes, features.shape[1], dtype=features.dtype)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator)
        step = lr / epoch**0.5
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            weights = weights - step * gradient(weights, features[batch], labels[batch], lam)
        if callback is not None:
            callback(epoch, weights)
    return weights
