"""Margins on the softmax: HASeparator, L-Softmax and D-Softmax (chapter 05_margins).

Every loss here owns its classifier weights (as metric-learning libraries do): a network maps
inputs to embeddings ``x[B, D]``; the loss maps ``(x, target[B])`` to a scalar training loss, and
``loss.logits(x)`` gives the plain logits ``[B, C]`` used for prediction (argmax) at test time.

- :class:`LinearSoftmaxLoss`: plain softmax cross-entropy on ``W x + b`` (the baseline).
- :class:`CosineSoftmaxLoss`: cross-entropy on cosine logits ``s · x̂ᵀŵ_j`` (unit embedding and
  unit class weights, scale ``s``), optionally plus the HASeparator hinge
  (Kansizoglou et al., ICMLA 2020, arXiv 2008.03539; official Keras code ``customLayer.py``,
  ``ResNet50.py``)::

      L = CE(s · x̂ᵀŵ) + Σ_{j≠y} max(0, m − x̂ᵀ n_{yj}),   n_{yj} = (ŵ_y − ŵ_j) / ‖ŵ_y − ŵ_j‖

  ``x̂ᵀ n_{yj}`` is the signed distance of ``x̂`` to the cosine decision boundary between
  classes ``y`` and ``j``. The official code also adds the ``j = y`` term, a constant ``m`` with no
  gradient; it is left out here (same gradients, loss lower by ``m``).
- :class:`LargeMarginSoftmaxLoss`: L-Softmax (Liu, Wen, Yu, Yang, ICML 2016, Eq. 4–7): bias-free
  logits ``‖W_j‖‖x‖cos θ_j`` with the target's replaced by ``‖W_y‖‖x‖ψ(θ_y)``,
  ``ψ(θ) = (−1)^k cos(mθ) − 2k`` for ``θ ∈ [kπ/m, (k+1)π/m]``; ``cos(mθ)`` is the Chebyshev
  polynomial of ``cos θ`` (Eq. 7) and ``k`` is held constant in the gradient. The official Caffe
  code anneals from softmax to the margin: target logit ``(λ‖W‖‖x‖cos θ + ‖W‖‖x‖ψ(θ))/(1+λ)``
  with ``λ = max(λ_min, base·(1 + γ·t)^(−power))`` at iteration ``t`` (:class:`LambdaSchedule`).
  ``m = 1`` is bias-free softmax cross-entropy exactly.
- :class:`DSoftmaxLoss`: D-Softmax (He, Wang, Li, Wang, "Softmax Dissection", AAAI 2020,
  arXiv 1908.01281)::

      L = log(1 + e^{s(d − cos θ_y)}) + log(1 + Σ_{k≠y} e^{s cos θ_k})

  intra-class term first, inter-class term second. Form used here: ``d`` in cosine units (the
  target cosine where the intra term turns off; the paper's ``ε = e^{s·d}`` written inside the
  exponent), ``d = 0.9``. Reading the constant as ``ε = d`` instead would put that point at
  ``cos θ_y = ln(d)/s < 0``. With ``negatives_per_batch`` set, the inter-class term runs over a
  uniform random subset of classes drawn once per batch (the paper's sampled variants; the
  subset is not re-weighted).

Geometry of embeddings (the chapter's measures of compactness and separation):
:func:`within_class_angle`, :func:`min_class_mean_angle`, :func:`hyperplane_margins`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from scipy.special import comb
from torch import Tensor, nn


def _check_batch(x: Tensor, target: Tensor, dim: int, num_classes: int) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"embeddings must be [B, {dim}], got {tuple(x.shape)}")
    if target.ndim != 1 or target.shape[0] != x.shape[0]:
        raise ValueError(f"target must be [B={x.shape[0]}], got {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target labels must lie in 0..{num_classes - 1}")


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a number > 0")
    return float(value)


class _HeadLoss(nn.Module):
    """Base class: a class-weight matrix ``weight[C, D]`` and the plain logits ``logits(x)``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim={dim!r} must be an integer >= 1")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
        self.dim, self.num_classes = dim, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation

    def logits(self, x: Tensor) -> Tensor:
        """Prediction logits ``[B, C]`` of embeddings ``x[B, D]``."""
        raise NotImplementedError


