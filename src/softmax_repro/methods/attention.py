"""Periodic alternatives to softmax in attention (Wang, Liu, Liu 2021, arXiv 2108.07153).

Used by chapter ``06_gradient_decay``. A normaliser maps a row of attention scores ``x`` (the last
dimension of ``scores [..., n]``) to weights ``[..., n]``. The forms (our implementations of the
definitions in the official ``periodic_softmax.py``):

- ``softmax``: e^{x_i} / Σ_j e^{x_j}.
- ``norm_softmax``: softmax of the pre-normalised row (below).
- ``sin2max_shifted``: sin²(x_i + π/4) / Σ_j sin²(x_j + π/4)  (non-negative; "Sin2maxShifted").
- ``sin_softmax``: softmax(sin x)  (weights in [e^{-2}/n, e^{2}/n]; "SinSoftmax").
- ``norm_cosmax``: cos(x̂_i) / Σ_j cos(x̂_j) on the pre-normalised row x̂ ("Cosmax", prenorm on).
- ``cosmax``: the same without pre-normalisation (the paper's point that prenorm matters).

Pre-normalisation (``Prenorm``) standardises each row: x̂ = (x − mean(x)) / sqrt(var(x) + ε) with
the unbiased variance, as in the official code; it makes a form invariant to the scale of the
scores (up to ε). Every form's weights sum to 1 by construction. The cos forms can be negative and
their denominators can pass through 0: here a denominator with |d| < ``eps`` is replaced by
``sign(d)·eps`` (sign(0) = +1) and the row is counted as *guarded*; :func:`normalise` returns
those rows so that the chapter can count and show them. Rows of the sum-normalised forms sum to 1
exactly only where no guard was needed.

:class:`AttentionClassifier` is the small model of the chapter: tokens ``[B, T, F]`` → linear
embedding + learned positions → ``depth`` pre-LayerNorm blocks (one attention head, scores
``scale · qᵀk / √d``, then a 2-layer MLP) → mean over tokens → linear classifier.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from softmax_repro.config import check_choice, check_int, check_positive

NORMALISERS = ("softmax", "norm_softmax", "sin2max_shifted", "sin_softmax", "norm_cosmax", "cosmax")
"""The six attention normalisers of the chapter (module docstring)."""
SUM_TO_ONE = frozenset(NORMALISERS)
"""Forms whose unguarded rows sum to 1 (all six: the periodic ones divide by their own sum)."""
NON_NEGATIVE = frozenset({"softmax", "norm_softmax", "sin2max_shifted", "sin_softmax"})
"""Forms whose weights are never negative."""
PRENORM_EPS = 1e-5
"""ε of the pre-normalisation (official default)."""
GUARD_EPS = 1e-6
"""Smallest |denominator| of a sum-normalised row before it is guarded."""


def prenorm(scores: Tensor, eps: float = PRENORM_EPS) -> Tensor:
    """Standardise each row ``[..., n]``: ``(x − mean) / sqrt(var + eps)``, unbiased variance."""
    if scores.shape[-1] < 2:
        raise ValueError("prenorm needs rows of >= 2 scores (the variance of one is undefined)")
    mean = scores.mean(dim=-1, keepdim=True)
    var = scores.var(dim=-1, keepdim=True)
    return (scores - mean) * torch.rsqrt(var + eps)


def _sum_normalise(values: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``values / Σ values`` with the guarded denominator; also the guarded-row mask ``[...]``."""
    total = values.sum(dim=-1, keepdim=True)
    small = total.abs() < eps
    sign = torch.where(total < 0, -torch.ones_like(total), torch.ones_like(total))
    safe = torch.where(small, sign * eps, total)
    return values / safe, small.squeeze(-1)


def normalise(name: str, scores: Tensor, eps: float = GUARD_EPS) -> tuple[Tensor, Tensor]:
    """Attention weights of normaliser ``name`` over the last dimension of ``scores``.

    Args:
        name: one of :data:`NORMALISERS`.
        scores: ``[..., n]`` float.
        eps: the guard of the sum-normalised forms' denominators.

    Returns:
        ``weights [..., n]`` and ``guarded [...]`` (bool: rows whose denominator was guarded;
        always False for the softmax forms).
    """
    check_choice("normaliser", name, NORMALISERS)
    no_guard = torch.zeros(scores.shape[:-1], dtype=torch.bool, device=scores.device)
    if name == "softmax":
        return scores.softmax(dim=-1), no_guard
    if name == "norm_softmax":
        return prenorm(scores).softmax(dim=-1), no_guard
    if name == "sin_softmax":
        return torch.sin(scores).softmax(dim=-1), no_guard
    if name == "sin2max_shifted":
        return _sum_normalise(torch.sin(scores + math.pi / 4) ** 2, eps)
    if name == "norm_cosmax":
        return _sum_normalise(torch.cos(prenorm(scores)), eps)
    return _sum_normalise(torch.cos(scores), eps)


class AttentionLayer(nn.Module):
    """One pre-LayerNorm block: single-head attention with normaliser ``name``, then an MLP.

    Input and output ``[B, T, d]``. Scores are ``scale · q kᵀ / √d`` ``[B, T, T]``. With
    ``record=True`` the forward pass keeps ``unscaled`` (``q kᵀ/√d``, gradient retained),
    ``weights`` and ``guarded`` of its last call for measurement.
    """

    def __init__(self, dim: int, name: str, scale: float) -> None:
        super().__init__()
        check_choice("normaliser", name, NORMALISERS)
        check_positive("scale", scale)
        self.name, self.scale = name, float(scale)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.record = False
        self.unscaled: Tensor | None = None
        self.weights: Tensor | None = None
        self.guarded: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        unscaled = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        if self.record and unscaled.requires_grad:
            unscaled.retain_grad()
        weights, guarded = normalise(self.name, self.scale * unscaled)
        if self.record:
            self.unscaled, self.weights, self.guarded = unscaled, weights.detach(), guarded
        x = x + self.out(weights @ v)
        return x + self.mlp(self.norm2(x))


