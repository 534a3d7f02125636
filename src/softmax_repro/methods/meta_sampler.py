"""The BALMS meta sampler (Ren et al. 2020, Sec. 3.3): learnable per-class sample rates.

Used only for decoupled classifier re-training on frozen features. Each training step:

1. draw a batch of classes from the current rates with a straight-through Gumbel-Softmax
   (:meth:`MetaSampler.draw`), then one example uniformly within each drawn class
   (:func:`draw_examples`);
2. inner step (:func:`meta_step`): one differentiable step of the classifier on that batch with
   its training loss (Balanced Softmax), each example's loss multiplied by a straight-through weight
   whose value is exactly 1 and whose gradient reaches the rates. The step is the classifier's own
   optimizer (SGD with momentum and weight decay, continuing from its current momentum buffers, at
   its current learning rate), as the official code steps a copy of the model's optimizer;
3. outer step: plain cross-entropy of the stepped classifier on a class-balanced meta batch, drawn
   fresh every step (:func:`balanced_batch`, the official infinite class-aware sampler); its
   gradient with respect to the rates updates them (Adam);
4. the classifier itself then takes an ordinary step on the same batch (done by the caller).

The rates are ``softmax(logits)`` over classes, initialised to ``∝ n_c^(1 - init_power)`` (power 0:
instance-balanced sampling, power 1: class-balanced). The official code parameterises a sigmoid
weight per class and runs the Gumbel-Softmax over all N training examples; drawing the class first
and then an example uniformly within it gives the same sampling distribution at O(C) cost instead of
O(N) per draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``(logits[B, C], target[B]) -> scalar batch-mean loss``."""


@dataclass(frozen=True)
class ClassDraw:
    """One batch of classes drawn by :meth:`MetaSampler.draw`.

    Attributes:
        classes: ``[B]`` int64 drawn classes.
        weights: ``[B]`` float straight-through weights; every value is exactly 1, the gradient
            flows to the sampler's logits through the relaxed (soft) Gumbel-Softmax sample.
    """

    classes: Tensor
    weights: Tensor


class MetaSampler(nn.Module):
    """Learnable per-class sample rates ``softmax(logits)`` ``[C]``.

    Args:
        class_counts: ``[C]`` training examples per class, all > 0.
        init_power: initial rates ``∝ n_c^(1 - init_power)``; 0 = instance-balanced (default, as
            the official code), 1 = class-balanced.
        temperature: Gumbel-Softmax temperature τ > 0 of the relaxed sample.
    """

    def __init__(self, class_counts: Tensor | list[int], init_power: float = 0.0,
                 temperature: float = 1.0) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if counts.ndim != 1 or counts.numel() < 2 or (counts <= 0).any():
            raise ValueError(f"class_counts must be >= 2 positive counts, got {counts.tolist()}")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0")
        self.temperature = float(temperature)
        self.logits = nn.Parameter(((1.0 - init_power) * counts.log()).float())

    @property
    def num_classes(self) -> int:
        return self.logits.numel()

    def rates(self) -> Tensor:
        """Class sample probabilities ``[C]`` (sum to 1), differentiable in the logits."""
        return torch.softmax(self.logits, dim=0)

    def draw(self, batch_size: int, generator: torch.Generator | None = None) -> ClassDraw:
        """Draw ``batch_size`` classes i.i.d. from :meth:`rates` (straight-through Gumbel)."""
        log_rates = torch.log_softmax(self.logits, dim=0)
        uniform = torch.rand(batch_size, self.num_classes, generator=generator)
        uniform = uniform.to(self.logits.device).clamp_(1e-20, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(uniform))
        soft = torch.softmax((log_rates + gumbel) / self.temperature, dim=1)
        classes = soft.detach().argmax(dim=1)
        picked = soft.gather(1, classes[:, None]).squeeze(1)
        return ClassDraw(classes=classes, weights=1.0 + (picked - picked.detach()))


def index_by_class(labels: Tensor, num_classes: int) -> list[Tensor]:
    """Example indices of each class: ``[C]`` list of int64 tensors (raises on an empty class)."""
    groups = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    empty = [c for c, g in enumerate(groups) if g.numel() == 0]
    if empty:
        raise ValueError(f"classes {empty} have no examples; every class needs at least one")
    return groups


def draw_examples(classes: Tensor, groups: list[Tensor],
                  generator: torch.Generator | None = None) -> Tensor:
    """One example index per drawn class, uniform within the class ``[B]`` (int64)."""
    sizes = torch.tensor([g.numel() for g in groups])
    starts = torch.cumsum(sizes, 0) - sizes
    classes = classes.cpu()
    offsets = (torch.rand(classes.numel(), generator=generator) * sizes[classes]).long()
    return torch.cat(groups)[starts[classes] + offsets]