class LinearSoftmaxLoss(_HeadLoss):
    """Softmax cross-entropy on ``x Wᵀ + b`` (``bias=False``: bias-free, L-Softmax's baseline)."""

    def __init__(self, dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(dim, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def logits(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        _check_batch(x, target, self.dim, self.num_classes)
        return F.cross_entropy(self.logits(x), target)


def cosine_matrix(x: Tensor, weight: Tensor) -> Tensor:
    """Cosines ``x̂ᵀŵ_j`` ``[B, C]`` between embeddings ``x[B, D]`` and class weights ``[C, D]``."""
    return F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T


def hyperplane_margins(x: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    """Signed distances ``x̂ᵀ n_{yj}`` ``[B, C]`` of unit embeddings to the cosine boundaries
    between their class ``y`` and every class ``j`` (HASeparator's quantity; ``+inf`` at ``j = y``).

    Computed from the cosines: ``x̂ᵀ(ŵ_y − ŵ_j) = cos_y − cos_j`` and
    ``‖ŵ_y − ŵ_j‖ = √(2 − 2 ŵ_yᵀŵ_j)``. Positive: on the side of class ``y``.
    """
    cos = cosine_matrix(x, weight)
    unit_w = F.normalize(weight, dim=1)
    gram = unit_w[target] @ unit_w.T  # [B, C]: ŵ_yᵀŵ_j
    norm = (2.0 - 2.0 * gram).clamp_min(1e-12).sqrt()
    distances = (cos.gather(1, target[:, None]) - cos) / norm
    return distances.scatter(1, target[:, None], float("inf"))


def haseparator_penalty(x: Tensor, weight: Tensor, target: Tensor, margin: float) -> Tensor:
    """Batch mean of ``Σ_{j≠y} max(0, m − x̂ᵀ n_{yj})`` (HASeparator's hinge), a scalar."""
    hinge = (margin - hyperplane_margins(x, weight, target)).clamp_min(0.0)
    return hinge.sum(dim=1).mean()


class CosineSoftmaxLoss(_HeadLoss):
    """Cross-entropy on ``s · x̂ᵀŵ_j``, plus the HASeparator hinge when ``hinge_margin`` is set.

    Args:
        dim: embedding size D.
        num_classes: C.
        scale: ``s`` (HASeparator's code: 1).
        hinge_margin: ``m`` of the hinge (HASeparator's code: 0.1); ``None``: no hinge.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 1.0,
                 hinge_margin: float | None = None) -> None:
        super().__init__(dim, num_classes)
        self.scale = _check_positive("scale", scale)
        self.hinge_margin = None if hinge_margin is None else _check_positive(
            "hinge_margin", hinge_margin)

    def logits(self, x: Tensor) -> Tensor:
        return self.scale * cosine_matrix(x, self.weight)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        _check_batch(x, target, self.dim, self.num_classes)
        loss = F.cross_entropy(self.logits(x), target)
        if self.hinge_margin is not None:
            loss = loss + haseparator_penalty(x, self.weight, target, self.hinge_margin)
        return loss


def cos_multiple_angle(cos: Tensor, m: int) -> Tensor:
    """``cos(mθ)`` from ``cos θ`` by L-Softmax's Eq. 7: ``Σ_n (−1)^n C(m, 2n) cos^{m−2n} sin^{2n}``
    (``sin² = 1 − cos²``), elementwise."""
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"margin m={m!r} must be an integer >= 1")
    if m == 1:
        return cos
    sin2 = 1.0 - cos * cos
    total = torch.zeros_like(cos)
    for n in range(m // 2 + 1):
        total = total + (-1) ** n * float(comb(m, 2 * n, exact=True)) * cos ** (m - 2 * n) \
            * sin2 ** n
    return total


def psi(cos: Tensor, m: int) -> Tensor:
    """L-Softmax's ``ψ(θ) = (−1)^k cos(mθ) − 2k``, ``k = ⌊mθ/π⌋`` (no gradient through ``k``),
    from ``cos θ`` (clamped to [−1, 1]); monotone decreasing in θ, ``ψ = cos θ`` at ``m = 1``."""
    cos = cos.clamp(-1.0, 1.0)
    if m == 1:
        return cos
    with torch.no_grad():
        k = torch.floor(torch.acos(cos) * m / math.pi).clamp(max=m - 1)
    return (1.0 - 2.0 * torch.remainder(k, 2)) * cos_multiple_angle(cos, m) - 2.0 * k


@dataclasses.dataclass(frozen=True)
class LambdaSchedule:
    """L-Softmax's annealing weight ``λ(t) = max(minimum, base·(1 + gamma·t)^(−power))``.

    Official code (README): base 1000, gamma 2.5e-5, power 35, minimum 0 on MNIST.
    """

    base: float = 1000.0
    gamma: float = 2.5e-5
    power: float = 35.0
    minimum: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base", "gamma", "power"):
            _check_positive(name, getattr(self, name))
        if not self.minimum >= 0:
            raise ValueError(f"minimum={self.minimum!r} must be >= 0")

    def __call__(self, step: int) -> float:
        return max(self.minimum, self.base * (1.0 + self.gamma * step) ** (-self.power))

    def compressed(self, factor: float) -> LambdaSchedule:
        """The same curve run ``factor`` times faster (``gamma · factor``)."""
        return dataclasses.replace(self, gamma=self.gamma * _check_positive("factor", factor))


class LargeMarginSoftmaxLoss(_HeadLoss):
    """L-Softmax cross-entropy (see the module docstring); prediction uses the plain bias-free
    logits ``x Wᵀ``.

    Args:
        dim: embedding size D.
        num_classes: C.
        margin: integer ``m >= 1``.
        schedule: λ annealing; ``None``: the margin logits from the first step (λ = 0). Each call
            in training mode advances the iteration counter ``step``.
    """

    def __init__(self, dim: int, num_classes: int, margin: int = 4,
                 schedule: LambdaSchedule | None = None) -> None:
        super().__init__(dim, num_classes)
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
            raise ValueError(f"margin={margin!r} must be an integer >= 1")
        self.margin, self.schedule = margin, schedule
        self.step = 0

    def logits(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def current_lambda(self) -> float:
        return 0.0 if self.schedule is None else self.schedule(self.step)

    def margin_logits(self, x: Tensor, target: Tensor, lam: float = 0.0) -> Tensor:
        """Training logits ``[B, C]``: ``x Wᵀ`` with the target column plus
        ``‖W_y‖‖x‖(ψ(θ_y) − cos θ_y)/(1 + λ)`` (zero at ``m = 1``)."""
        plain = self.logits(x)
        if self.margin == 1:
            return plain
        norms = self.weight.norm(dim=1)[target] * x.norm(dim=1)
        target_logit = plain.gather(1, target[:, None]).squeeze(1)
        cos = target_logit / norms.clamp_min(1e-12)
        shift = norms * (psi(cos, self.margin) - cos.clamp(-1.0, 1.0)) / (1.0 + lam)
        return plain.scatter_add(1, target[:, None], shift[:, None])

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        _check_batch(x, target, self.dim, self.num_classes)
        loss = F.cross_entropy(self.margin_logits(x, target, self.current_lambda()), target)
        if self.training:
            self.step += 1
        return loss


def dsoftmax_terms(cos_target: Tensor, negative_cos: Tensor, scale: float, d: float,
                   exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """D-Softmax's intra- and inter-class terms ``[B]`` each.

    Args:
        cos_target: ``cos θ_y`` ``[B]``.
        negative_cos: cosines to the negative classes ``[B, K']`` (all classes, or a sample).
        scale: ``s``.
        d: intra-class end point (cosine units).
        exclude: ``[B, K']`` bool, True where a column is the example's own class (left out of
            its sum); ``None``: no column is.

    Returns:
        ``intra = log(1 + e^{s(d − cos_y)})`` and ``inter = log(1 + Σ_k e^{s cos_k})`` over the
        columns not excluded, computed as ``softplus(logsumexp_k(s cos_k))``: the log-sum-exp of
        the negative logits with a zero logit added.
    """
    intra = F.softplus(scale * (d - cos_target))
    logits = scale * negative_cos
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return intra, F.softplus(torch.logsumexp(logits, dim=1))


class DSoftmaxLoss(_HeadLoss):
    """D-Softmax (see the module docstring) on cosine logits; prediction uses the cosines.

    Args:
        dim: embedding size D.
        num_classes: C.
        scale: ``s``.
        d: the intra-class end point in cosine units (paper default 0.9).
        negatives_per_batch: ``None``: the full inter-class term; an integer ``K'``: the term over
            ``K'`` classes drawn uniformly without replacement once per batch from ``generator``;
            only those rows of the weight matrix (and the targets') enter the computation.
        generator: random source of the sampled negatives (default: a fresh one seeded 0).
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0, d: float = 0.9,
                 negatives_per_batch: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(dim, num_classes)
        self.scale = _check_positive("scale", scale)
        if isinstance(d, bool) or not isinstance(d, int | float) or not -1.0 <= d <= 1.0:
            raise ValueError(f"d={d!r} must be a cosine in [-1, 1]")
        self.d = float(d)
        if negatives_per_batch is not None and (
                isinstance(negatives_per_batch, bool) or not isinstance(negatives_per_batch, int)
                or not 1 <= negatives_per_batch <= num_classes):
            raise ValueError(
                f"negatives_per_batch={negatives_per_batch!r} must be None or an integer in "
                f"1..{num_classes}")
        self.negatives_per_batch = negatives_per_batch
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def logits(self, x: Tensor) -> Tensor:
        return self.scale * cosine_matrix(x, self.weight)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        _check_batch(x, target, self.dim, self.num_classes)
        if self.negatives_per_batch is None:
            cos = cosine_matrix(x, self.weight)
            cos_target = cos.gather(1, target[:, None]).squeeze(1)
            negative_cos = cos.scatter(1, target[:, None], -math.inf)  # e^{s·(−inf)} = 0
            intra, inter = dsoftmax_terms(cos_target, negative_cos, self.scale, self.d)
            return (intra + inter).mean()
        sampled = torch.randperm(self.num_classes, generator=self.generator)[
            : self.negatives_per_batch].to(x.device)
        unit_x = F.normalize(x, dim=1)
        cos_target = (unit_x * F.normalize(self.weight[target], dim=1)).sum(dim=1)
        negative_cos = unit_x @ F.normalize(self.weight[sampled], dim=1).T
        intra, inter = dsoftmax_terms(cos_target, negative_cos, self.scale, self.d,
                                      sampled[None, :] == target[:, None])
        return (intra + inter).mean()


def within_class_angle(x: Tensor, labels: Tensor) -> float:
    """Mean angle (degrees) between each unit embedding and its class's mean direction,
    averaged over the classes present in ``labels`` (a measure of intra-class spread)."""
    unit = F.normalize(x.double(), dim=1)
    angles = []
    for c in torch.unique(labels):
        members = unit[labels == c]
        centre = F.normalize(members.mean(dim=0), dim=0)
        angles.append(torch.rad2deg(torch.acos((members @ centre).clamp(-1.0, 1.0))).mean())
    return float(torch.stack(angles).mean())


def class_mean_directions(x: Tensor, labels: Tensor) -> Tensor:
    """Unit mean directions ``[C', D]`` of the unit embeddings of each class in ``labels``
    (sorted by class)."""
    unit = F.normalize(x.double(), dim=1)
    return torch.stack([F.normalize(unit[labels == c].mean(dim=0), dim=0)
                        for c in torch.unique(labels)])


def min_class_mean_angle(x: Tensor, labels: Tensor) -> float:
    """Smallest angle (degrees) between two class-mean directions (inter-class separation)."""
    means = class_mean_directions(x, labels)
    if means.shape[0] < 2:
        raise ValueError("min_class_mean_angle needs at least two classes")
    cos = (means @ means.T).clamp(-1.0, 1.0)
    cos.fill_diagonal_(-1.0)
    return float(torch.rad2deg(torch.acos(cos.max())))
