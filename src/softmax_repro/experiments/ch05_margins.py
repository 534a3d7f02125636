"""Chapter 05: margins on the softmax — HASeparator, L-Softmax and D-Softmax.

Four parts, one results file (``part`` column):

* ``haseparator``: an embedding network (body → ``embedding``-d linear layer → batch norm, as in
  HASeparator's code) trained with plain linear CE (``linear_ce``), cosine CE at ``s = 1``
  (``cos1``) and ``s = high_scale`` (``cos16``), each also with the HASeparator hinge
  (``cos1_hinge``, ``cos16_hinge``, margin ``hinge_margin``). The two scales separate the
  hinge's effect from the scale's.
* ``lsoftmax``: the same network with L-Softmax heads, ``m ∈ lsoftmax_margins``; ``m = 1`` is
  bias-free softmax CE (``lsoftmax_m1``, the baseline); ``m > 1`` with the official λ annealing
  (``lsoftmax_m{m}_anneal``) and without it (``lsoftmax_m{m}``).
* ``dsoftmax_classes``: 3-D embeddings (no batch norm) trained on the first 5 and on all 10
  classes with cosine softmax (``softmax_k5``/``softmax_k10``) and D-Softmax
  (``dsoftmax_k5``/``dsoftmax_k10``) at the same scale; the within-class angle is measured on the
  five classes both runs share. Derived rows (``metric = relaxation_deg``, methods ``softmax`` and
  ``dsoftmax``) hold angle(5 classes) − angle(10 classes) per seed.
* ``dsoftmax_speed``: a synthetic head with ``speed_classes`` classes: class centres are random
  unit vectors in ``speed_dim`` dimensions, inputs are noisy centres, a linear layer is the
  encoder; D-Softmax with the full inter-class term (``dsoftmax_full``) vs ``1/negative_ratio``
  of the classes sampled per batch (``dsoftmax_sampled``). Seconds per optimizer step are
  measured in the same process with ``threads`` pinned (metrics ``step_s`` and ``log_step_s``:
  wall seconds; ``cpu_step_s``: the process's CPU seconds, robust to other load).

Learning rates: every method of every part gets the same search: each of ``lr_grid`` trained
once on the first seed, scored on a validation split carved from the training set (never the
test set); the best is used for every seed (the first seed's run is reused). Rows of the search
have ``series = lr_search`` (metric ``val_top1``, column ``lr``); the rest ``series = final``
(the chosen rate as metric ``lr``). Training: Adam (SGD with Nesterov momentum at ``paper``),
cosine decay to 0, the last epoch's model (no checkpoint picking).

Metrics of the classifier parts: ``top1`` (test), ``val_top1``, ``within_angle_deg`` (mean angle
between a test embedding and its class's mean direction), ``min_mean_angle_deg`` (smallest angle
between two class-mean directions), ``margin_share`` (share of test points whose smallest
hyperplane distance ``min_{j≠y} x̂ᵀ n_{yj}`` reaches ``hinge_margin``; class weights of the
trained head), ``train_loss_last``, ``loss_drop_last_fifth`` (mean training loss of the epoch at
four fifths of training minus that of the last epoch), ``val_top1_moved_last_fifth``
(|validation top-1 at the end − after four fifths of the steps|: the convergence check) and
``lr``.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from softmax_repro import metrics
from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
    check_subset,
    config_factory,
)
from softmax_repro.data import hub
from softmax_repro.data.fashion_mnist import load_fashion_mnist
from softmax_repro.data.mnist1d import load_mnist1d
from softmax_repro.engine import training
from softmax_repro.engine.models import MLP, ResNetCifar
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import margins
from softmax_repro.pipeline import results

CHAPTER = "05_margins"
PARTS = ("haseparator", "lsoftmax", "dsoftmax_classes", "dsoftmax_speed")
HA_METHODS = ("linear_ce", "cos1", "cos1_hinge", "cos16", "cos16_hinge")
DATASETS = ("mnist1d", "fashion_mnist", "cifar10")
MODELS = ("mlp", "resnet")
SPEED_METHODS = ("dsoftmax_full", "dsoftmax_sampled")
KNOWN_LEVELS = {"mnist1d": 0.68}
"""Published test accuracy of plain CE for the ``cpu`` setup: MNIST-1D (4,000 training
sequences), MLP 68% (Greydanus 2020, "Scaling down deep learning", its table of baselines)."""


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 05 settings.

    Attributes:
        parts: which parts to run (:data:`PARTS`).
        dataset: ``mnist1d`` (generated, 4,000 train / 1,000 test at the default size),
            ``fashion_mnist`` (Debian files) or ``cifar10`` (hub, ``paper`` profile).
        num_samples: MNIST-1D sequences generated (80% train, 20% test).
        train_subset: use only the first this many training examples (``None``: all).
        hub_data_dir: ``cifar10`` only: folder with ``cifar10/{train,test}*.parquet`` in the hub
            schema; ``None`` loads the hub id.
        val_size: training examples held out for the learning-rate search (fixed split).
        model: ``mlp`` (``depth`` hidden layers of ``hidden`` units) or ``resnet``
            (``ResNetCifar`` of depth ``resnet_depth``) as the body of the embedding network.
        embedding: embedding size of the ``haseparator`` and ``lsoftmax`` parts (HASeparator: 64).
        epochs, batch_size: training length and batch (HASeparator: 150 epochs, batch 128).
        optimizer: ``adam`` or ``sgd`` (Nesterov momentum 0.9, ``weight_decay``).
        lr_grid: learning rates searched per method on the validation split.
        hinge_margin: HASeparator's ``m`` (0.1) and the margin of ``margin_share``.
        high_scale: the large cosine scale ``s`` (the small one is HASeparator's 1).
        lsoftmax_margins: L-Softmax margins ``m`` (1 = the baseline).
        lambda_base, lambda_gamma, lambda_power, lambda_min: the official λ schedule.
        lambda_half_point: fraction of training at which the compressed schedule reaches the
            point (λ ≈ 1) the official one reaches after ~8,700 iterations.
        dsoftmax_d: D-Softmax's intra-class end point ``d`` (paper: 0.9).
        dsoftmax_scale: ``s`` of D-Softmax and of its cosine-softmax comparison.
        class_counts: the two class counts of ``dsoftmax_classes`` (paper: 5 and 10 identities).
        small_embedding: embedding size of ``dsoftmax_classes`` (paper: 3).
        speed_classes, speed_dim, speed_train_per_class, speed_noise: the synthetic head.
        speed_epochs, speed_batch_size, speed_lr_grid: its training.
        negative_ratio: the sampled variant keeps ``speed_classes / negative_ratio`` classes.
        threads: torch intra-op threads during the run (timings need a fixed count).
    """

    parts: tuple[str, ...] = PARTS
    dataset: str = "mnist1d"
    num_samples: int = 5_000
    train_subset: int | None = None
    hub_data_dir: str | None = None
    val_size: int = 500
    model: str = "mlp"
    hidden: int = 100
    depth: int = 2
    resnet_depth: int = 56
    embedding: int = 64
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_grid: tuple[float, ...] = (2e-3, 6e-3, 2e-2)
    hinge_margin: float = 0.1
    high_scale: float = 16.0
    lsoftmax_margins: tuple[int, ...] = (1, 2, 3, 4)
    lambda_base: float = 1000.0
    lambda_gamma: float = 2.5e-5
    lambda_power: float = 35.0
    lambda_min: float = 0.0
    lambda_half_point: float = 0.5
    dsoftmax_d: float = 0.9
    dsoftmax_scale: float = 16.0
    class_counts: tuple[int, int] = (5, 10)
    small_embedding: int = 3
    speed_classes: int = 10_240
    speed_dim: int = 16
    speed_train_per_class: int = 2
    speed_noise: float = 0.05
    speed_epochs: int = 1
    speed_batch_size: int = 256
    speed_lr_grid: tuple[float, ...] = (0.1, 0.3)
    negative_ratio: int = 64
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_subset("parts", self.parts, PARTS)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, MODELS)
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        for name in ("hidden", "depth", "embedding", "epochs", "batch_size", "small_embedding",
                     "speed_dim", "speed_train_per_class", "speed_epochs", "speed_batch_size",
                     "negative_ratio"):
            check_int(name, getattr(self, name), 1)
        check_int("threads", self.threads, 0)
        check_int("num_samples", self.num_samples, 10)
        check_int("val_size", self.val_size, 10)
        check_int("speed_classes", self.speed_classes, 2)
        if self.speed_classes // self.negative_ratio < 1:
            raise ConfigError(f"negative_ratio={self.negative_ratio} leaves no sampled class of "
                              f"speed_classes={self.speed_classes}; lower it")
        if self.train_subset is not None:
            check_int("train_subset", self.train_subset, self.val_size + 10)
        check_choice("resnet_depth", self.resnet_depth, (8, 14, 20, 32, 44, 56, 110))
        for name in ("lr_grid", "speed_lr_grid"):
            grid = getattr(self, name)
            if not grid:
                raise ConfigError(f"{name} is empty; give at least one learning rate, e.g. [0.01]")
            for lr in grid:
                check_positive(f"{name} item", lr)
        if not self.lsoftmax_margins or 1 not in self.lsoftmax_margins:
            raise ConfigError("lsoftmax_margins must include 1 (the bias-free softmax baseline), "
                              f"got {list(self.lsoftmax_margins)}")
        for m in self.lsoftmax_margins:
            check_int("lsoftmax_margins item", m, 1)
        for name in ("hinge_margin", "high_scale", "dsoftmax_scale", "lambda_base",
                     "lambda_gamma", "lambda_power", "speed_noise"):
            check_positive(name, getattr(self, name))
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("lambda_min", self.lambda_min, allow_zero=True)
        check_in_range("lambda_half_point", self.lambda_half_point, 0.01, 1.0)
        check_in_range("dsoftmax_d", self.dsoftmax_d, -1.0, 1.0)
        if len(self.class_counts) != 2 or not all(
                isinstance(c, int) and c >= 2 for c in self.class_counts) \
                or self.class_counts[0] >= self.class_counts[1]:
            raise ConfigError(f"class_counts={list(self.class_counts)!r} must be two integers "
                              ">= 2, the smaller first, e.g. [5, 10]")
        if self.dataset == "mnist1d" and self.model != "mlp":
            raise ConfigError("dataset='mnist1d' needs model='mlp' (sequences, not images)")


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "num_samples": 5_000, "train_subset": 1_000, "val_size": 200,
              "epochs": 2, "lr_grid": (3e-3, 1e-2),
              "speed_classes": 1_024, "speed_train_per_class": 2, "speed_epochs": 1,
              "speed_lr_grid": (3e-2,), "negative_ratio": 16},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2, 3, 4), "dataset": "cifar10", "model": "resnet",
              "resnet_depth": 56, "epochs": 150, "batch_size": 128, "optimizer": "sgd",
              "weight_decay": 1e-4, "lr_grid": (0.01, 0.03, 0.1), "val_size": 5_000,
              "speed_classes": 102_400, "speed_dim": 128, "speed_train_per_class": 4,
              "speed_epochs": 5, "speed_batch_size": 512, "threads": 0},
}


