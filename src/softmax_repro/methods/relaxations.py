"""Gradient estimators for discrete random variables that are small enough to enumerate.

Paulus, Choi, Tarlow, Krause, Maddison (2020), "Gradient estimation with stochastic softmax
tricks" (NeurIPS; arXiv 2006.08063), used in chapter 08_exact_answers.

A stochastic argmax trick draws random utilities ``U = θ + G`` (``G`` i.i.d. standard Gumbel) and
returns ``X = argmax_{x ∈ 𝒳} Uᵀx`` over a finite set ``𝒳`` of binary vectors (eq. 1 of the paper).
A stochastic softmax trick (SST) replaces the argmax by a regularised one at temperature ``t``,
``X_t = argmax_{x ∈ conv 𝒳} Uᵀx − t·Ω(x)`` (eq. 4), and differentiates ``f(X_t)`` through ``U``.
Here ``𝒳`` is either the one-hot vectors of ``K`` categories (the SST is Gumbel-Softmax) or the
indicator vectors of the ``k``-subsets of ``K`` items (top-k). Both are enumerable for small ``K``,
so ``E[f(X)]`` and its exact gradient are sums over ``𝒳``:

- categorical: ``P(X = e_i) = softmax(θ)_i``;
- top-k: the top-k set of ``θ + G`` is a draw of ``k`` items without replacement (Plackett–Luce),
  so ``P(S) = Σ_{orderings π of S} Π_j exp θ_{π_j} / (Σ_i exp θ_i − Σ_{l<j} exp θ_{π_l})``.

Shapes: logits ``θ`` ``[K]``; utilities ``U`` ``[..., K]``; subset indicators ``[M, K]`` with
``M = C(K, k)``. Per-sample gradients are returned as ``[N, K]``: because ``U = θ + G``, the
gradient of ``f(X_t(U))`` with respect to ``θ`` equals its gradient with respect to ``U``, so one
backward pass over a batch of utilities gives every sample's gradient.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]
"""``f``: maps points ``[..., K]`` (vertices or relaxed points) to values ``[...]``."""


def subset_indicators(num_items: int, k: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Indicator vectors ``[C(K, k), K]`` of every ``k``-subset of ``K`` items, lexicographic."""
    if not 1 <= k <= num_items:
        raise ValueError(f"k={k} must lie in [1, num_items={num_items}]")
    rows = torch.zeros(math.comb(num_items, k), num_items, dtype=dtype)
    for row, subset in enumerate(itertools.combinations(range(num_items), k)):
        rows[row, list(subset)] = 1.0
    return rows


def plackett_luce_subset_log_probs(logits: Tensor, subsets: Tensor) -> Tensor:
    """``log P(top-k set of θ + G = S)`` for every subset ``S`` (rows of ``subsets`` ``[M, K]``).

    Sums the Plackett–Luce probabilities of the ``k!`` orderings of each subset (exact; ``k`` must
    be small). Differentiable in ``logits`` ``[K]``. Returns ``[M]``; ``logsumexp`` of it is 0.
    """
    k = int(subsets[0].sum().item())
    members = torch.stack([torch.nonzero(row).flatten() for row in subsets])  # [M, k]
    orders = torch.tensor(list(itertools.permutations(range(k))))  # [k!, k]
    sequence = members[:, orders]  # [M, k!, k]
    chosen = logits[sequence]  # [M, k!, k]
    log_total = torch.logsumexp(logits, dim=0)
    # log(Σ exp θ − Σ_{l<j} exp θ_{π_l}) = log_total + log1p(−Σ_{l<j} exp(θ_{π_l} − log_total))
    removed = torch.cumsum(torch.exp(chosen - log_total), dim=-1) - torch.exp(chosen - log_total)
    log_rest = log_total + torch.log1p(-removed.clamp(max=1.0 - 1e-15))
    return torch.logsumexp((chosen - log_rest).sum(dim=-1), dim=-1)


def exact_expectation(log_probs: Tensor, vertices: Tensor, objective: Objective) -> Tensor:
    """``E[f(X)] = Σ_x P(x) f(x)`` over the vertices ``[M, K]`` with ``log P`` ``[M]``."""
    return (torch.exp(log_probs) * objective(vertices)).sum()


def exact_gradient(
    logits: Tensor, log_prob_fn: Callable[[Tensor], Tensor], vertices: Tensor, objective: Objective
) -> Tensor:
    """``∇_θ E_θ[f(X)]`` ``[K]`` by differentiating the enumerated expectation."""
    theta = logits.detach().clone().requires_grad_(True)
    value = exact_expectation(log_prob_fn(theta), vertices, objective)
    (grad,) = torch.autograd.grad(value, theta)
    return grad


