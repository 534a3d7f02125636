"""Class-incremental learning: task streams, exemplar memory, BSCE and distillation.

Chapter 02 (Jodelet et al. 2021, 2022).

Protocol (Rebuffi et al. 2017; Hou et al. 2019): the classes arrive in a random order fixed by a
seed, as a base task of ``base_classes`` classes then ``num_steps`` steps of equal size. At every
step the model is trained on the new classes' data plus a memory of at most ``m`` exemplars per old
class, then evaluated on the test data of *all* classes seen so far with a single head (no task
identity at test time).

Labels are relabelled to their position in the class order, so after task ``t`` the seen classes
are ``0..seen_t-1`` and the seen-class head is the first ``seen_t`` logit columns.

Pieces:

- :func:`make_task_stream` / :class:`TaskStream`: class order and task boundaries.
- :class:`ExemplarMemory`, :func:`herding_selection` (iCaRL), :func:`random_selection`.
- :class:`StepBalancedSoftmax`: BSCE (Jodelet et al. 2021) = :class:`losses.BalancedSoftmaxLoss`
  with ``n_j`` counted in the current step's training set (new data + memory).
- :func:`distillation_loss`: temperature-scaled KL on the old classes' logits (iCaRL/LUCIR-style
  knowledge distillation from the previous step's frozen model).
- :class:`Learner`: one class-incremental method (loss, memory, selection, distillation,
  balanced fine-tuning); its loop is :func:`softmax_repro.engine.incremental_loop.run_incremental`.
- :func:`average_incremental_accuracy`, :func:`average_forgetting`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmax_repro.config import ConfigError, check_choice, check_int, check_positive
from softmax_repro.methods import losses

LOSSES = ("ce", "bsce")
SELECTIONS = ("herding", "random")


# --------------------------------------------------------------------------- task streams


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """A class order and the tasks that cut it.

    Attributes:
        class_order: original class labels in the order they are learned.
        boundaries: number of classes seen after each task, e.g. ``(2, 4, 6, 8, 10)``.
    """

    class_order: tuple[int, ...]
    boundaries: tuple[int, ...]

    @property
    def num_tasks(self) -> int:
        return len(self.boundaries)

    def task_range(self, task: int) -> tuple[int, int]:
        """``(lo, hi)``: task ``task`` introduces the relabelled classes ``lo..hi-1``."""
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} is outside 0..{self.num_tasks - 1}")
        return (0 if task == 0 else self.boundaries[task - 1]), self.boundaries[task]

    def task_classes(self, task: int) -> tuple[int, ...]:
        """The original labels introduced by task ``task``."""
        lo, hi = self.task_range(task)
        return self.class_order[lo:hi]

    def relabel(self, y: Tensor) -> Tensor:
        """Original labels ``[N]`` -> positions in the class order ``[N]`` (int64)."""
        lookup = torch.empty(len(self.class_order), dtype=torch.int64)
        lookup[torch.tensor(self.class_order)] = torch.arange(len(self.class_order))
        return lookup[y]


def make_task_stream(num_classes: int, base_classes: int, num_steps: int,
                     order_seed: int) -> TaskStream:
    """A base task of ``base_classes`` classes then ``num_steps`` equal steps.

    The class order is a permutation of ``0..num_classes-1`` drawn from ``order_seed``.

    Raises:
        ConfigError: the remaining ``num_classes - base_classes`` classes do not split into
            ``num_steps`` equal steps, or a count is out of range.
    """
    check_int("num_classes", num_classes, 2)
    check_int("num_steps", num_steps, 1)
    check_int("order_seed", order_seed, 0)
    if not 1 <= base_classes < num_classes:
        raise ConfigError(f"base_classes={base_classes!r} must lie in 1..{num_classes - 1}")
    remaining = num_classes - base_classes
    if remaining % num_steps:
        raise ConfigError(
            f"num_steps={num_steps} does not divide the {remaining} classes after the base task; "
            f"choose a divisor of {remaining}")
    size = remaining // num_steps
    order = np.random.default_rng(order_seed).permutation(num_classes)
    boundaries = (base_classes, *(base_classes + size * (k + 1) for k in range(num_steps)))
    return TaskStream(tuple(int(c) for c in order), boundaries)


# --------------------------------------------------------------------------- exemplar memory


class ExemplarMemory:
    """Training-set indices of stored exemplars, at most ``per_class`` for each class."""

    def __init__(self, per_class: int) -> None:
        check_int("per_class", per_class, 0)
        self.per_class = per_class
        self._stored: dict[int, Tensor] = {}

    def store(self, cls: int, indices: Tensor) -> None:
        """Keep ``indices`` (int64 ``[k]``, ``k <= per_class``) as the exemplars of ``cls``."""
        indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
        if indices.numel() > self.per_class:
            raise ValueError(f"class {cls}: {indices.numel()} exemplars exceed the budget of "
                             f"{self.per_class} per class")
        if indices.unique().numel() != indices.numel():
            raise ValueError(f"class {cls}: exemplar indices must be distinct")
        self._stored[int(cls)] = indices.clone()

    def indices(self) -> Tensor:
        """All stored indices, class by class in increasing class id (int64 ``[len(self)]``)."""
        if not self._stored:
            return torch.empty(0, dtype=torch.int64)
        return torch.cat([self._stored[c] for c in sorted(self._stored)])

    def class_counts(self, num_classes: int) -> Tensor:
        """Exemplars stored per class ``[num_classes]`` (int64)."""
        counts = torch.zeros(num_classes, dtype=torch.int64)
        for cls, idx in self._stored.items():
            counts[cls] = idx.numel()
        return counts

    def __len__(self) -> int:
        return sum(idx.numel() for idx in self._stored.values())


def herding_selection(features: Tensor, m: int, normalize: bool = True) -> Tensor:
    """iCaRL herding: greedily pick the examples whose running mean stays nearest the class mean.

    The k-th pick is ``argmin_i || μ − (φ_i + Σ_{j<k} φ_{p_j}) / k ||`` over examples not yet
    picked, with ``μ`` the mean of all ``φ`` (Rebuffi et al. 2017, Alg. 4).

    Args:
        features: ``[N, D]`` feature vectors of one class.
        m: how many to pick; ``min(m, N)`` are returned.
        normalize: L2-normalise each feature vector first (as iCaRL does).

    Returns:
        int64 ``[min(m, N)]`` indices into ``features``, in selection order.
    """
    check_int("m", m, 0)
    phi = features.double()
    if normalize:
        phi = F.normalize(phi, dim=1)
    target = phi.mean(dim=0)
    available = torch.ones(phi.shape[0], dtype=torch.bool)
    running = torch.zeros_like(target)
    picks: list[int] = []
    for k in range(1, min(m, phi.shape[0]) + 1):
        distance = (target - (running + phi) / k).norm(dim=1)
        distance[~available] = math.inf
        best = int(distance.argmin())
        picks.append(best)
        available[best] = False
        running += phi[best]
    return torch.tensor(picks, dtype=torch.int64)


def random_selection(n: int, m: int, generator: torch.Generator) -> Tensor:
    """``min(m, n)`` distinct indices of ``0..n-1`` drawn uniformly (int64)."""
    check_int("m", m, 0)
    return torch.randperm(n, generator=generator)[: min(m, n)]


@torch.inference_mode()
def extract_features(model: nn.Module, x: Tensor, device: torch.device,
                     batch_size: int = 1024) -> Tensor:
    """``model.features(x)`` in eval mode, in batches: ``[N, D]`` on CPU."""
    was_training = model.training
    model.eval()
    out = [model.features(x[i : i + batch_size].to(device)).float().cpu()
           for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)


# --------------------------------------------------------------------------- losses


def step_class_counts(y: Tensor, num_seen: int) -> Tensor:
    """Training examples per seen class in a step's training set ``[num_seen]`` (int64)."""
    return torch.bincount(y, minlength=num_seen)[:num_seen]


