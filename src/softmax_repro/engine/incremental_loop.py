"""The class-incremental training loop (chapter 02): base task, then each step on new data plus
the exemplar memory, optional distillation and class-balanced fine-tuning, evaluated on all classes
seen so far. The methods it runs (:class:`~softmax_repro.methods.incremental.Learner`, BSCE,
herding, distillation) live in :mod:`softmax_repro.methods.incremental`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from softmax_repro.config import ConfigError, check_positive
from softmax_repro.data.mnist1d import Split
from softmax_repro.engine import training
from softmax_repro.methods import losses
from softmax_repro.methods.incremental import (
    ExemplarMemory,
    Learner,
    TaskStream,
    average_forgetting,
    average_incremental_accuracy,
    distillation_loss,
    extract_features,
    herding_selection,
    random_selection,
    step_class_counts,
    step_loss,
)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How each stage trains.

    Attributes:
        base: training of the base task.
        step: training of each incremental step (the model continues from the previous step).
        finetune: the class-balanced fine-tuning stage (used by learners that ask for it).
        budget_finetune: the fine-tuning stage of learners that fine-tune within the step's
            budget (:func:`within_budget_epochs`); ``None``: ``finetune``.
        kd_weight: weight λ of the distillation term (loss = classification + λ · KD).
        kd_temperature: distillation temperature T.
    """

    base: training.TrainSpec
    step: training.TrainSpec
    finetune: training.TrainSpec
    budget_finetune: training.TrainSpec | None = None
    kd_weight: float = 1.0
    kd_temperature: float = 2.0

    def __post_init__(self) -> None:
        check_positive("kd_weight", self.kd_weight)
        check_positive("kd_temperature", self.kd_temperature)


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
        loss_change_last_fifth: relative change of the mean training loss of the last task's
            main stage between the epoch at four fifths of it and its last epoch,
            ``|L_end − L_4/5| / L_4/5`` (a convergence check; NaN with fewer than two epochs).
    """

    step_accuracy: np.ndarray
    old_accuracy: np.ndarray
    new_accuracy: np.ndarray
    task_accuracy: np.ndarray
    train_s: np.ndarray
    optimizer_steps: np.ndarray
    memory_size: np.ndarray
    loss_change_last_fifth: float = float("nan")

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


def relative_change_last_fifth(epoch_losses: list[float]) -> float:
    """``|L_end − L_k| / L_k`` with ``L_k`` the mean loss of the epoch at four fifths of training
    (epoch ``max(0, ⌊4E/5⌋ − 1)`` of ``E``); NaN with fewer than two epochs."""
    if len(epoch_losses) < 2:
        return float("nan")
    at = epoch_losses[max(0, (4 * len(epoch_losses)) // 5 - 1)]
    return abs(epoch_losses[-1] - at) / abs(at) if at else float("nan")


def within_budget_epochs(schedule: Schedule) -> int:
    """Epochs of an incremental step whose fine-tuning stage (``budget_finetune``) comes out of the
    step's budget: ``step.epochs − budget_finetune.epochs`` (both stages use the step's batch size,
    so the learner takes as many optimizer steps as one without fine-tuning).

    Raises:
        ConfigError: the step is not counted in epochs, the stages' batch sizes differ, or
            fine-tuning would leave the step less than one epoch.
    """
    step, finetune = schedule.step, schedule.budget_finetune or schedule.finetune
    if step.epochs is None or finetune.epochs is None or step.batch_size != finetune.batch_size:
        raise ConfigError("fine-tuning within the step's budget needs both stages in epochs and "
                          "at the same batch size")
    if step.epochs - finetune.epochs < 1:
        raise ConfigError(f"fine-tuning within budget needs step epochs ({step.epochs}) > "
                          f"fine-tuning epochs ({finetune.epochs})")
    return step.epochs - finetune.epochs


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
        spec = schedule.base if task == 0 else schedule.step
        if learner.finetune_within_budget and task > 0:
            spec = dataclasses.replace(spec, epochs=within_budget_epochs(schedule))
        logs = [_fit_step(model, compute, x, y, spec, batch_gen, device)]
        loss_change = relative_change_last_fifth(logs[0].epoch_losses)
        if learner.balanced_finetune and task > 0:
            finetune = (schedule.budget_finetune or schedule.finetune) \
                if learner.finetune_within_budget else schedule.finetune
            logs.append(training.fit_classifier(
                model, lambda logits, target, hi=hi: losses.softmax_cross_entropy(
                    logits[:, :hi], target),
                x, y, finetune, seed=int(torch.randint(2**31, (1,), generator=batch_gen)),
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
                          np.array(train_s), np.array(opt_steps), np.array(mem_size),
                          loss_change)