def class_balanced_indices(labels: Tensor, num_classes: int, size: int,
                           generator: torch.Generator | None = None) -> Tensor:
    """A class-balanced meta set of ``size`` example indices ``[size]`` drawn from ``labels``
    (:func:`balanced_batch` over :func:`index_by_class`)."""
    return balanced_batch(index_by_class(labels, num_classes), size, generator)


def balanced_batch(groups: list[Tensor], size: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """``size`` example indices ``[size]``, class-balanced over the classes' index ``groups``.

    Classes take turns (``size // C`` each, the remainder to the first classes); within a class
    examples are drawn without replacement while they last, then the class is cycled again (a
    tail class with fewer examples than its share repeats them, as the official class-aware sampler
    does).
    """
    num_classes, picked = len(groups), []
    for c, group in enumerate(groups):
        share = size // num_classes + (1 if c < size % num_classes else 0)
        rounds = -(-share // group.numel())
        order = torch.cat([group[torch.randperm(group.numel(), generator=generator)]
                           for _ in range(rounds)])
        picked.append(order[:share])
    return torch.cat(picked)


def per_example_loss(loss_fn: LossFn, logits: Tensor, target: Tensor) -> Tensor:
    """``loss_fn`` evaluated on each example alone ``[B]`` (for batch-mean losses); a loss with a
    ``per_example`` method (e.g. :class:`~softmax_repro.methods.losses.BalancedSoftmaxLoss`) is
    asked directly."""
    direct = getattr(loss_fn, "per_example", None)
    if direct is not None:
        return direct(logits, target)
    return vmap(lambda z, t: loss_fn(z[None], t[None]))(logits, target)


def sgd_step(params: dict[str, Tensor], grads: list[Tensor], lr: float, momentum: float = 0.0,
             weight_decay: float = 0.0, buffers: dict[str, Tensor | None] | None = None,
             ) -> dict[str, Tensor]:
    """The parameters after one step of ``torch.optim.SGD`` (no dampening, no Nesterov), kept
    differentiable in ``grads``: ``d = g + wd·p``; ``v = μ·buf + d`` (``v = d`` without a buffer,
    as on SGD's first step); ``p − lr·v``. ``buffers`` holds the optimizer's momentum buffers by
    parameter name (treated as constants)."""
    stepped = {}
    for (name, p), g in zip(params.items(), grads, strict=True):
        d = g + weight_decay * p if weight_decay else g
        buffer = (buffers or {}).get(name)
        if momentum and buffer is not None:
            d = momentum * buffer.detach() + d
        stepped[name] = p - lr * d
    return stepped


def meta_step(
    sampler: MetaSampler,
    meta_optimizer: torch.optim.Optimizer,
    classifier: nn.Module,
    train_loss: LossFn,
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    meta_x: Tensor,
    meta_y: Tensor,
    inner_lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    momentum_buffers: dict[str, Tensor | None] | None = None,
) -> float:
    """One outer update of the sample rates; the classifier is left unchanged.

    Args:
        sampler: owns the rates; ``meta_optimizer`` optimises its logits.
        classifier: maps ``x[B, D]`` (frozen features) to logits ``[B, C]``.
        train_loss: the inner training loss (Balanced Softmax in BALMS).
        x, y: the batch drawn with :meth:`MetaSampler.draw` (``[B, D]``, ``[B]``).
        weights: that draw's straight-through weights ``[B]``.
        meta_x, meta_y: class-balanced meta batch ``[M, D]``, ``[M]``.
        inner_lr, momentum, weight_decay, momentum_buffers: the differentiable inner step
            (:func:`sgd_step`): the classifier optimizer's current learning rate, momentum,
            weight decay and momentum buffers by parameter name (``None``: plain SGD).

    Returns:
        The meta loss (plain CE of the stepped classifier on the meta batch).
    """
    params = dict(classifier.named_parameters())
    losses = per_example_loss(train_loss, functional_call(classifier, params, (x,)), y)
    inner = (weights * losses).mean()
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    stepped = sgd_step(params, list(grads), inner_lr, momentum, weight_decay, momentum_buffers)
    meta_loss = F.cross_entropy(functional_call(classifier, stepped, (meta_x,)), meta_y)
    (grad_logits,) = torch.autograd.grad(meta_loss, [sampler.logits])
    meta_optimizer.zero_grad(set_to_none=True)
    sampler.logits.grad = grad_logits
    meta_optimizer.step()
    return float(meta_loss.detach())