class StepBalancedSoftmax(nn.Module):
    """BSCE: Balanced Softmax with ``n_j`` counted in the current step's training set.

    Wraps :class:`losses.BalancedSoftmaxLoss` (the long-tail loss, not a copy). A seen class with
    ``n_j = 0`` (an old class when there is no memory) has ``log n_j = −∞``: it drops out of the
    softmax, so the loss is the Balanced Softmax over the classes present in the step.

    Args:
        class_counts: ``[C_seen]`` training examples per seen class; at least two must be > 0.
    """

    def __init__(self, class_counts: Tensor) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.int64)
        present = torch.nonzero(counts > 0).flatten()
        label_map = torch.full((counts.numel(),), -1, dtype=torch.int64)
        label_map[present] = torch.arange(present.numel())
        self.register_buffer("present", present)
        self.register_buffer("label_map", label_map)
        self.balanced = losses.BalancedSoftmaxLoss(counts[present])

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits`` ``[B, C_seen]``, ``target`` ``[B]`` (classes with n_j > 0) -> scalar."""
        mapped = self.label_map[target]
        if (mapped < 0).any():
            raise ValueError("a target class has no training examples in this step (n_j = 0)")
        return self.balanced(logits[:, self.present], mapped)


def step_loss(loss: str, class_counts: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The classification loss ``(logits[B, C_seen], y[B]) -> scalar`` of a step."""
    check_choice("loss", loss, LOSSES)
    if loss == "bsce":
        return StepBalancedSoftmax(class_counts)
    return losses.softmax_cross_entropy


