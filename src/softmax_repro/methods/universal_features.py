"""Universal features of a discrete joint distribution, and the features a softmax model learns.

Huang, Xu, Zheng, Wornell, "Universal feature selection" / "An information-theoretic approach to
universal feature selection in high-dimensional inference" (ISIT 2019, arXiv 1905.06600; Entropy
24:135, 2022; "xu2020information" in the book's bibliography); used in chapter 08_exact_answers.

For discrete ``X`` (``|X|`` values) and ``Y`` (``|Y|`` values) with joint ``P`` ``[|X|, |Y|]`` the
canonical dependence matrix is ``B̃ = P / √(P_X P_Yᵀ) − √P_X √P_Yᵀ`` (``B = P/√(P_X P_Yᵀ)`` has top
singular value 1 with singular vectors ``√P_X``, ``√P_Y``; subtracting it leaves ``B̃``). In the
weakly dependent ("local") regime ``P = P_X P_Yᵀ ⊙ (1 + εφ)``, the paper shows that the
``k``-dimensional features ``f(x)`` and class weights ``g(y)`` a softmax model
``Q(y|x) ∝ P_Y(y) exp(f(x)ᵀg(y) + b(y))`` learns by maximum likelihood approach the maximisers of
the H-score

    H(f, g) = E_P[f(X)ᵀg(Y)] − E[f(X)]ᵀE[g(Y)] − ½ tr(cov f(X) · cov g(Y)),

whose maximum is ``½ Σ_{i≤k} σ_i²`` (``σ_i`` the singular values of ``B̃``), attained when
``√P_X(x)·(f(x) − E f)`` spans the top-``k`` left singular subspace of ``B̃``. The chapter measures
the principal angles between the two subspaces as ``ε`` grows.

Shapes: ``px`` ``[|X|]``, ``py`` ``[|Y|]``, ``joint`` ``[|X|, |Y|]``, features ``f`` ``[|X|, k]``,
``g`` ``[|Y|, k]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def centred_perturbation(px: Tensor, py: Tensor, generator: torch.Generator) -> Tensor:
    """A random ``φ`` ``[|X|, |Y|]`` with ``Σ_x P_X φ = 0``, ``Σ_y P_Y φ = 0`` and ``max|φ| = 1``.

    The centring keeps the marginals of ``P_X P_Yᵀ ⊙ (1 + εφ)`` equal to ``px`` and ``py``; the
    scale keeps the joint non-negative for every ``ε ≤ 1``.
    """
    raw = torch.randn(len(px), len(py), generator=generator, dtype=px.dtype)
    raw = raw - (px @ raw).unsqueeze(0)  # E_X φ(·, y) = 0
    raw = raw - (raw @ py).unsqueeze(1)  # E_Y φ(x, ·) = 0 (keeps the first)
    return raw / raw.abs().max()


def weakly_dependent_joint(px: Tensor, py: Tensor, phi: Tensor, eps: float) -> Tensor:
    """``P = P_X P_Yᵀ ⊙ (1 + εφ)`` ``[|X|, |Y|]``; requires ``0 ≤ ε ≤ 1`` for ``max|φ| ≤ 1``."""
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps={eps} must lie in [0, 1] so that the joint stays non-negative")
    return torch.outer(px, py) * (1.0 + eps * phi)


def dependence_matrix(joint: Tensor) -> Tensor:
    """``B̃ = P / √(P_X P_Yᵀ) − √P_X √P_Yᵀ`` ``[|X|, |Y|]``."""
    px, py = joint.sum(dim=1), joint.sum(dim=0)
    root = torch.sqrt(torch.outer(px, py))
    return joint / root - root


def top_singular(matrix: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``k`` left singular vectors ``[|X|, k]``, singular values ``[k]``, right ``[|Y|, k]``."""
    left, values, right_t = torch.linalg.svd(matrix, full_matrices=False)
    return left[:, :k], values[:k], right_t[:k].T


