"""Chapter 02: class-incremental learning with Balanced Softmax Cross-Entropy (Jodelet et al. 2021).

Every (dataset, number of increments, class order, seed, method) run trains one model through a
base task and equal incremental steps (:func:`incremental_loop.run_incremental`) and
records, per step, the accuracy on all seen classes (and on the old and new ones separately), the
training wall time and optimizer steps; per run, the average incremental accuracy, the average
forgetting and the totals.

Rows: ``dataset, increments, order, seed, method, metric, value`` plus ``step`` (0 = base task) for
per-step metrics; ``base_fraction`` (classes of the base task ÷ all classes) records the protocol.
Methods are named ``<ce|bsce>[_kd][_ft|_ftb][_random]_m<exemplars per class>``
(:meth:`incremental.Learner.parse`); :func:`method_table` spells the parts out.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pandas as pd
from torch import nn

from softmax_repro import metrics
from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_choice,
    check_int,
    check_positive,
    check_subset,
    config_factory,
)
from softmax_repro.data.digits import load_digits_split
from softmax_repro.data.hub import load_hub_images
from softmax_repro.data.mnist1d import Split, load_mnist1d
from softmax_repro.engine import incremental_loop, training
from softmax_repro.engine.models import CNN1D, MLP, ResNetCifar
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import incremental
from softmax_repro.pipeline import results

CHAPTER = "02_incremental_bsce"
NUM_CLASSES = {"mnist1d": 10, "digits": 10, "cifar100": 100}
DATASETS = tuple(NUM_CLASSES)
MODELS = {"mlp": DATASETS, "cnn1d": ("mnist1d",), "resnet8": ("cifar100",),
          "resnet20": ("cifar100",), "resnet32": ("cifar100",)}
"""Each model and the datasets it accepts."""
CPU_METHODS = ("ce_m20", "bsce_m20", "ce_m5", "bsce_m5", "ce_kd_m20", "bsce_kd_m20", "ce_ft_m20",
               "ce_kd_ft_m20", "ce_kd_ftb_m20", "bsce_random_m20", "ce_kd_m0", "bsce_kd_m0")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 02 settings.

    Attributes:
        datasets: ``mnist1d`` and ``digits`` (embedded) or ``cifar100`` (hub, ``paper``).
        methods: learner names, ``<ce|bsce>[_kd][_ft][_random]_m<exemplars per class>``.
        base_classes: classes of the base task.
        increments: numbers of equal incremental steps after the base task (one stream each).
        class_orders: seeds of the class orders (each run is repeated for every order).
        model: ``mlp`` (any dataset), ``cnn1d`` (mnist1d) or ``resnet8/20/32`` (cifar100).
        hidden: MLP width (two hidden layers).
        num_samples: MNIST-1D sequences generated (80% train, 20% test).
        epochs_base: epochs of the base task.
        epochs_step: epochs of each incremental step.
        batch_size: examples per SGD step.
        lr: peak learning rate of each stage (SGD, momentum 0.9, cosine to 0 within the stage).
        weight_decay: L2 penalty.
        finetune_epochs: epochs of the class-balanced fine-tuning stage (``_ft`` methods).
        finetune_lr: its learning rate (classifier only, cosine).
        budget_finetune_epochs: epochs of the fine-tuning stage of ``_ftb`` methods, taken out of
            the step's ``epochs_step`` so that they take as many optimizer steps as a learner
            without fine-tuning (about the paper profile's ratio of 20 to 160 epochs).
        kd_weight: weight λ of the distillation term (``_kd`` methods).
        kd_temperature: distillation temperature T.
        threads: intra-op threads while the chapter runs (restored afterwards); 1 suits the
            small models of the ``cpu`` profile, 0 keeps torch's setting.
        hub_train_files: local parquet file(s) of the cifar100 train split in the hub schema
            (glob allowed); ``None`` loads ``uoft-cs/cifar100`` from the hub.
        hub_test_files: the same for the test split.
    """

    datasets: tuple[str, ...] = ("mnist1d", "digits")
    methods: tuple[str, ...] = CPU_METHODS
    base_classes: int = 2
    increments: tuple[int, ...] = (4,)
    class_orders: tuple[int, ...] = (0, 1)
    model: str = "mlp"
    hidden: int = 256
    num_samples: int = 5_000
    epochs_base: int = 15
    epochs_step: int = 15
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    finetune_epochs: int = 10
    finetune_lr: float = 0.01
    budget_finetune_epochs: int = 2
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    threads: int = 1
    hub_train_files: str | None = None
    hub_test_files: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_subset("datasets", self.datasets, DATASETS)
        if not self.methods:
            raise ConfigError("methods is empty; give at least one, e.g. ['ce_m20', 'bsce_m20']")
        for method in self.methods:
            incremental.Learner.parse(method)
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods={list(self.methods)!r} has duplicates")
        check_choice("model", self.model, tuple(MODELS))
        for name in self.datasets:
            if name not in MODELS[self.model]:
                fitting = [m for m, accepted in MODELS.items() if name in accepted]
                raise ConfigError(f"model={self.model!r} does not fit dataset {name!r}; for "
                                  f"{name!r} choose one of {fitting}")
        if not self.increments or not self.class_orders:
            raise ConfigError("increments and class_orders must each list at least one value")
        for order in self.class_orders:
            check_int("class_orders item", order, 0)
        for name, steps in itertools.product(self.datasets, self.increments):
            incremental.make_task_stream(NUM_CLASSES[name], self.base_classes, steps, 0)
        for field in ("hidden", "epochs_base", "epochs_step", "batch_size", "finetune_epochs",
                      "budget_finetune_epochs"):
            check_int(field, getattr(self, field), 1)
        if any(incremental.Learner.parse(m).finetune_within_budget for m in self.methods):
            incremental_loop.within_budget_epochs(self.schedule())
        check_int("num_samples", self.num_samples, 100)
        check_int("threads", self.threads, 0)
        for field in ("lr", "finetune_lr", "kd_weight", "kd_temperature"):
            check_positive(field, getattr(self, field))
        check_positive("weight_decay", self.weight_decay, allow_zero=True)

    def schedule(self) -> incremental_loop.Schedule:
        """The training specs of every stage."""
        stage = dict(batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                     schedule="cosine")
        return incremental_loop.Schedule(
            base=training.TrainSpec(epochs=self.epochs_base, **stage),
            step=training.TrainSpec(epochs=self.epochs_step, **stage),
            finetune=training.TrainSpec(epochs=self.finetune_epochs, batch_size=self.batch_size,
                                        lr=self.finetune_lr, schedule="cosine"),
            budget_finetune=training.TrainSpec(epochs=self.budget_finetune_epochs,
                                               batch_size=self.batch_size, lr=self.finetune_lr,
                                               schedule="cosine"),
            kd_weight=self.kd_weight, kd_temperature=self.kd_temperature)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "class_orders": (0,), "num_samples": 1000, "hidden": 32,
              "epochs_base": 2, "epochs_step": 2, "finetune_epochs": 1,
              "budget_finetune_epochs": 1},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2), "datasets": ("cifar100",), "model": "resnet32",
              "base_classes": 50, "increments": (5, 10, 25), "class_orders": (1993,),
              "methods": ("ce_m20", "bsce_m20", "ce_kd_m20", "bsce_kd_m20", "ce_kd_ft_m20",
                          "ce_kd_ftb_m20", "ce_kd_m0", "bsce_kd_m0"),
              "epochs_base": 160, "epochs_step": 160, "batch_size": 128, "lr": 0.1,
              "finetune_epochs": 20, "budget_finetune_epochs": 20, "finetune_lr": 0.01,
              "threads": 0},
}


