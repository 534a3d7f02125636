"""The shared training loop: determinism, schedules, sampling, devices and resumable grids."""

import math

import pytest
import torch
from torch import nn

from softmax_repro.config import ConfigError
from softmax_repro.engine import training
from softmax_repro.engine.models import MLP


def _toy_data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _train(seed, epochs=3, **kw):
    x, y = _toy_data()
    training.seed_everything(seed)
    model = MLP(4, 16, 2)
    spec = training.TrainSpec(epochs=epochs, batch_size=32, lr=0.1, schedule="cosine")
    log = training.fit_classifier(
        model, nn.functional.cross_entropy, x, y, spec, seed=seed, device=torch.device("cpu"), **kw
    )
    return model, log


def test_same_seed_gives_bit_identical_weights():
    a, _ = _train(3)
    b, _ = _train(3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_different_seed_gives_different_weights():
    a, _ = _train(3)
    b, _ = _train(4)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)


def test_training_learns_and_counts_steps():
    model, log = _train(0, epochs=20)
    x, y = _toy_data(seed=1)
    assert log.steps == 20 * math.ceil(200 / 32)
    assert log.samples == 20 * 200
    assert log.epoch_losses[-1] < log.epoch_losses[0]
    assert (training.predict(model, x).argmax(1) == y).float().mean() > 0.9


def test_steps_budget_stops_mid_epoch():
    x, y = _toy_data()
    spec = training.TrainSpec(steps=5, batch_size=32, lr=0.1)
    log = training.fit_classifier(
        MLP(4, 8, 2), nn.functional.cross_entropy, x, y, spec, seed=0, device=torch.device("cpu")
    )
    assert log.steps == 5 and len(log.epoch_losses) == 1


def test_warmup_then_cosine_schedule():
    spec = training.TrainSpec(
        steps=100, batch_size=1, lr=0.1, warmup_steps=10, warmup_start_lr=0.05, schedule="cosine"
    )
    assert training.learning_rate(spec, 0, 100) == pytest.approx(0.05)
    assert training.learning_rate(spec, 5, 100) == pytest.approx(0.075)
    assert training.learning_rate(spec, 10, 100) == pytest.approx(0.1)
    assert training.learning_rate(spec, 55, 100) == pytest.approx(0.05)
    assert training.learning_rate(spec, 100, 100) == pytest.approx(0.0, abs=1e-12)


def test_weighted_sampling_draws_classes_evenly():
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([1.0] * 90 + [9.0] * 10, dtype=torch.float64)
    drawn = torch.cat(list(training.tensor_batches(100, 10, g, weights)))
    frac_minority = (drawn >= 90).float().mean().item()
    assert drawn.numel() == 100 and 0.35 < frac_minority < 0.65


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 8, "lr": 0.1}, "exactly one of epochs= or steps="),
        ({"batch_size": 8, "lr": 0.1, "epochs": 1, "steps": 1}, "exactly one of epochs= or steps="),
        ({"batch_size": 0, "lr": 0.1, "epochs": 1}, "batch_size=0"),
        ({"batch_size": 8, "lr": 0.1, "epochs": 1, "optimizer": "lbfgs"}, "optimizer='lbfgs'"),
        ({"batch_size": 8, "lr": 0.1, "epochs": 1, "schedule": "step"}, "schedule='step'"),
    ],
)
def test_bad_train_spec(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        training.TrainSpec(**kwargs)


def test_resolve_device():
    assert training.resolve_device("cpu") == torch.device("cpu")
    assert training.resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda' is not available"):
            training.resolve_device("cuda")
    with pytest.raises(ConfigError, match="device='gpu'"):
        training.resolve_device("gpu")


def test_non_finite_loss_stops_training():
    x, y = _toy_data()
    spec = training.TrainSpec(epochs=1, batch_size=32, lr=0.1)
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        training.fit_classifier(
            MLP(4, 8, 2),
            lambda logits, t: logits.sum() * float("nan"),
            x,
            y,
            spec,
            seed=0,
            device=torch.device("cpu"),
        )


def test_run_grid_checkpoints_and_resumes(tmp_path):
    calls = []

    def run_one(run):
        calls.append(run["seed"])
        if run["seed"] == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # simulated interruption of the third run
        return [{"method": "m", "seed": run["seed"], "metric": "x", "value": run["seed"] * 1.5}]

    runs = [{"seed": s} for s in range(4)]
    with pytest.raises(KeyboardInterrupt):
        training.run_grid(runs, run_one, chapter="toy", checkpoint_dir=tmp_path)
    assert calls == [0, 1, 2]
    rows = training.run_grid(runs, run_one, chapter="toy", checkpoint_dir=tmp_path)
    assert calls == [0, 1, 2, 2, 3]  # finished runs 0 and 1 were not executed again
    assert [r["value"] for r in rows] == [0.0, 1.5, 3.0, 4.5]
    assert all("wall_s" in r for r in rows)


def test_run_grid_rejects_duplicate_runs():
    with pytest.raises(ValueError, match="duplicate"):
        training.run_grid([{"a": 1}, {"a": 1}], lambda r: [], chapter="toy")


def test_cpu_threads_sets_and_restores():
    before = torch.get_num_threads()
    with training.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with training.cpu_threads(0):
        assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads=-1"), training.cpu_threads(-1):
        pass
