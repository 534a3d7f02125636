"""Probability-dependent gradient decay: the β-softmax loss (Zhang, Xie, Chen, arXiv 2210.17145).

Used by chapter ``06_gradient_decay``. Shapes: ``logits`` ``[B, C]`` (float), ``target`` ``[B]``
(int64 in ``0..C-1``); losses return the batch mean.

The form is a **reviewers' transcription, not verified against the paper's text** (no code was
found): the target probability gets a factor β in its own denominator,

    p̃_y = e^{z_y} / (Σ_{j≠y} e^{z_j} + β e^{z_y}),
    ℓ_β = −log p̃_y = log(β + Σ_{j≠y} e^{z_j − z_y}),

so β = 1 is softmax cross-entropy. With ``p`` the ordinary softmax probability of the target,
the gradient with respect to the target logit is

    ∂ℓ_β/∂z_y = −(1 − p) / (1 − p + β p),

and ∂ℓ_β/∂z_j = p_j / (1 − p + β p) for j ≠ y. For p → 1 it decays like (1 − p)/β: a small β
keeps the gradient of confident examples large (larger margins), a large β lets it vanish early.
If the paper sums over all classes instead (β e^{z_y} added to the full softmax denominator), its
β is this β − 1.

- :func:`beta_softmax_loss` — ℓ_β, computed stably as a logsumexp over ``[log β, z_j − z_y]``.
- :func:`beta_softmax_target_grad` — the closed-form ∂ℓ_β/∂z_y above (for tests and figures).
- :class:`BetaSoftmaxLoss` — ℓ_β with a fixed β or a schedule β(step) (the paper's warm-up).
- :func:`beta_warmup` — β rising geometrically from ``start`` to ``end`` over a share of training.

Measurements the chapter compares β on: :func:`logit_margin` (z_y − max_{j≠y} z_j) and the
post-hoc baseline of the calibration claim, temperature scaling (Guo et al. 2017,
:func:`fit_temperature`: one T > 0 minimising the NLL of ``logits / T`` on validation data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from softmax_repro.config import check_in_range, check_positive


def _check_inputs(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, C] with C >= 2, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target must be [B] = [{logits.shape[0]}], got shape {tuple(target.shape)}"
        )


def beta_softmax_per_example(logits: Tensor, target: Tensor, beta: float) -> Tensor:
    """Per-example ℓ_β = log(β + Σ_{j≠y} e^{z_j − z_y}) ``[B]`` (module docstring).

    Computed as ``logsumexp([log β, z_j − z_y for j ≠ y])``: the target's own column of
    ``z − z_y`` is exactly 0 and is replaced by ``log β``, so no exponential overflows.
    """
    check_positive("beta", beta)
    _check_inputs(logits, target)
    target_logit = logits.gather(1, target[:, None])
    shifted = logits - target_logit
    mask = torch.zeros_like(shifted, dtype=torch.bool).scatter_(1, target[:, None], True)
    log_beta = torch.full_like(shifted, math.log(beta))
    return torch.where(mask, log_beta, shifted).logsumexp(dim=1)


def beta_softmax_loss(logits: Tensor, target: Tensor, beta: float) -> Tensor:
    """Mean ℓ_β over the batch; ``beta=1`` equals :func:`torch.nn.functional.cross_entropy`."""
    return beta_softmax_per_example(logits, target, beta).mean()


def beta_softmax_target_grad(logits: Tensor, target: Tensor, beta: float) -> Tensor:
    """Closed form ∂ℓ_β/∂z_y = −(1 − p)/(1 − p + βp) ``[B]``, p = softmax(z)_y (per example)."""
    check_positive("beta", beta)
    _check_inputs(logits, target)
    log_p = logits.log_softmax(dim=1).gather(1, target[:, None]).squeeze(1)
    p = log_p.exp()
    one_minus_p = -torch.expm1(log_p)
    return -one_minus_p / (one_minus_p + beta * p)


def beta_warmup(start: float, end: float, share: float) -> Callable[[int, int], float]:
    """β(step, total): geometric from ``start`` to ``end`` over the first ``share`` of the steps,
    then ``end``. ``share=0`` is a constant ``end``."""
    check_positive("warmup start beta", start)
    check_positive("warmup end beta", end)
    check_in_range("warmup share", share, 0.0, 1.0)

    def schedule(step: int, total: int) -> float:
        span = share * total
        if span <= 0 or step >= span:
            return end
        return start * (end / start) ** (step / span)

    return schedule


class BetaSoftmaxLoss(nn.Module):
    """ℓ_β with a fixed β or a schedule; call it as ``loss(logits, target)``.

    Args:
        beta: a fixed β > 0, or a schedule ``(step, total_steps) -> β`` (e.g. :func:`beta_warmup`).
        total_steps: optimizer steps of the run (needed by a schedule).

    Every call in training mode counts one step; :attr:`current_beta` is the β the next call uses.
    """

    def __init__(self, beta: float | Callable[[int, int], float], total_steps: int = 1) -> None:
        super().__init__()
        if not callable(beta):
            check_positive("beta", beta)
        self.beta = beta
        self.total_steps = total_steps
        self.step = 0

    @property
    def current_beta(self) -> float:
        if callable(self.beta):
            return float(self.beta(self.step, self.total_steps))
        return float(self.beta)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = beta_softmax_loss(logits, target, self.current_beta)
        if torch.is_grad_enabled():
            self.step += 1
        return loss


def logit_margin(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example logit margin ``z_y − max_{j≠y} z_j`` ``[B]`` (log-odds units; > 0 = correct)."""
    _check_inputs(logits, target)
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return target_logit - others.max(dim=1).values


def fit_temperature(logits: Tensor, target: Tensor, max_iter: int = 100) -> float:
    """Temperature scaling: the T > 0 minimising mean CE of ``logits / T`` (fit on validation data).

    Optimises log T from 0 (T = 1) with L-BFGS in float64; deterministic.
    """
    _check_inputs(logits, target)
    z = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())