def principal_angles_deg(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (degrees, ascending) between the column spaces of ``a`` and ``b``."""
    qa, _ = torch.linalg.qr(a)
    qb, _ = torch.linalg.qr(b)
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).flip(0)


def feature_directions(f: Tensor, px: Tensor) -> Tensor:
    """``√P_X(x)·(f(x) − E_{P_X} f)`` ``[|X|, k]``: features in the coordinates of ``B̃``'s rows."""
    return torch.sqrt(px).unsqueeze(1) * (f - px @ f)


def h_score(f: Tensor, g: Tensor, joint: Tensor) -> Tensor:
    """``H(f, g)`` (module docstring) under ``joint``. Scalar."""
    px, py = joint.sum(dim=1), joint.sum(dim=0)
    fc, gc = f - px @ f, g - py @ g
    cross = (joint * (fc @ gc.T)).sum()
    cov_f = fc.T @ (px.unsqueeze(1) * fc)
    cov_g = gc.T @ (py.unsqueeze(1) * gc)
    return cross - 0.5 * torch.trace(cov_f @ cov_g)


def h_score_max(joint: Tensor, k: int) -> Tensor:
    """``max_{f, g} H(f, g) = ½ Σ_{i≤k} σ_i(B̃)²`` over ``k``-dimensional features."""
    return 0.5 * (top_singular(dependence_matrix(joint), k)[1] ** 2).sum()


def feature_h_fraction(f: Tensor, joint: Tensor) -> float:
    """``max_g H(f, g) / max_{f, g} H``: the share of the attainable H-score features ``f`` allow.

    With ``Q`` an orthonormal basis of :func:`feature_directions`, ``max_g H(f, g) = ½‖B̃ᵀQ‖²_F``;
    the ratio is invariant to invertible linear maps of ``f`` and equals 1 exactly when the
    features span the top-``k`` subspace (for distinct singular values).
    """
    px = joint.sum(dim=1)
    basis, _ = torch.linalg.qr(feature_directions(f, px))
    dtm = dependence_matrix(joint)
    k = f.shape[1]
    return float((dtm.T @ basis).pow(2).sum() / (2 * h_score_max(joint, k)))


class SoftmaxFeatureModel(nn.Module):
    """``Q(y|x) = softmax_y(f(x)ᵀg(y) + b(y))`` for discrete ``x``: the last two layers of a softmax
    network whose input is one-hot, so ``f`` ``[|X|, k]`` can be any feature of ``x``."""

    def __init__(self, num_x: int, num_y: int, k: int, generator: torch.Generator,
                 init_scale: float = 0.1, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.f = nn.Parameter(init_scale * torch.randn(num_x, k, generator=generator, dtype=dtype))
        self.g = nn.Parameter(init_scale * torch.randn(num_y, k, generator=generator, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(num_y, dtype=dtype))

    def log_probs(self) -> Tensor:
        """``log Q(y|x)`` ``[|X|, |Y|]``."""
        return torch.log_softmax(self.f @ self.g.T + self.b, dim=1)


def population_cross_entropy(model: SoftmaxFeatureModel, joint: Tensor) -> Tensor:
    """``−Σ_{x,y} P(x, y) log Q(y|x)``: the cross-entropy on infinitely many samples. Scalar."""
    return -(joint * model.log_probs()).sum()


def fit_population(model: SoftmaxFeatureModel, joint: Tensor, iterations: int = 500,
                   tolerance: float = 1e-9) -> float:
    """Minimise :func:`population_cross_entropy` by full-batch L-BFGS; return the final gradient
    norm of the scaled loss (a convergence check).

    The loss is minimised as ``(CE − H(Y)) / max H``: the cross-entropy gain over the label
    entropy is ``O(ε²)``, so without the scale the tolerance would depend on ``ε``. At very small
    ``ε`` (below about 0.05 with ``|X| = 16``, ``|Y| = 8``) the surface is so flat near the saddle
    at ``f = g = 0`` that a few hundred iterations do not converge: check the returned norm.
    """
    py = joint.sum(dim=0)
    entropy = -(py * torch.log(py)).sum()
    scale = h_score_max(joint, model.f.shape[1]).clamp(min=1e-30)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iterations,
                                  history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=tolerance, tolerance_change=0.0)

    def scaled_loss() -> Tensor:
        return (population_cross_entropy(model, joint) - entropy) / scale

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = scaled_loss()
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.zero_grad()
    scaled_loss().backward()
    return float(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())))