make_config = config_factory(Config, PROFILES)


def _standardize_channels(split: Split) -> Split:
    """Images ``[N, C, H, W]`` standardised per channel with the training set's mean and std."""
    mean = split.x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = split.x_train.std(dim=(0, 2, 3), keepdim=True)
    return Split((split.x_train - mean) / std, split.y_train, (split.x_test - mean) / std,
                 split.y_test)


def load_dataset(name: str, config: Config) -> Split:
    """Train/test tensors of ``name`` with original labels ``0..C-1``."""
    if name == "mnist1d":
        return load_mnist1d(config.num_samples, seed=42)
    if name == "digits":
        return load_digits_split(test_fraction=0.3, seed=0)
    x_tr, y_tr = load_hub_images("cifar100", "train", data_files=config.hub_train_files)
    x_te, y_te = load_hub_images("cifar100", "test", data_files=config.hub_test_files)
    return _standardize_channels(Split(x_tr, y_tr, x_te, y_te))


def build_model(config: Config, data: Split, num_classes: int) -> nn.Module:
    """The chapter's classifier, with a head over all ``num_classes`` classes."""
    if config.model == "mlp":
        return MLP(math.prod(data.x_train.shape[1:]), config.hidden, num_classes, depth=2)
    if config.model == "cnn1d":
        return CNN1D(num_classes)
    return ResNetCifar(int(config.model.removeprefix("resnet")), num_classes)


