"""Class-incremental learning: task streams, exemplar memory, distillation and the training loop.

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
- :func:`run_incremental`: the whole protocol for one :class:`Learner`, built on
  :func:`training.fit` / :func:`training.fit_classifier`, with an optional class-balanced
  fine-tuning stage; returns an :class:`IncrementalLog` with accuracies, timings and step counts.
- :func:`average_incremental_accuracy`, :func:`average_forgetting`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmax_repro import losses, training
from softmax_repro.config import ConfigError, check_choice, check_int, check_positive
from softmax_repro.data.mnist1d import Split

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
    """

    loss: str
    memory_per_class: int
    selection: str = "herding"
    distillation: bool = False
    balanced_finetune: bool = False

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        check_int("memory_per_class", self.memory_per_class, 0)
        check_choice("selection", self.selection, SELECTIONS)
        if self.balanced_finetune and self.memory_per_class == 0:
            raise ConfigError("balanced_finetune needs memory_per_class >= 1: without memory the "
                              "step's training set holds only new classes")

    @property
    def name(self) -> str:
        """``<loss>[_kd][_ft][_random]_m<memory>``, e.g. ``bsce_kd_m20``."""
        parts = [self.loss]
        parts += ["kd"] * self.distillation + ["ft"] * self.balanced_finetune
        parts += ["random"] * (self.selection == "random")
        return "_".join([*parts, f"m{self.memory_per_class}"])

    @classmethod
    def parse(cls, name: str) -> Learner:
        """The learner named ``name`` (the inverse of :attr:`name`).

        Raises:
            ConfigError: ``name`` does not follow ``<ce|bsce>[_kd][_ft][_random]_m<int>``.
        """
        match = re.fullmatch(r"(ce|bsce)(_kd)?(_ft)?(_random)?_m(\d+)", str(name))
        if match is None:
            raise ConfigError(f"method {name!r} is not allowed; a method is named "
                              "<ce|bsce>[_kd][_ft][_random]_m<exemplars per class>, "
                              "e.g. 'ce_m20', 'bsce_kd_m20', 'ce_ft_m5', 'bsce_kd_m0'")
        loss, kd, ft, rand, memory = match.groups()
        return cls(loss=loss, memory_per_class=int(memory),
                   selection="random" if rand else "herding", distillation=bool(kd),
                   balanced_finetune=bool(ft))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How each stage trains.

    Attributes:
        base: training of the base task.
        step: training of each incremental step (the model continues from the previous step).
        finetune: the class-balanced fine-tuning stage (used by learners that ask for it).
        kd_weight: weight λ of the distillation term (loss = classification + λ · KD).
        kd_temperature: distillation temperature T.
    """

    base: training.TrainSpec
    step: training.TrainSpec
    finetune: training.TrainSpec
    kd_weight: float = 1.0
    kd_temperature: float = 2.0

    def __post_init__(self) -> None:
        check_positive("kd_weight", self.kd_weight)
        check_positive("kd_temperature", self.kd_temperature)


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


@dataclasses.dataclass
class IncrementalLog:
    """What a class-incremental run measured, one entry per task (base task first).

    Attributes:
        step_accuracy: accuracy on the test data of all classes seen so far ``[T]``.
        old_accuracy: accuracy on the old classes' test data (NaN for the base task) ``[T]``.
        new_accuracy: accuracy on the new classes' test data ``[T]``.
        task_accuracy: ``[T, T]``, accuracy on task ``j``'s classes after task ``l``.
        train_s: wall seconds spent in training stages (fine-tuning included) ``[T]``.
        optimizer_steps: optimizer steps taken (fine-tuning included) ``[T]``.
        memory_size: exemplars in memory after the task ``[T]``.
    """

    step_accuracy: np.ndarray
    old_accuracy: np.ndarray
    new_accuracy: np.ndarray
    task_accuracy: np.ndarray
    train_s: np.ndarray
    optimizer_steps: np.ndarray
    memory_size: np.ndarray

    @property
    def average_incremental_accuracy(self) -> float:
        return average_incremental_accuracy(self.step_accuracy)

    @property
    def average_forgetting(self) -> float:
        return average_forgetting(self.task_accuracy)


# --------------------------------------------------------------------------- training


Objective = Callable[[nn.Module, tuple[Tensor, ...]], Tensor]


def _objective(classify: Callable[[Tensor, Tensor], Tensor], seen: int, old_model: nn.Module | None,
               num_old: int, schedule: Schedule) -> Objective:
    """``(model, (x, y)) -> loss``: classification on the seen-class head, plus KD if asked."""

    def compute(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        xb, yb = batch
        logits = model(xb)[:, :seen]
        loss = classify(logits, yb)
        if old_model is not None:
            with torch.no_grad():
                old_logits = old_model(xb)[:, :num_old]
            loss = loss + schedule.kd_weight * distillation_loss(
                logits[:, :num_old], old_logits, schedule.kd_temperature)
        return loss

    return compute


def _fit_step(model: nn.Module, compute_loss: Objective,
              x: Tensor, y: Tensor, spec: training.TrainSpec, generator: torch.Generator,
              device: torch.device) -> training.FitLog:
    """Shuffled mini-batches of ``(x, y)`` through :func:`training.fit`, split across the ranks
    under ``torchrun`` (the objective is a per-example mean over the batch)."""
    x, y = x.to(device), y.to(device)

    def make_batches(epoch: int):
        for idx in training.tensor_batches(x.shape[0], spec.batch_size, generator):
            idx = idx.to(device)
            yield x[idx], y[idx]

    return training.fit(model, compute_loss, make_batches, spec,
                        steps_per_epoch=math.ceil(x.shape[0] / spec.batch_size),
                        data_parallel=True)


def _accuracies(model: nn.Module, x_test: Tensor, y_test: Tensor, stream: TaskStream, task: int,
                device: torch.device) -> tuple[float, float, float, list[float]]:
    """(all seen, old, new, per-task) accuracies after ``task``; ``y_test`` relabelled."""
    lo, hi = stream.task_range(task)
    seen = y_test < hi
    logits = training.predict(model, x_test[seen], device=device)[:, :hi]
    y = y_test[seen]
    correct = (logits.argmax(dim=1) == y).double()

    def mean_where(mask: Tensor) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    per_task = [mean_where((y >= a) & (y < b))
                for a, b in (stream.task_range(j) for j in range(task + 1))]
    return float(correct.mean()), mean_where(y < lo), mean_where(y >= lo), per_task


def _update_memory(memory: ExemplarMemory, model: nn.Module, x: Tensor, y: Tensor,
                   classes: range, learner: Learner, generator: torch.Generator,
                   device: torch.device) -> None:
    """Select exemplars of the just-learned ``classes`` (indices into ``x``)."""
    if learner.memory_per_class == 0:
        return
    for cls in classes:
        members = torch.nonzero(y == cls).flatten()
        if learner.selection == "herding":
            chosen = herding_selection(extract_features(model, x[members], device),
                                       learner.memory_per_class)
        else:
            chosen = random_selection(members.numel(), learner.memory_per_class, generator)
        memory.store(cls, members[chosen])


def run_incremental(model: nn.Module, data: Split, stream: TaskStream, learner: Learner,
                    schedule: Schedule, *, seed: int, device: torch.device) -> IncrementalLog:
    """Train ``model`` through every task of ``stream`` and evaluate after each.

    Args:
        model: a classifier with ``features(x)`` and a linear ``classifier`` over all classes of
            the stream (only the seen classes' columns are used at each step); seed its
            initialisation before building it.
        data: train/test tensors with original labels.
        stream: class order and task boundaries.
        learner: loss, memory, selection, distillation and fine-tuning choices.
        schedule: training specs of each stage and the distillation settings.
        seed: seeds batch order and random exemplar selection.
        device: where to train.
    """
    model.to(device)
    y_train, y_test = stream.relabel(data.y_train), stream.relabel(data.y_test)
    batch_gen = torch.Generator().manual_seed(seed)
    select_gen = torch.Generator().manual_seed(seed + 1)
    memory = ExemplarMemory(learner.memory_per_class)
    old_model: nn.Module | None = None
    num_tasks = stream.num_tasks
    task_acc = np.full((num_tasks, num_tasks), np.nan)
    step_acc, old_acc, new_acc, train_s, opt_steps, mem_size = ([] for _ in range(6))
    for task in range(num_tasks):
        lo, hi = stream.task_range(task)
        new = torch.nonzero((y_train >= lo) & (y_train < hi)).flatten()
        idx = torch.cat([memory.indices(), new])
        x, y = data.x_train[idx], y_train[idx]
        classify = step_loss(learner.loss, step_class_counts(y, hi))
        if isinstance(classify, nn.Module):
            classify.to(device)
        teacher = old_model if learner.distillation else None
        compute = _objective(classify, hi, teacher, lo, schedule)
        logs = [_fit_step(model, compute, x, y, schedule.base if task == 0 else schedule.step,
                          batch_gen, device)]
        if learner.balanced_finetune and task > 0:
            logs.append(training.fit_classifier(
                model, lambda logits, target, hi=hi: losses.softmax_cross_entropy(
                    logits[:, :hi], target),
                x, y, schedule.finetune, seed=int(torch.randint(2**31, (1,), generator=batch_gen)),
                device=device, sample_weights=losses.class_balanced_sample_weights(y, hi),
                params=model.classifier.parameters()))
        train_s.append(sum(log.wall_s for log in logs))
        opt_steps.append(sum(log.steps for log in logs))
        _update_memory(memory, model, data.x_train, y_train, range(lo, hi), learner, select_gen,
                       device)
        mem_size.append(len(memory))
        acc, acc_old, acc_new, per_task = _accuracies(model, data.x_test, y_test, stream, task,
                                                      device)
        step_acc.append(acc)
        old_acc.append(acc_old)
        new_acc.append(acc_new)
        task_acc[task, : task + 1] = per_task
        old_model = copy.deepcopy(model).eval().requires_grad_(False)
    return IncrementalLog(np.array(step_acc), np.array(old_acc), np.array(new_acc), task_acc,
                          np.array(train_s), np.array(opt_steps), np.array(mem_size))