class AttentionClassifier(nn.Module):
    """Tokens ``[B, T, F]`` → logits ``[B, num_classes]`` through ``depth`` :class:`AttentionLayer`.

    Args:
        tokens: T, tokens per example (learned position embeddings).
        token_dim: F, features per token.
        num_classes: C.
        normaliser: one of :data:`NORMALISERS`.
        scale: multiplies every score ``qᵀk/√d`` (the chapter's sweep).
        dim: model width d.
        depth: number of attention blocks.
    """

    def __init__(self, tokens: int, token_dim: int, num_classes: int, normaliser: str,
                 scale: float = 1.0, dim: int = 32, depth: int = 1) -> None:
        super().__init__()
        for name, value, low in (("tokens", tokens, 2), ("token_dim", token_dim, 1),
                                 ("num_classes", num_classes, 2), ("dim", dim, 1),
                                 ("depth", depth, 1)):
            check_int(name, value, low)
        self.embed = nn.Linear(token_dim, dim)
        self.position = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.layers = nn.ModuleList(AttentionLayer(dim, normaliser, scale) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def set_record(self, on: bool) -> None:
        """Keep (or stop keeping) each layer's scores, weights and guarded rows."""
        for layer in self.layers:
            layer.record = on
            if not on:
                layer.unscaled = layer.weights = layer.guarded = None

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ValueError(f"AttentionClassifier takes tokens [B, T, F], got {tuple(x.shape)}")
        h = self.embed(x) + self.position
        for layer in self.layers:
            h = layer(h)
        return self.norm(h).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def to_tokens(x: Tensor, patch: int) -> Tensor:
    """Cut inputs into tokens: ``[N, L]`` sequences → ``[N, L/patch, patch]``; images
    ``[N, C, H, W]`` → ``[N, (H/patch)(W/patch), C·patch²]`` (non-overlapping squares, row-major).

    Raises:
        ValueError: the length or side is not a multiple of ``patch``, or another shape.
    """
    check_int("patch", patch, 1)
    if x.ndim == 2:
        if x.shape[1] % patch:
            raise ValueError(f"sequence length {x.shape[1]} is not a multiple of patch={patch}")
        return x.reshape(x.shape[0], x.shape[1] // patch, patch)
    if x.ndim == 4:
        n, c, h, w = x.shape
        if h % patch or w % patch:
            raise ValueError(f"image side {h}×{w} is not a multiple of patch={patch}")
        tiles = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
        return tiles.reshape(n, (h // patch) * (w // patch), c * patch * patch)
    raise ValueError(f"to_tokens takes [N, L] or [N, C, H, W], got {tuple(x.shape)}")


def score_probe(model: AttentionClassifier, x: Tensor, y: Tensor,
                saturation: float = 0.99) -> dict[str, float]:
    """Gradient and weight statistics of ``model``'s attention on one batch (model unchanged).

    One forward/backward pass of the mean cross-entropy on ``x [B, T, F]``, ``y [B]``; gradients
    are cleared afterwards. Over all rows of all layers:

    - ``score_grad``: the norm of ∂L/∂S over the batch, S = s·qᵀk/√d the scores the normaliser
      receives, summed in quadrature over layers (the paper's "gradient of the scores").
    - ``qk_grad``: the same for u = qᵀk/√d before the scale factor, ∂L/∂u = s·∂L/∂S: what
      reaches the query and key projections.
    - ``saturated_share``: rows whose largest weight exceeds ``saturation``.
    - ``guarded_share``: rows whose denominator was guarded (see :func:`normalise`).
    - ``negative_share``: rows with a negative weight; ``nonfinite_share``: rows with a NaN/inf.
    - ``row_sum_error``: the largest |Σ_j w_ij − 1| over finite, unguarded rows (0 if none).
    """
    was_training = model.training
    model.set_record(True)
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
        grads, score_grads, weights, guarded = [], [], [], []
        for layer in model.layers:
            if layer.unscaled is None or layer.weights is None or layer.guarded is None:
                raise RuntimeError("score_probe: a layer recorded nothing in its forward pass")
            grad = layer.unscaled.grad
            squared = torch.zeros(()) if grad is None else grad.detach().double().pow(2).sum()
            grads.append(squared)
            score_grads.append(squared / layer.scale**2)
            weights.append(layer.weights.reshape(-1, layer.weights.shape[-1]))
            guarded.append(layer.guarded.reshape(-1))
    finally:
        model.set_record(False)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    w, g = torch.cat(weights), torch.cat(guarded)
    finite = torch.isfinite(w).all(dim=1)
    ok = finite & ~g
    sums = w[ok].sum(dim=1)
    return {
        "score_grad": float(torch.stack(score_grads).sum().sqrt()),
        "qk_grad": float(torch.stack(grads).sum().sqrt()),
        "saturated_share": float((w.max(dim=1).values > saturation).double().mean()),
        "guarded_share": float(g.double().mean()),
        "negative_share": float((w < 0).any(dim=1).double().mean()),
        "nonfinite_share": float((~finite).double().mean()),
        "row_sum_error": float((sums - 1).abs().max()) if sums.numel() else 0.0,
    }