make_config = config_factory(Config, PROFILES)


# ---------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass(frozen=True)
class Splits:
    """Training (without the validation part), validation and test tensors."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    def classes_below(self, count: int) -> Splits:
        """Only the examples of classes ``0..count-1``."""
        def keep(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            mask = y < count
            return x[mask], y[mask]
        return Splits(*keep(self.x_train, self.y_train), *keep(self.x_val, self.y_val),
                      *keep(self.x_test, self.y_test))


def _hub_files(config: Config) -> dict[str, list[str] | None]:
    files: dict[str, list[str] | None] = {"train": None, "test": None}
    if config.hub_data_dir is not None:
        for split in files:
            folder = Path(config.hub_data_dir) / config.dataset
            found = sorted(glob.glob(str(folder / f"{split}*.parquet")))
            if not found:
                raise FileNotFoundError(f"no {split}*.parquet in {folder}")
            files[split] = found
    return files


def load_splits(config: Config) -> Splits:
    """The dataset's train/validation/test split. The validation examples are a fixed random
    choice (generator seed 0) of ``val_size`` training examples, the same for every seed."""
    if config.dataset == "mnist1d":
        data = load_mnist1d(config.num_samples, seed=42)
        x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    elif config.dataset == "fashion_mnist":
        x_tr, y_tr = load_fashion_mnist("train")
        x_te, y_te = load_fashion_mnist("test")
        x_tr, x_te = x_tr.flatten(1), x_te.flatten(1)
    else:
        files = _hub_files(config)
        x_tr, y_tr = hub.load_hub_images(config.dataset, "train", data_files=files["train"])
        x_te, y_te = hub.load_hub_images(config.dataset, "test", data_files=files["test"])
        mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
        std = x_tr.std(dim=(0, 2, 3), keepdim=True)
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if config.train_subset is not None:
        x_tr, y_tr = x_tr[: config.train_subset], y_tr[: config.train_subset]
    if config.val_size >= len(y_tr):
        raise ConfigError(f"val_size={config.val_size} must be below the {len(y_tr)} training "
                          "examples")
    order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))
    val, train = order[: config.val_size], order[config.val_size:]
    return Splits(x_tr[train], y_tr[train], x_tr[val], y_tr[val], x_te, y_te)


def synthetic_head_data(config: Config, seed: int) -> Splits:
    """The synthetic many-class set of the speed part: centres ``μ_k`` uniform on the unit
    sphere in ``speed_dim`` dimensions, ``x = μ_y + speed_noise · ε``; ``speed_train_per_class``
    training, one validation and one test point per class. A pure function of ``seed``."""
    generator = torch.Generator().manual_seed(1_000 + seed)
    k, dim = config.speed_classes, config.speed_dim
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=generator), dim=1)

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(k).repeat(per_class)
        return centres[y] + config.speed_noise * torch.randn(len(y), dim, generator=generator), y

    return Splits(*draw(config.speed_train_per_class), *draw(1), *draw(1))


# ---------------------------------------------------------------------------------------------
# models and losses


def embedding_net(config: Config, in_shape: tuple[int, ...], embedding: int,
                  batch_norm: bool) -> nn.Module:
    """Body → linear layer of ``embedding`` units (→ batch norm): maps inputs to embeddings."""
    if config.model == "mlp":
        body: nn.Module = MLP(math.prod(in_shape), config.hidden, embedding, depth=config.depth)
    else:
        body = ResNetCifar(config.resnet_depth, num_classes=embedding)
    return nn.Sequential(body, nn.BatchNorm1d(embedding)) if batch_norm else body


def lambda_schedule(config: Config, total_steps: int) -> margins.LambdaSchedule:
    """The official λ schedule compressed so that λ falls to 1 at ``lambda_half_point`` of
    ``total_steps`` (the official curve gets there after ~8,700 iterations)."""
    official = margins.LambdaSchedule(config.lambda_base, config.lambda_gamma,
                                      config.lambda_power, config.lambda_min)
    reach_one = (config.lambda_base ** (1.0 / config.lambda_power) - 1.0) / config.lambda_gamma
    return official.compressed(reach_one / max(1.0, config.lambda_half_point * total_steps))


def lsoftmax_methods(config: Config) -> list[str]:
    """``lsoftmax_m1`` and, for every ``m > 1``, ``lsoftmax_m{m}`` and ``lsoftmax_m{m}_anneal``."""
    names = []
    for m in config.lsoftmax_margins:
        names += [f"lsoftmax_m{m}"] if m == 1 else [f"lsoftmax_m{m}", f"lsoftmax_m{m}_anneal"]
    return names


def part_methods(config: Config, part: str) -> list[str]:
    """The methods of ``part``."""
    if part == "haseparator":
        return list(HA_METHODS)
    if part == "lsoftmax":
        return lsoftmax_methods(config)
    if part == "dsoftmax_classes":
        return [f"{loss}_k{k}" for k in config.class_counts for loss in ("softmax", "dsoftmax")]
    return list(SPEED_METHODS)


def make_loss(config: Config, method: str, dim: int, num_classes: int, total_steps: int,
              seed: int) -> margins._HeadLoss:
    """The loss module (owning the class weights) of ``method``."""
    if method == "linear_ce":
        return margins.LinearSoftmaxLoss(dim, num_classes)
    if method.startswith("cos"):
        scale = 1.0 if method.startswith("cos1") and not method.startswith("cos16") \
            else config.high_scale
        hinge = config.hinge_margin if method.endswith("_hinge") else None
        return margins.CosineSoftmaxLoss(dim, num_classes, scale=scale, hinge_margin=hinge)
    if method.startswith("lsoftmax_m"):
        m = int(method.removeprefix("lsoftmax_m").split("_")[0])
        schedule = lambda_schedule(config, total_steps) if method.endswith("_anneal") else None
        return margins.LargeMarginSoftmaxLoss(dim, num_classes, margin=m, schedule=schedule)
    if method.startswith("softmax_k"):
        return margins.CosineSoftmaxLoss(dim, num_classes, scale=config.dsoftmax_scale)
    negatives = None
    if method == "dsoftmax_sampled":
        negatives = max(1, config.speed_classes // config.negative_ratio)
    return margins.DSoftmaxLoss(dim, num_classes, scale=config.dsoftmax_scale,
                                d=config.dsoftmax_d, negatives_per_batch=negatives,
                                generator=torch.Generator().manual_seed(seed))


def train_spec(config: Config, lr: float, speed: bool) -> training.TrainSpec:
    """Adam (or Nesterov SGD), cosine decay to 0."""
    if speed:
        return training.TrainSpec(epochs=config.speed_epochs, batch_size=config.speed_batch_size,
                                  lr=lr, optimizer="adam", schedule="cosine")
    return training.TrainSpec(epochs=config.epochs, batch_size=config.batch_size, lr=lr,
                              optimizer=config.optimizer, nesterov=config.optimizer == "sgd",
                              weight_decay=config.weight_decay, schedule="cosine")


# ---------------------------------------------------------------------------------------------
# one run


def head_accuracy(loss: margins._HeadLoss, emb: Tensor, y: Tensor, rows: int = 1024) -> float:
    """Top-1 of ``loss.logits`` on embeddings ``emb[N, D]``, ``rows`` at a time (a head over
    10,240 classes would otherwise build one ``[N, C]`` block of hundreds of MB)."""
    with torch.no_grad():
        hits = sum(int((loss.logits(emb[i:i + rows]).argmax(dim=1).cpu() == y[i:i + rows]).sum())
                   for i in range(0, len(y), rows))
    return hits / len(y)


class ValidationProbe:
    """``loss(embeddings, target)`` that also records ``score()`` once, just before the training
    step ``at_step`` (0-based) computes its loss: the validation top-1 after four fifths of
    training, for the convergence check. Scoring uses no randomness, so training is unchanged."""

    def __init__(self, loss: nn.Module, at_step: int, score: Any) -> None:
        self.loss, self.at_step, self.score = loss, at_step, score
        self.calls = 0
        self.value = float("nan")

    def __call__(self, embeddings: Tensor, target: Tensor) -> Tensor:
        if self.calls == self.at_step:
            self.value = self.score()
        self.calls += 1
        return self.loss(embeddings, target)


def feature_scores(loss: margins._HeadLoss, emb: Tensor, y: Tensor, config: Config,
                   angle_classes: int | None = None) -> dict[str, float]:
    """Accuracy and embedding geometry of test embeddings ``emb[N, D]`` with labels ``y[N]``.

    ``angle_classes``: measure ``within_angle_deg`` on classes ``0..angle_classes-1`` only.
    """
    with torch.no_grad():
        logits = loss.logits(emb)
        hyper = margins.hyperplane_margins(emb, loss.weight, y).min(dim=1).values
    keep = y < angle_classes if angle_classes is not None else torch.ones_like(y, dtype=torch.bool)
    return {
        "top1": metrics.accuracy(logits, y),
        "within_angle_deg": margins.within_class_angle(emb[keep], y[keep]),
        "min_mean_angle_deg": margins.min_class_mean_angle(emb, y),
        "margin_share": float((hyper >= config.hinge_margin).double().mean()),
    }


def train_and_score(config: Config, part: str, method: str, lr: float, seed: int,
                    data: Splits, device: torch.device) -> dict[str, float]:
    """Train ``method`` of ``part`` with learning rate ``lr`` and seed ``seed``; score it."""
    speed = part == "dsoftmax_speed"
    num_classes = int(data.y_train.max()) + 1
    spec = train_spec(config, lr, speed)
    total_steps = spec.epochs * math.ceil(len(data.y_train) / spec.batch_size)
    training.seed_everything(seed)
    if speed:
        dim = config.speed_dim
        net: nn.Module = nn.Linear(dim, dim)
    else:
        dim = config.small_embedding if part == "dsoftmax_classes" else config.embedding
        net = embedding_net(config, tuple(data.x_train.shape[1:]), dim,
                            batch_norm=part != "dsoftmax_classes")
    loss = make_loss(config, method, dim, num_classes, total_steps, seed).to(device)

    def val_top1() -> float:
        emb = training.predict(net, data.x_val, device=device).to(device)
        return head_accuracy(loss, emb, data.y_val)

    # the speed part times its training steps: no evaluation inside its loop
    probe = ValidationProbe(loss, at_step=-1 if speed else int(0.8 * total_steps),
                            score=val_top1)
    cpu_start = time.process_time()
    log = training.fit_classifier(net, probe, data.x_train, data.y_train, spec, seed=seed,
                                  device=device, params=[*net.parameters(), *loss.parameters()],
                                  data_parallel=False)
    cpu_seconds = time.process_time() - cpu_start
    loss.eval()
    fifth = log.epoch_losses[max(0, math.ceil(0.8 * len(log.epoch_losses)) - 1)]
    scores = {"val_top1": val_top1(),
              "train_loss_last": log.epoch_losses[-1],
              "loss_drop_last_fifth": fifth - log.epoch_losses[-1]}
    if not speed:
        scores["val_top1_moved_last_fifth"] = abs(scores["val_top1"] - probe.value)
    test_emb = training.predict(net, data.x_test, device=device).to(device)
    if speed:
        scores["top1"] = head_accuracy(loss, test_emb, data.y_test)
        step = log.wall_s / log.steps
        scores.update({"step_s": step, "log_step_s": math.log(step),
                       "cpu_step_s": cpu_seconds / log.steps})
        return scores
    angle_classes = config.class_counts[0] if part == "dsoftmax_classes" else None
    scores.update(feature_scores(loss.cpu(), test_emb.cpu(), data.y_test, config, angle_classes))
    return scores


# ---------------------------------------------------------------------------------------------
# the chapter


def final_rows(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of finished runs with ``series = final``: the ``lr`` column becomes a metric row."""
    out, seen = [], set()
    for row in raw:
        base = {k: v for k, v in row.items() if k not in ("lr", "metric", "value", "wall_s")}
        out.append({**base, "series": "final", "metric": row["metric"], "value": row["value"],
                    "wall_s": row.get("wall_s")})
        key = tuple(sorted(base.items()))
        if key not in seen:
            seen.add(key)
            out.append({**base, "series": "final", "metric": "lr", "value": row["lr"],
                        "wall_s": row.get("wall_s")})
    return out