def log_rows(log: incremental_loop.IncrementalLog) -> list[dict[str, Any]]:
    """Per-step and per-run metric rows of one run (setting columns added by the caller)."""
    rows: list[dict[str, Any]] = []
    per_step = {"acc": log.step_accuracy, "acc_old": log.old_accuracy,
                "acc_new": log.new_accuracy, "train_s": log.train_s,
                "opt_steps": log.optimizer_steps, "memory": log.memory_size}
    for metric, values in per_step.items():
        rows += [{"metric": metric, "step": step, "value": float(v)}
                 for step, v in enumerate(values) if not math.isnan(float(v))]
    summary = {
        "avg_inc_acc": log.average_incremental_accuracy,
        "forgetting": log.average_forgetting,
        "final_acc": float(log.step_accuracy[-1]),
        "train_s_inc": float(log.train_s[1:].sum()),
        "opt_steps_inc": float(log.optimizer_steps[1:].sum()),
        "loss_change_last_fifth": log.loss_change_last_fifth,
    }
    rows += [{"metric": k, "value": float(v)} for k, v in summary.items()
             if not math.isnan(float(v))]
    return rows


def method_table(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` plus columns spelling out each method: loss, memory, kd, finetune, selection."""
    parts = {m: incremental.Learner.parse(m) for m in rows["method"].unique()}
    return rows.assign(
        loss=rows["method"].map(lambda m: parts[m].loss),
        memory=rows["method"].map(lambda m: parts[m].memory_per_class),
        kd=rows["method"].map(lambda m: parts[m].distillation),
        finetune=rows["method"].map(lambda m: parts[m].balanced_finetune),
        selection=rows["method"].map(lambda m: parts[m].selection))


RUN_KEYS = ["dataset", "increments", "order", "seed"]
"""Columns that identify a paired comparison (same data, stream and initialisation)."""


def paired_differences(rows: pd.DataFrame, pairs: list[tuple[str, str]],
                       metric: str = "avg_inc_acc") -> pd.DataFrame:
    """Per dataset and pair ``(a, b)``: mean and 95% CI of ``a − b`` in ``metric``, paired by run.

    Returns columns ``dataset, increments, a, b, mean, ci_low, ci_high, n``.
    """
    values = rows[rows["metric"] == metric].pivot_table(index=RUN_KEYS, columns="method",
                                                        values="value")
    records = []
    for (dataset, increments), group in values.groupby(level=["dataset", "increments"]):
        for a, b in pairs:
            if a not in group or b not in group:
                continue
            mean, low, high = metrics.paired_difference_ci(group[a], group[b])
            records.append({"dataset": dataset, "increments": increments, "a": a, "b": b,
                            "mean": mean, "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame.from_records(records)


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every (dataset, increments, order, seed, method) run; rows written to the results file."""
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    with training.cpu_threads(config.threads):
        with timer("data"):
            sources = {name: load_dataset(name, config) for name in config.datasets}
        grid = [{"dataset": d, "increments": k, "order": o, "seed": s, "method": m}
                for d, k, o, s, m in itertools.product(config.datasets, config.increments,
                                                       config.class_orders, config.seeds,
                                                       config.methods)]
        schedule = config.schedule()

        def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
            data, num_classes = sources[run["dataset"]], NUM_CLASSES[run["dataset"]]
            stream = incremental.make_task_stream(num_classes, config.base_classes,
                                                  run["increments"], run["order"])
            training.seed_everything(run["seed"])
            model = build_model(config, data, num_classes)
            log = incremental_loop.run_incremental(
                model, data, stream, incremental.Learner.parse(run["method"]), schedule,
                seed=run["seed"], device=device)
            protocol = {"metric": "base_fraction", "value": config.base_classes / num_classes}
            return [{**run, **row} for row in [*log_rows(log), protocol]]

        with timer("train+evaluate"):
            rows = training.run_grid(grid, run_one, chapter=CHAPTER)
        return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir,
                                    started=started, timer=timer, device=device)