def score_matrix(logits: Tensor, log_prob_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``∇_θ log P_θ(x)`` for every vertex: the Jacobian ``[M, K]`` of ``log_prob_fn``."""
    theta = logits.detach().clone()
    return torch.autograd.functional.jacobian(log_prob_fn, theta)


def gumbel(shape: tuple[int, ...], generator: torch.Generator,
           dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard Gumbel noise ``−log(−log V)``, ``V ~ Uniform(0, 1)``."""
    uniform = torch.rand(shape, generator=generator, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    exponential = (-torch.log(uniform.clamp(min=tiny))).clamp(min=tiny)
    return -torch.log(exponential)


def argmax_vertex(utilities: Tensor, vertices: Tensor) -> Tensor:
    """Index ``[...]`` of ``argmax_x Uᵀx`` over the vertices ``[M, K]`` (ties: first)."""
    return torch.argmax(utilities @ vertices.T, dim=-1)


def gumbel_softmax(utilities: Tensor, temperature: float) -> Tensor:
    """Categorical SST (Gumbel-Softmax / Concrete): ``softmax(U / t)`` ``[..., K]``.

    The regularised argmax over the simplex with negative entropy as ``Ω`` (Paulus et al. eq. 4).
    """
    return torch.softmax(utilities / temperature, dim=-1)


def topk_sst(utilities: Tensor, temperature: float, subsets: Tensor) -> Tensor:
    """Top-k SST: the mean of the exponential family over k-subsets, ``Σ_S softmax_S(Uᵀ1_S/t) 1_S``.

    This is the regularised argmax over the k-subset polytope whose regulariser is the entropy of
    a distribution over subsets (Paulus et al. §5, "relaxed top-k"; their code computes the same
    marginals by a dynamic programme, here they are enumerated). ``[..., K]``, entries in (0, 1),
    summing to ``k``; ``k = 1`` gives :func:`gumbel_softmax`.
    """
    weights = torch.softmax(utilities @ subsets.T / temperature, dim=-1)  # [..., M]
    return weights @ subsets


def independent_bernoulli(utilities: Tensor, temperature: float, k: int,
                          iterations: int = 60) -> Tensor:
    """Less structured relaxation: ``σ((U − τ)/t)`` with the threshold ``τ`` making the sum ``k``.

    The regularised argmax over ``{x ∈ [0, 1]^K : Σx = k}`` with the negative entropy of
    *independent* Bernoulli coordinates (a sum of binary entropies) as ``Ω``: the constraint on the
    count stays, the dependence between coordinates of the k-subset distribution is dropped.
    ``τ`` is found by bisection; its gradient ``∂τ/∂U_i = w_i / Σ w`` (``w = x(1 − x)``, implicit
    function theorem) is attached so that autograd gives the exact derivative. ``[..., K]``.
    """
    scaled = utilities.detach() / temperature
    low = scaled.min(dim=-1, keepdim=True).values - 50.0
    high = scaled.max(dim=-1, keepdim=True).values + 50.0
    for _ in range(iterations):
        middle = (low + high) / 2
        too_many = torch.sigmoid(scaled - middle).sum(dim=-1, keepdim=True) > k
        low = torch.where(too_many, middle, low)
        high = torch.where(too_many, high, middle)
    tau = (low + high) / 2  # in units of t
    x0 = torch.sigmoid(scaled - tau)
    weight = x0 * (1 - x0)
    weight = weight / weight.sum(dim=-1, keepdim=True)
    # τ(U) to first order: τ* + Σ w_i (U_i − U_i*) / t; value unchanged, gradient implicit.
    shift = (weight * (utilities - utilities.detach())).sum(dim=-1, keepdim=True) / temperature
    return torch.sigmoid(utilities / temperature - (tau + shift))


def l2x_relaxation(utilities: Tensor, temperature: float) -> Tensor:
    """Unstructured top-k relaxation of L2X (Chen et al. 2018), a baseline of Paulus et al.

    ``utilities`` ``[..., k, K]`` holds ``k`` independent Gumbel-perturbed copies of ``θ``; the
    result is the elementwise maximum of their ``k`` Gumbel-Softmax vectors, ``[..., K]``. Its
    discrete counterpart (``k`` categorical draws with replacement) is not the top-k distribution.
    """
    return gumbel_softmax(utilities, temperature).max(dim=-2).values


def relaxed_sample_gradients(
    utilities: Tensor, relax: Callable[[Tensor], Tensor], objective: Objective
) -> Tensor:
    """Per-sample pathwise gradients ``∇_θ f(X_t)`` ``[N, K]`` for utilities ``[N, ..., K]``.

    Extra dimensions between the first and the last (L2X's ``k`` copies) are summed, since each
    copy is ``θ`` plus its own noise.
    """
    points = utilities.detach().clone().requires_grad_(True)
    values = objective(relax(points))
    (grad,) = torch.autograd.grad(values.sum(), points)
    return grad.reshape(grad.shape[0], -1, grad.shape[-1]).sum(dim=1)


def reinforce_sample_terms(values: Tensor, scores: Tensor, baseline: bool) -> Tensor:
    """REINFORCE terms ``(f(X_i) − b_i) ∇ log P(X_i)`` ``[R, n, K]`` for values ``[R, n]``.

    With ``baseline`` the leave-one-out mean of the other ``n − 1`` values of the same estimate is
    subtracted (unbiased; needs ``n ≥ 2``); without, ``b_i = 0``. ``scores`` is ``[R, n, K]``.
    """
    if baseline:
        n = values.shape[-1]
        if n < 2:
            raise ValueError("a leave-one-out baseline needs at least 2 samples per estimate")
        others = (values.sum(dim=-1, keepdim=True) - values) / (n - 1)
        values = values - others
    return values.unsqueeze(-1) * scores


def estimator_error(estimates: Tensor, exact: Tensor) -> dict[str, float]:
    """Bias², variance and MSE of ``R`` estimates ``[R, K]`` of the gradient ``exact`` ``[K]``.

    All three are relative to ``‖exact‖²`` (so 1.0 is an error as large as the gradient);
    ``rel_mse = rel_bias2 + rel_variance`` (variance with divisor ``R``).
    """
    norm2 = float((exact**2).sum())
    mean = estimates.mean(dim=0)
    bias2 = float(((mean - exact) ** 2).sum()) / norm2
    mse = float(((estimates - exact) ** 2).sum(dim=-1).mean()) / norm2
    return {"rel_bias2": bias2, "rel_variance": mse - bias2, "rel_mse": mse}