def best_learning_rates(raw: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """``(part, method) -> lr`` with the highest validation accuracy in the search rows ``raw``
    (ties: the first in grid order)."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for row in raw:
        if row["metric"] != "val_top1":
            continue
        key = (row["part"], row["method"])
        if key not in best or row["value"] > best[key][0]:
            best[key] = (row["value"], row["lr"])
    return {key: lr for key, (_, lr) in best.items()}


def relaxation_rows(rows: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """``relaxation_deg`` = within-class angle with the fewer classes minus with the more,
    per seed, for ``softmax`` and ``dsoftmax`` (the ``dsoftmax_classes`` part)."""
    few, many = config.class_counts
    angle = {(r["method"], r["seed"]): r["value"] for r in rows
             if r["part"] == "dsoftmax_classes" and r["series"] == "final"
             and r["metric"] == "within_angle_deg"}
    out = []
    for loss in ("softmax", "dsoftmax"):
        for seed in config.seeds:
            if (f"{loss}_k{few}", seed) in angle and (f"{loss}_k{many}", seed) in angle:
                out.append({"part": "dsoftmax_classes", "dataset": config.dataset,
                            "method": loss, "seed": seed, "series": "final",
                            "metric": "relaxation_deg",
                            "value": angle[(f"{loss}_k{few}", seed)]
                            - angle[(f"{loss}_k{many}", seed)]})
    return out


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every part's learning-rate search and seeds; rows written to the results file."""
    with training.cpu_threads(config.threads):
        return _run(config, results_dir)


def _run(config: Config, results_dir: str) -> results.ChapterResult:
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    classifier_parts = [p for p in config.parts if p != "dsoftmax_speed"]
    data = load_splits(config) if classifier_parts else None
    speed_data: dict[int, Splits] = {}

    def data_of(part: str, method: str, seed: int) -> Splits:
        if part == "dsoftmax_speed":
            if seed not in speed_data:
                speed_data.clear()
                speed_data[seed] = synthetic_head_data(config, seed)
            return speed_data[seed]
        assert data is not None
        if part == "dsoftmax_classes":
            return data.classes_below(int(method.rsplit("_k", 1)[1]))
        return data

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        with timer(run["part"]):
            scores = train_and_score(config, run["part"], run["method"], run["lr"], run["seed"],
                                     data_of(run["part"], run["method"], run["seed"]), device)
        return [{**run, "metric": k, "value": v} for k, v in scores.items()]

    tune_seed = config.seeds[0]
    search = [{"part": part, "dataset": "synthetic" if part == "dsoftmax_speed"
               else config.dataset, "method": method, "lr": lr, "seed": tune_seed}
              for part in config.parts for method in part_methods(config, part)
              for lr in (config.speed_lr_grid if part == "dsoftmax_speed" else config.lr_grid)]
    searched = training.run_grid(search, run_one, chapter=CHAPTER, desc=f"{CHAPTER} lr search")
    chosen = best_learning_rates(searched)
    rows = [{**{k: r[k] for k in ("part", "dataset", "method", "seed", "lr")},
             "series": "lr_search", "metric": "val_top1", "value": r["value"]}
            for r in searched if r["metric"] == "val_top1"]
    rows += final_rows([r for r in searched if r["lr"] == chosen[(r["part"], r["method"])]])
    datasets = {(r["part"], r["method"]): r["dataset"] for r in search}
    final = [{"part": part, "dataset": datasets[(part, method)], "method": method, "lr": lr,
              "seed": seed} for (part, method), lr in chosen.items() for seed in config.seeds[1:]]
    rows += final_rows(training.run_grid(final, run_one, chapter=CHAPTER, desc=CHAPTER))
    rows += relaxation_rows(rows, config)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)
