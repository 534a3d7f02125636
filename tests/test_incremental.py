"""Class-incremental pieces: task streams, memory, herding, distillation, BSCE and the loop."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softmax_repro.config import ConfigError
from softmax_repro.data.mnist1d import Split
from softmax_repro.engine import incremental_loop, training
from softmax_repro.engine.models import MLP
from softmax_repro.methods import incremental as inc
from softmax_repro.methods import losses


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread, above all on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# ----------------------------------------------------------------------------- task streams


@pytest.mark.parametrize(("num_classes", "base", "steps"), [(10, 2, 4), (10, 5, 5), (100, 50, 25)])
def test_task_stream_membership_is_exact(num_classes: int, base: int, steps: int) -> None:
    stream = inc.make_task_stream(num_classes, base, steps, order_seed=3)
    assert sorted(stream.class_order) == list(range(num_classes))
    assert stream.num_tasks == steps + 1
    tasks = [stream.task_classes(t) for t in range(stream.num_tasks)]
    size = (num_classes - base) // steps
    assert [len(t) for t in tasks] == [base] + [size] * steps
    flat = [c for t in tasks for c in t]
    assert flat == list(stream.class_order)  # disjoint, in order, covering every class once
    assert stream.boundaries[-1] == num_classes


def test_task_stream_order_depends_only_on_seed() -> None:
    a = inc.make_task_stream(10, 2, 4, order_seed=0)
    assert a == inc.make_task_stream(10, 2, 4, order_seed=0)
    assert a.class_order != inc.make_task_stream(10, 2, 4, order_seed=1).class_order


def test_relabel_maps_to_positions_in_the_order() -> None:
    stream = inc.make_task_stream(10, 2, 4, order_seed=5)
    y = torch.arange(10).repeat(3)
    relabelled = stream.relabel(y)
    order = torch.tensor(stream.class_order)
    assert torch.equal(order[relabelled], y)
    lo, hi = stream.task_range(1)
    members = y[(relabelled >= lo) & (relabelled < hi)].unique().tolist()
    assert sorted(members) == sorted(stream.task_classes(1))


@pytest.mark.parametrize(("base", "steps"), [(2, 3), (0, 2), (10, 1)])
def test_task_stream_rejects_unequal_or_empty_steps(base: int, steps: int) -> None:
    with pytest.raises(ConfigError):
        inc.make_task_stream(10, base, steps, order_seed=0)


# ----------------------------------------------------------------------------- memory


def test_memory_rejects_more_than_budget_and_counts_per_class() -> None:
    memory = inc.ExemplarMemory(per_class=3)
    memory.store(0, torch.tensor([5, 1, 9]))
    memory.store(2, torch.tensor([4]))
    with pytest.raises(ValueError, match="budget"):
        memory.store(1, torch.tensor([0, 2, 3, 6]))
    with pytest.raises(ValueError, match="distinct"):
        memory.store(1, torch.tensor([7, 7]))
    assert memory.indices().tolist() == [5, 1, 9, 4]
    assert memory.class_counts(4).tolist() == [3, 0, 1, 0]
    assert len(memory) == 4


def test_herding_follows_the_running_mean_not_the_distance_to_the_mean() -> None:
    # Mean 5.0. Running means: 5 → (5+3.9)/2 → (8.9+6.5)/3 ≈ 5.13 → pick 0 (running 3.85)
    # rather than 9.6 (running 6.25), although 9.6 is nearer the mean than 0.
    points = torch.tensor([[0.0], [3.9], [5.0], [6.5], [9.6]])
    order = inc.herding_selection(points, m=5, normalize=False)
    assert order.tolist() == [2, 1, 3, 0, 4]
    nearest_first = (points - points.mean()).abs().flatten().argsort()
    assert nearest_first.tolist() == [2, 1, 3, 4, 0]
    assert inc.herding_selection(points, m=2, normalize=False).tolist() == [2, 1]
    assert inc.herding_selection(points, m=9, normalize=False).numel() == 5


def test_herding_normalises_features_first() -> None:
    # Directions at 0°, 80°, 90°, 100°: the unit-vector mean points at ~67.5°; scaling a vector
    # must not change the picks when normalize=True.
    angles = torch.tensor([0.0, 80.0, 90.0, 100.0]) * math.pi / 180
    unit = torch.stack([angles.cos(), angles.sin()], dim=1)
    scaled = unit * torch.tensor([[10.0], [1.0], [0.1], [3.0]])
    assert torch.equal(inc.herding_selection(unit, 4), inc.herding_selection(scaled, 4))
    assert inc.herding_selection(unit, 1).tolist() == [1]  # 80° is nearest 67.5°


def test_random_selection_is_distinct_and_seeded() -> None:
    a = inc.random_selection(50, 20, torch.Generator().manual_seed(0))
    b = inc.random_selection(50, 20, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.unique().numel() == 20 and int(a.max()) < 50
    assert inc.random_selection(3, 20, torch.Generator().manual_seed(0)).numel() == 3


# ----------------------------------------------------------------------------- losses


def test_distillation_matches_hand_computation() -> None:
    new = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    old = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    t = 2.0
    expected = 0.0
    for n_row, o_row in zip(new.tolist(), old.tolist(), strict=True):
        zn = [math.exp(v / t) for v in n_row]
        zo = [math.exp(v / t) for v in o_row]
        pn = [z / sum(zn) for z in zn]
        po = [z / sum(zo) for z in zo]
        expected += sum(p * math.log(p / q) for p, q in zip(po, pn, strict=True))
    expected = t * t * expected / 2
    got = inc.distillation_loss(new, old, temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    reference = F.kl_div(F.log_softmax(new / t, 1), F.log_softmax(old / t, 1), log_target=True,
                         reduction="batchmean") * t * t
    assert got.item() == pytest.approx(reference.item(), rel=1e-6)


def test_distillation_is_zero_for_shifted_logits_and_rejects_shapes() -> None:
    old = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert inc.distillation_loss(old + 5.0, old).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        inc.distillation_loss(old, old[:, :2])


def test_step_counts_are_new_data_plus_memory() -> None:
    y = torch.tensor([0, 0, 1, 3, 3, 3, 2, 2, 2, 2])
    assert inc.step_class_counts(y, 4).tolist() == [2, 1, 4, 3]
    assert inc.step_class_counts(torch.tensor([2, 3]), 4).tolist() == [0, 0, 1, 1]


def test_bsce_is_the_balanced_softmax_loss_with_step_counts() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(6, 4, generator=gen), torch.tensor([0, 1, 2, 3, 3, 2])
    counts = torch.tensor([20, 20, 400, 400])
    bsce = inc.StepBalancedSoftmax(counts)
    assert isinstance(bsce.balanced, losses.BalancedSoftmaxLoss)
    expected = F.cross_entropy(logits + counts.double().log().float(), target)
    assert bsce(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert inc.step_loss("ce", counts) is losses.softmax_cross_entropy


def test_bsce_drops_classes_absent_from_the_step() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=gen, requires_grad=True)
    target = torch.tensor([2, 3, 3, 2, 3])
    bsce = inc.StepBalancedSoftmax(torch.tensor([0, 0, 300, 500]))
    value = bsce(logits, target)
    # the n_j -> 0 limit of the Balanced Softmax over all four classes
    limit = losses.BalancedSoftmaxLoss([1e-30, 1e-30, 300, 500])(logits, target)
    assert value.item() == pytest.approx(limit.item(), rel=1e-6)
    value.backward()
    assert torch.all(logits.grad[:, :2] == 0)
    with pytest.raises(ValueError, match="no training examples"):
        bsce(logits, torch.tensor([0, 2, 3, 2, 3]))


# ----------------------------------------------------------------------------- learners, metrics


@pytest.mark.parametrize("name", ["ce_m20", "bsce_kd_m20", "ce_kd_ft_m5", "bsce_random_m20",
                                  "bsce_kd_m0", "ce_kd_ftb_m20"])
def test_learner_names_round_trip(name: str) -> None:
    assert inc.Learner.parse(name).name == name


@pytest.mark.parametrize("name", ["softmax_m20", "bsce_m", "bsce_ft_m0", "bsce_kd", "kd_bsce_m5",
                                  "ce_ftb_m0", "ce_ftbb_m5"])
def test_bad_learner_names_raise(name: str) -> None:
    with pytest.raises(ConfigError):
        inc.Learner.parse(name)


def test_forgetting_and_average_accuracy_by_hand() -> None:
    nan = float("nan")
    acc = np.array([[0.9, nan, nan], [0.6, 0.8, nan], [0.7, 0.5, 0.95]])
    # task 0: max(0.9, 0.6) - 0.7 = 0.2; task 1: 0.8 - 0.5 = 0.3
    assert inc.average_forgetting(acc) == pytest.approx(0.25)
    assert inc.average_forgetting(np.array([[0.9]])) != inc.average_forgetting(np.array([[0.9]]))
    assert inc.average_incremental_accuracy(np.array([0.9, 0.7, 0.5])) == pytest.approx(0.7)


# ----------------------------------------------------------------------------- the loop


def _blobs(num_classes: int = 6, per_class: int = 60, dim: int = 8, seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=gen) * 4

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(num_classes).repeat_interleave(n)
        return centres[y] + torch.randn(y.numel(), dim, generator=gen), y

    x_tr, y_tr = draw(per_class)
    x_te, y_te = draw(per_class // 2)
    return Split(x_tr, y_tr, x_te, y_te)


def _schedule(epochs: int = 8) -> incremental_loop.Schedule:
    spec = training.TrainSpec(epochs=epochs, batch_size=32, lr=0.05)
    return incremental_loop.Schedule(base=spec, step=spec,
                        finetune=training.TrainSpec(epochs=2, batch_size=32, lr=0.01))


def _run(name: str, data: Split, stream: inc.TaskStream,
         seed: int = 0) -> incremental_loop.IncrementalLog:
    training.seed_everything(seed)
    model = MLP(data.x_train.shape[1], 32, 6, depth=1)
    return incremental_loop.run_incremental(
        model, data, stream, inc.Learner.parse(name), _schedule(), seed=seed,
        device=torch.device("cpu"))


def test_run_records_every_task_and_respects_the_memory_budget() -> None:
    data, stream = _blobs(), inc.make_task_stream(6, 2, 2, order_seed=1)
    log = _run("bsce_kd_ft_m5", data, stream)
    assert log.step_accuracy.shape == (3,) and log.task_accuracy.shape == (3, 3)
    assert np.isnan(log.task_accuracy[0, 1:]).all() and not np.isnan(log.task_accuracy[2]).any()
    assert log.memory_size.tolist() == [10, 20, 30]  # 5 per class, 2 classes per task
    assert np.isnan(log.old_accuracy[0])
    # 120 base examples; steps: 120 new + memory (10, then 20) examples, batch 32, 8 epochs;
    # fine-tuning: 2 epochs over the same set
    steps = [8 * 4, 8 * math.ceil(130 / 32) + 2 * math.ceil(130 / 32),
             8 * math.ceil(140 / 32) + 2 * math.ceil(140 / 32)]
    assert log.optimizer_steps.tolist() == steps
    # accuracy on all seen = test-size weighted mean of old and new (equal test sizes per class)
    assert log.step_accuracy[2] == pytest.approx((2 * log.old_accuracy[2] + log.new_accuracy[2])
                                                 / 3)
    assert log.step_accuracy[2] == pytest.approx(np.mean(log.task_accuracy[2]))


def test_finetuning_within_budget_takes_as_many_steps_as_no_finetuning() -> None:
    data, stream = _blobs(), inc.make_task_stream(6, 2, 2, order_seed=1)
    within = _run("ce_kd_ftb_m5", data, stream)
    plain = _run("ce_kd_m5", data, stream)
    full = _run("ce_kd_ft_m5", data, stream)
    assert within.optimizer_steps.tolist() == plain.optimizer_steps.tolist()
    assert (full.optimizer_steps[1:] > within.optimizer_steps[1:]).all()
    assert incremental_loop.within_budget_epochs(_schedule()) == 6  # 8 − 2
    with pytest.raises(ConfigError, match="step epochs"):
        incremental_loop.within_budget_epochs(_schedule(epochs=2))


def test_relative_loss_change_over_the_last_fifth() -> None:
    losses = [2.0, 1.5, 1.2, 1.0, 0.9]  # four fifths of 5 epochs: epoch 4 (index 3)
    assert incremental_loop.relative_change_last_fifth(losses) == pytest.approx(0.1)
    assert math.isnan(incremental_loop.relative_change_last_fifth([1.0]))
    log = _run("bsce_m5", _blobs(), inc.make_task_stream(6, 2, 2, order_seed=1))
    assert 0.0 <= log.loss_change_last_fifth < 1.0


def test_bsce_counts_in_the_loop_are_new_data_plus_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[int]] = []
    original = inc.step_loss

    def spy(loss: str, counts: torch.Tensor):
        seen.append(counts.tolist())
        return original(loss, counts)

    monkeypatch.setattr(incremental_loop, "step_loss", spy)
    data, stream = _blobs(), inc.make_task_stream(6, 2, 2, order_seed=1)
    _run("bsce_m7", data, stream)
    assert seen == [[60, 60], [7, 7, 60, 60], [7, 7, 7, 7, 60, 60]]


def test_memory_keeps_the_right_classes() -> None:
    data, stream = _blobs(), inc.make_task_stream(6, 2, 2, order_seed=4)
    memory = inc.ExemplarMemory(4)
    training.seed_everything(0)
    model = MLP(8, 16, 6, depth=1)
    y = stream.relabel(data.y_train)
    incremental_loop._update_memory(memory, model, data.x_train, y, range(0, 2),
                                    inc.Learner.parse("ce_m4"), torch.Generator().manual_seed(0),
                                    torch.device("cpu"))
    assert memory.class_counts(6).tolist() == [4, 4, 0, 0, 0, 0]
    stored = y[memory.indices()].tolist()
    assert stored == [0] * 4 + [1] * 4


def test_learning_without_memory_forgets_and_memory_remembers() -> None:
    data, stream = _blobs(seed=3), inc.make_task_stream(6, 2, 2, order_seed=0)
    forget = _run("ce_m0", data, stream)
    rehearse = _run("bsce_m20", data, stream)
    # well-separated blobs: every task is learned ...
    assert forget.new_accuracy.min() > 0.9 and rehearse.new_accuracy.min() > 0.9
    # ... plain fine-tuning forgets the old classes, rehearsal with BSCE keeps them
    assert forget.old_accuracy[2] < 0.2
    assert rehearse.old_accuracy[2] > 0.8
    assert rehearse.average_forgetting < forget.average_forgetting


def test_run_is_deterministic_given_the_seed() -> None:
    data, stream = _blobs(), inc.make_task_stream(6, 2, 2, order_seed=1)
    a, b = _run("ce_kd_random_m3", data, stream), _run("ce_kd_random_m3", data, stream)
    assert np.array_equal(a.step_accuracy, b.step_accuracy)
    assert np.array_equal(a.task_accuracy, b.task_accuracy, equal_nan=True)