def distillation_loss(logits: Tensor, old_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Knowledge distillation on the old classes' logits.

    ``T² · mean_b KL( softmax(old/T) ‖ softmax(new/T) )`` (Hinton et al. 2015; the LwF/iCaRL/
    LUCIR family distils the previous model's old-class outputs). Zero iff the old-class logits
    agree up to a per-row constant.

    Args:
        logits: current model's logits on the old classes ``[B, C_old]``.
        old_logits: previous model's logits on the same inputs and classes ``[B, C_old]``.
        temperature: softening temperature ``T > 0``.
    """
    if logits.shape != old_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and old_logits {tuple(old_logits.shape)} "
                         "must have the same shape")
    check_positive("temperature", temperature)
    log_p_new = F.log_softmax(logits / temperature, dim=1)
    log_p_old = F.log_softmax(old_logits / temperature, dim=1)
    kl = (log_p_old.exp() * (log_p_old - log_p_new)).sum(dim=1)
    return temperature**2 * kl.mean()


# --------------------------------------------------------------------------- learners


@dataclasses.dataclass(frozen=True)
class Learner:
    """One class-incremental method.

    Attributes:
        loss: ``ce`` (softmax cross-entropy) or ``bsce`` (:class:`StepBalancedSoftmax`).
        memory_per_class: exemplars kept per old class (0 = no memory).
        selection: how exemplars are chosen, ``herding`` or ``random``.
        distillation: add :func:`distillation_loss` against the previous step's model.
        balanced_finetune: after each incremental step, fine-tune the classifier with CE on
            class-balanced batches of the step's training set (the separate stage BSCE would make
            unnecessary).
        finetune_within_budget: with ``balanced_finetune``, the fine-tuning epochs are taken out
            of the incremental step's epochs, so that the learner takes as many optimizer steps
            as one without fine-tuning (name part ``_ftb`` instead of ``_ft``).
    """

    loss: str
    memory_per_class: int
    selection: str = "herding"
    distillation: bool = False
    balanced_finetune: bool = False
    finetune_within_budget: bool = False

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        check_int("memory_per_class", self.memory_per_class, 0)
        check_choice("selection", self.selection, SELECTIONS)
        if self.balanced_finetune and self.memory_per_class == 0:
            raise ConfigError("balanced_finetune needs memory_per_class >= 1: without memory the "
                              "step's training set holds only new classes")
        if self.finetune_within_budget and not self.balanced_finetune:
            raise ConfigError("finetune_within_budget needs balanced_finetune")

    @property
    def name(self) -> str:
        """``<loss>[_kd][_ft|_ftb][_random]_m<memory>``, e.g. ``bsce_kd_m20``."""
        parts = [self.loss]
        finetune = "ftb" if self.finetune_within_budget else "ft"
        parts += ["kd"] * self.distillation + [finetune] * self.balanced_finetune
        parts += ["random"] * (self.selection == "random")
        return "_".join([*parts, f"m{self.memory_per_class}"])

    @classmethod
    def parse(cls, name: str) -> Learner:
        """The learner named ``name`` (the inverse of :attr:`name`).

        Raises:
            ConfigError: ``name`` does not follow ``<ce|bsce>[_kd][_ft|_ftb][_random]_m<int>``.
        """
        match = re.fullmatch(r"(ce|bsce)(_kd)?(_ftb|_ft)?(_random)?_m(\d+)", str(name))
        if match is None:
            raise ConfigError(f"method {name!r} is not allowed; a method is named "
                              "<ce|bsce>[_kd][_ft|_ftb][_random]_m<exemplars per class>, "
                              "e.g. 'ce_m20', 'bsce_kd_m20', 'ce_ft_m5', 'bsce_kd_m0'")
        loss, kd, ft, rand, memory = match.groups()
        return cls(loss=loss, memory_per_class=int(memory),
                   selection="random" if rand else "herding", distillation=bool(kd),
                   balanced_finetune=bool(ft), finetune_within_budget=ft == "_ftb")


# --------------------------------------------------------------------------- metrics


def average_incremental_accuracy(step_accuracy: np.ndarray) -> float:
    """Mean over all tasks (base included) of the accuracy on the classes seen so far."""
    return float(np.mean(step_accuracy))


def average_forgetting(task_accuracy: np.ndarray) -> float:
    """Average forgetting after the last task (Chaudhry et al. 2018).

    Args:
        task_accuracy: ``[T, T]``; entry ``[l, j]`` is the accuracy on task ``j``'s test classes
            after task ``l`` (NaN for ``j > l``).

    Returns:
        ``mean_{j < T-1} ( max_{l < T-1} a[l, j] − a[T-1, j] )``; NaN when ``T == 1``.
    """
    acc = np.asarray(task_accuracy, dtype=float)
    last = acc.shape[0] - 1
    if last == 0:
        return float("nan")
    drops = [np.nanmax(acc[j:last, j]) - acc[last, j] for j in range(last)]
    return float(np.mean(drops))
