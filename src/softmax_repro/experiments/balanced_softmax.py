"""Chapter 01: long-tailed recognition with Balanced Softmax (Ren et al. 2020).

Trains the same model on a long-tailed training set with each loss and evaluates top-1 accuracy on
a balanced test set, over seeds. Rows: ``dataset, imbalance, method, seed, metric, value``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from softmax_repro import losses, metrics, results, training
from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_choice,
    check_int,
    check_positive,
    check_subset,
)
from softmax_repro.config import (
    make_config as _make_config,
)
from softmax_repro.data import longtail
from softmax_repro.data.mnist1d import Split, load_mnist1d
from softmax_repro.models import CNN1D, MLP
from softmax_repro.timing import PhaseTimer

CHAPTER = "01_balanced_softmax"
DATASETS = ("mnist1d",)
METHODS = ("softmax", "balanced_softmax")
MODELS = ("cnn1d", "mlp")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 01 settings.

    Attributes:
        datasets: embedded datasets to make long-tailed.
        imbalances: imbalance factors n_max / n_min (>= 1).
        methods: losses to compare.
        n_max: training examples of the largest class.
        num_samples: MNIST-1D sequences generated (80% train, 20% test).
        model: ``cnn1d`` or ``mlp``.
        epochs: passes over the long-tailed training set.
        batch_size: examples per SGD step.
        lr: peak learning rate (SGD, momentum 0.9, cosine schedule).
        weight_decay: L2 penalty.
    """

    datasets: tuple[str, ...] = DATASETS
    imbalances: tuple[float, ...] = (100,)
    methods: tuple[str, ...] = METHODS
    n_max: int = 4000
    num_samples: int = 62_500
    model: str = "cnn1d"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.05
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_subset("datasets", self.datasets, DATASETS)
        check_subset("methods", self.methods, METHODS)
        if not self.imbalances:
            raise ConfigError("imbalances is empty; give at least one imbalance factor >= 1")
        for factor in self.imbalances:
            longtail.longtail_counts(self.n_max, 10, factor)
        check_int("n_max", self.n_max, 1)
        check_int("num_samples", self.num_samples, 100)
        check_choice("model", self.model, MODELS)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "num_samples": 5000, "n_max": 300, "epochs": 2},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2), "epochs": 200},
}


def make_config(
    profile: str = "cpu",
    seeds: Any = None,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> Config:
    """A validated :class:`Config` from a profile plus overrides."""
    return _make_config(Config, PROFILES, profile, seeds, device, overrides)


@dataclasses.dataclass(frozen=True)
class ChapterResult:
    """The chapter's rows (one per run and metric) and their provenance."""

    rows: pd.DataFrame
    provenance: dict[str, Any]


def build_loss(method: str, class_counts: list[int]) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of ``method`` for a training set with ``class_counts``."""
    if method == "balanced_softmax":
        return losses.BalancedSoftmaxLoss(class_counts)
    return losses.softmax_cross_entropy


def build_model(config: Config, in_dim: int, num_classes: int) -> nn.Module:
    """The chapter's classifier."""
    if config.model == "mlp":
        return MLP(in_dim, 256, num_classes, depth=2)
    return CNN1D(num_classes)


def load_dataset(name: str, config: Config) -> Split:
    """The balanced source data of ``name`` (long-tailing happens per run)."""
    return load_mnist1d(config.num_samples, seed=42)


def train_and_evaluate(
    config: Config, data: Split, imbalance: float, method: str, seed: int, device: torch.device
) -> dict[str, float]:
    """One run: long-tail the training set with ``seed``, train ``method``, return metrics."""
    num_classes = int(data.y_train.max()) + 1
    counts = longtail.longtail_counts(config.n_max, num_classes, imbalance)
    idx = longtail.subsample_longtail(data.y_train, counts, seed)
    training.seed_everything(seed)
    model = build_model(config, data.x_train.shape[1], num_classes)
    spec = training.TrainSpec(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        schedule="cosine",
    )
    training.fit_classifier(
        model,
        build_loss(method, counts),
        data.x_train[idx],
        data.y_train[idx],
        spec,
        seed=seed,
        device=device,
    )
    logits = training.predict(model, data.x_test, device=device)
    return {"top1": metrics.accuracy(logits, data.y_test)}


def run(config: Config, *, results_dir: str = "results") -> ChapterResult:
    """Every (dataset, imbalance, method, seed) run; rows written to the results file."""
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    with timer("data"):
        sources = {name: load_dataset(name, config) for name in config.datasets}
    grid = [
        {"dataset": d, "imbalance": i, "method": m, "seed": s}
        for d, i, m, s in itertools.product(
            config.datasets, config.imbalances, config.methods, config.seeds
        )
    ]

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        scores = train_and_evaluate(
            config, sources[run["dataset"]], run["imbalance"], run["method"], run["seed"], device
        )
        return [
            {**run, "dataset": f"{run['dataset']}-lt", "metric": k, "value": v}
            for k, v in scores.items()
        ]

    with timer("train+evaluate"):
        rows = training.run_grid(grid, run_one, chapter=CHAPTER)
    wall = sum(timer.seconds.values())
    path = results.write_results(
        CHAPTER,
        config,
        rows,
        results_dir=results_dir,
        started=started,
        wall_s=wall,
        device=device,
        timings=timer.as_dict(),
    )
    frame, provenance = results.read_results(path)
    return ChapterResult(frame, provenance)
