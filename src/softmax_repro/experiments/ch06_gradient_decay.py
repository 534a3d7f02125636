"""Chapter 06: when softmax gradients vanish — probability-dependent gradient decay (β) and
periodic attention normalisers.

Two parts, one results file:

* ``beta`` (Zhang, Xie, Chen 2022): a classifier trained with the β-softmax loss
  (:mod:`softmax_repro.methods.gradient_decay`, form unverified) for every β in ``betas`` and a
  warm-up that raises β geometrically from ``warmup_start`` to ``warmup_end`` over the first
  ``warmup_share`` of the steps. β rescales the gradients, so it is confounded with the learning
  rate: every method gets the same SGD learning-rate search (``lrs``), and for each seed the rate
  with the best validation accuracy is kept (``series: tuned``; every candidate stays in
  ``series: lr_search``). Test metrics use the ordinary softmax: top-1, NLL, ECE (torchmetrics,
  ``ece_bins`` equal-width bins, L1) and the mean logit margin. ``ce_ts`` is the β = 1 (CE) model
  with a temperature fitted on the validation split. Convergence: ``conv_auc``, the mean validation
  accuracy over the epoch checkpoints. Curriculum: ``tracked`` training examples are split into
  difficulty quintiles by the final p_y of a separate β = 1 reference run (seed
  ``difficulty_seed``, learning rate ``difficulty_lr``); every run records each quintile's mean
  p_y after every epoch (``series: trajectory``; validation accuracy: ``series: val_curve``)
  and ``curriculum_gap`` = t½(hardest) − t½(easiest),
  t½ the share of training after which a quintile's mean p_y has covered half its rise.
* ``attention`` (Wang, Liu, Liu 2021): an :class:`AttentionClassifier` on the same data cut into
  tokens (``patch`` values per token), one per attention normaliser and score scale s (scores
  s·qᵀk/√d), Adam at one fixed learning rate. Metrics: test top-1, and from
  :func:`~softmax_repro.methods.attention.score_probe` on ``probe_size`` test examples at
  initialisation (``*_init``) and after training: gradient norms w.r.t. the scores s·qᵀk/√d
  (``score_grad``) and w.r.t. qᵀk/√d (``qk_grad``), with their log10,
  share of saturated rows (max weight > 0.99), guarded denominators, negative weights, row-sum
  error; ``train_failed`` = 1 when the loss became non-finite (the model is then scored as it is).

Data: ``mnist1d`` (embedded, the ``smoke``/``cpu`` profiles; the generated set is split once into
train/validation by ``split_seed``, the same for every seed), ``fashion_mnist`` (a per-class subset
of the Debian package's files) or ``cifar10``/``cifar100`` through the hub (``paper`` profile;
``data_files``: a local copy, a directory or glob with ``{split}``). Models: an MLP for vectors and
Fashion-MNIST, a CIFAR ResNet for hub images (``resnet_depth``).

Rows: ``part, dataset, series, method, seed, metric, value`` plus ``lr`` (``lr_search`` and
nothing else), ``quintile``/``epoch`` (trajectories) and ``scale`` (attention).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_calibration_error

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
from softmax_repro.data.hub_localisation import local_split_files
from softmax_repro.data.mnist1d import LENGTH, load_mnist1d
from softmax_repro.engine import training
from softmax_repro.engine.models import MLP, ResNetCifar
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import attention as att
from softmax_repro.methods import gradient_decay as gd
from softmax_repro.pipeline import results

CHAPTER = "06_gradient_decay"
DATASETS = ("mnist1d", "fashion_mnist", "cifar10", "cifar100")
WARMUP = "beta_warmup"
CE_TS = "ce_ts"
"""The β = 1 (cross-entropy) model with a temperature fitted on validation data."""
QUINTILES = 5
SATURATION = 0.99


def beta_method(beta: float) -> str:
    """Method name of a fixed β, e.g. ``beta_0.1``, ``beta_1``."""
    return f"beta_{beta:g}"


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 06 settings.

    Attributes:
        dataset: ``mnist1d``, ``fashion_mnist``, ``cifar10`` or ``cifar100`` (both parts).
        data_files: hub sets only: a directory, or a glob with ``{split}``, of local parquet files
            in the hub schema; ``None`` = the hub id.
        num_samples: MNIST-1D sequences generated (80% train+validation, 20% test).
        fashion_per_class: Fashion-MNIST training+validation images per class (test: all 10,000).
        val_fraction: share of the training set held out for validation (LR search, temperature).
        split_seed: seed of the train/validation split (the same for every run).
        betas: fixed β values (β = 1 is cross-entropy and must be among them).
        warmup_start, warmup_end, warmup_share: the warm-up's β schedule; ``warmup_share=0``
            leaves the warm-up out.
        lrs: SGD learning rates searched for every β (the same budget for each).
        epochs, batch_size, momentum, weight_decay: SGD training of the β part.
        hidden, depth: MLP width and hidden layers (vector inputs and Fashion-MNIST).
        resnet_depth: CIFAR ResNet depth (hub images).
        tracked: training examples whose p_y is followed after every epoch (curriculum).
        difficulty_seed: seed of the β = 1 reference run that defines difficulty (not a run seed).
        difficulty_lr: learning rate of that reference run.
        ece_bins: equal-width bins of the ECE.
        normalisers: attention normalisers compared (see methods.attention.NORMALISERS).
        scales: score scales s (scores = s·qᵀk/√d).
        patch: values per token (MNIST-1D: a divisor of 40; images: the side of a square patch).
        att_dim, att_depth: attention model width and blocks.
        att_epochs, att_batch_size, att_lr: Adam training of the attention models.
        probe_size: test examples in the gradient/saturation probe.
        threads: torch intra-op threads during the run (0: leave torch's setting alone).
    """

    dataset: str = "mnist1d"
    data_files: str | None = None
    num_samples: int = 5_000
    fashion_per_class: int = 500
    val_fraction: float = 0.2
    split_seed: int = 0
    betas: tuple[float, ...] = (0.01, 0.1, 1.0, 3.0, 10.0)
    warmup_start: float = 0.01
    warmup_end: float = 10.0
    warmup_share: float = 0.5
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    epochs: int = 20
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    hidden: int = 128
    depth: int = 2
    resnet_depth: int = 20
    tracked: int = 1_000
    difficulty_seed: int = 1_000
    difficulty_lr: float = 0.1
    ece_bins: int = 15
    normalisers: tuple[str, ...] = att.NORMALISERS
    scales: tuple[float, ...] = (1.0, 64.0)
    patch: int = 5
    att_dim: int = 32
    att_depth: int = 1
    att_epochs: int = 12
    att_batch_size: int = 128
    att_lr: float = 3e-3
    probe_size: int = 500
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("dataset", self.dataset, DATASETS)
        if self.data_files is not None and (
                not isinstance(self.data_files, str) or not self.data_files.strip()):
            raise ConfigError(f"data_files={self.data_files!r} is not allowed; give None (the hub "
                              "id) or a directory / glob with '{split}' of local parquet files")
        if self.data_files is not None and self.dataset not in hub.HUB_IMAGE_DATASETS:
            raise ConfigError(f"data_files is only used with a hub dataset (cifar10, cifar100), "
                              f"not dataset={self.dataset!r}; set it to None")
        check_int("num_samples", self.num_samples, 100)
        for name in ("fashion_per_class", "epochs", "batch_size", "hidden", "depth", "tracked",
                     "ece_bins", "patch", "att_dim", "att_depth", "att_epochs", "att_batch_size",
                     "probe_size"):
            check_int(name, getattr(self, name), 1)
        check_int("threads", self.threads, 0)
        check_int("split_seed", self.split_seed, 0)
        check_int("difficulty_seed", self.difficulty_seed, 0)
        check_in_range("val_fraction", self.val_fraction, 0.05, 0.5)
        check_choice("resnet_depth", self.resnet_depth, (8, 14, 20, 32, 44, 56, 110))
        if not self.betas:
            raise ConfigError("betas is empty; give positive values including 1, e.g. [0.1, 1, 10]")
        for beta in self.betas:
            check_positive("betas item", beta)
        if 1.0 not in self.betas:
            raise ConfigError(f"betas={list(self.betas)} must contain 1 (cross-entropy, the "
                              "baseline and the temperature-scaled model)")
        if len(set(self.betas)) != len(self.betas):
            raise ConfigError(f"betas={list(self.betas)} has duplicates")
        check_positive("warmup_start", self.warmup_start)
        check_positive("warmup_end", self.warmup_end)
        check_in_range("warmup_share", self.warmup_share, 0.0, 1.0)
        if not self.lrs:
            raise ConfigError("lrs is empty; give at least one SGD learning rate > 0")
        for lr in self.lrs:
            check_positive("lrs item", lr)
        for name in ("difficulty_lr", "att_lr"):
            check_positive(name, getattr(self, name))
        check_positive("momentum", self.momentum, allow_zero=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_subset("normalisers", self.normalisers, att.NORMALISERS)
        if not self.scales:
            raise ConfigError("scales is empty; give at least one score scale > 0, e.g. [1, 64]")
        for scale in self.scales:
            check_positive("scales item", scale)
        side = {"mnist1d": LENGTH, "fashion_mnist": 28}.get(self.dataset, 32)
        if side % self.patch or side == self.patch:
            raise ConfigError(f"patch={self.patch} must divide the {self.dataset} length/side "
                              f"{side} into at least 2 tokens (MNIST-1D: 4, 5, 8; Fashion-MNIST: "
                              "4, 7; CIFAR: 4, 8)")

    @property
    def methods(self) -> tuple[str, ...]:
        """The trained β methods: every fixed β, then the warm-up (if ``warmup_share > 0``)."""
        fixed = tuple(beta_method(b) for b in self.betas)
        return fixed + ((WARMUP,) if self.warmup_share > 0 else ())


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "num_samples": 1_500, "epochs": 4, "lrs": (0.03, 0.1),
              "tracked": 200, "scales": (1.0, 64.0), "att_epochs": 2, "probe_size": 100},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2, 3, 4), "dataset": "cifar10", "threads": 0, "epochs": 100,
              "lrs": (0.01, 0.03, 0.1, 0.3), "weight_decay": 5e-4, "difficulty_lr": 0.1,
              "tracked": 5_000, "patch": 4, "att_dim": 64, "att_depth": 2, "att_epochs": 50,
              "att_lr": 1e-3, "scales": (1.0, 8.0, 64.0)},
}


make_config = config_factory(Config, PROFILES)


# ---------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass(frozen=True)
class ChapterData:
    """Train / validation / test tensors of one dataset (``x`` as the loader gives them)."""

    name: str
    num_classes: int
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def _subset_per_class(y: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Indices of ``per_class`` random examples of every class (fewer if a class has fewer)."""
    order = torch.randperm(len(y), generator=generator)
    picked = [order[y[order] == c][:per_class] for c in torch.unique(y).tolist()]
    return torch.cat(picked).sort().values


def load_data(config: Config) -> ChapterData:
    """The chapter's data set, with the fixed train/validation split of ``split_seed``."""
    generator = torch.Generator().manual_seed(config.split_seed)
    if config.dataset == "mnist1d":
        split = load_mnist1d(config.num_samples, seed=42)
        x, y, x_test, y_test, classes = (split.x_train, split.y_train, split.x_test,
                                         split.y_test, 10)
    elif config.dataset == "fashion_mnist":
        x, y = load_fashion_mnist("train")
        keep = _subset_per_class(y, config.fashion_per_class, generator)
        x, y = x[keep], y[keep]
        x_test, y_test = load_fashion_mnist("test")
        classes = 10
    else:
        files = {s: None if config.data_files is None else local_split_files(config.data_files, s)
                 for s in ("train", "test")}
        x, y = hub.load_hub_images(config.dataset, "train", data_files=files["train"])
        x_test, y_test = hub.load_hub_images(config.dataset, "test", data_files=files["test"])
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        x, x_test = (x - mean) / std, (x_test - mean) / std
        classes = hub.HUB_IMAGE_DATASETS[config.dataset].num_classes
    order = torch.randperm(len(y), generator=generator)
    n_val = max(1, round(config.val_fraction * len(y)))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return ChapterData(config.dataset, classes, x[train], y[train], x[val], y[val], x_test, y_test)


def tracked_indices(config: Config, data: ChapterData) -> Tensor:
    """The training examples whose p_y trajectories are recorded (fixed by ``split_seed``)."""
    n = len(data.y_train)
    generator = torch.Generator().manual_seed(config.split_seed + 1)
    return torch.randperm(n, generator=generator)[: min(config.tracked, n)].sort().values


# ---------------------------------------------------------------------------------------------
# part 1: β


def build_classifier(config: Config, data: ChapterData) -> nn.Module:
    """An MLP for vector inputs and Fashion-MNIST, a CIFAR ResNet for hub images."""
    if config.dataset in hub.HUB_IMAGE_DATASETS:
        return ResNetCifar(config.resnet_depth, data.num_classes)
    in_dim = int(np.prod(data.x_train.shape[1:]))
    return MLP(in_dim, config.hidden, data.num_classes, depth=config.depth)


def beta_loss(config: Config, method: str, total_steps: int) -> gd.BetaSoftmaxLoss:
    """The training loss of ``method`` (a fixed β or the warm-up)."""
    if method == WARMUP:
        schedule = gd.beta_warmup(config.warmup_start, config.warmup_end, config.warmup_share)
        return gd.BetaSoftmaxLoss(schedule, total_steps)
    return gd.BetaSoftmaxLoss(float(method.removeprefix("beta_")), total_steps)


@dataclasses.dataclass
class BetaTrace:
    """What one β training run leaves: logits and per-epoch checkpoints.

    ``val_accuracy[e]`` and ``tracked_py[e]`` (``[n_tracked]``) are measured after ``e`` epochs,
    ``e = 0..epochs``.
    """

    model: nn.Module
    val_accuracy: list[float]
    tracked_py: list[Tensor]


def target_probability(logits: Tensor, target: Tensor) -> Tensor:
    """Ordinary softmax probability of the target ``[N]``."""
    return logits.log_softmax(dim=1).gather(1, target[:, None]).squeeze(1).exp()


def train_beta(config: Config, data: ChapterData, method: str, lr: float, seed: int,
               tracked: Tensor, device: torch.device) -> BetaTrace:
    """Train one classifier with ``method``'s loss at ``lr``; record the epoch checkpoints."""
    training.seed_everything(seed)
    model = build_classifier(config, data).to(device)
    if data.x_train.dim() == 4:
        model.to(memory_format=torch.channels_last)
    x = training.image_layout(data.x_train.to(device))
    y = data.y_train.to(device)
    n = len(y)
    steps_per_epoch = math.ceil(n / config.batch_size)
    spec = training.TrainSpec(epochs=config.epochs, batch_size=config.batch_size, lr=lr,
                              optimizer="sgd", momentum=config.momentum,
                              weight_decay=config.weight_decay)
    loss = beta_loss(config, method, config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    trace = BetaTrace(model, [], [])
    x_tracked, y_tracked = data.x_train[tracked], data.y_train[tracked]

    def checkpoint() -> None:
        val_logits = training.predict(model, data.x_val, device=device)
        trace.val_accuracy.append(float((val_logits.argmax(1) == data.y_val).double().mean()))
        trace.tracked_py.append(target_probability(
            training.predict(model, x_tracked, device=device), y_tracked))

    def make_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        checkpoint()
        for idx in training.tensor_batches(n, config.batch_size, generator):
            idx = idx.to(device)
            yield x[idx], y[idx]

    def compute_loss(net: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        return loss(net(batch[0]), batch[1])

    training.fit(model, compute_loss, make_batches, spec, steps_per_epoch=steps_per_epoch)
    checkpoint()
    return trace


def difficulty_quintiles(config: Config, data: ChapterData, tracked: Tensor,
                         device: torch.device) -> Tensor:
    """Quintile ``[n_tracked]`` (1 = easiest … 5 = hardest) of every tracked example by the final
    p_y of a β = 1 reference run (seed ``difficulty_seed``); ties broken by index."""
    trace = train_beta(config, data, beta_method(1.0), config.difficulty_lr,
                       config.difficulty_seed, tracked, device)
    final = trace.tracked_py[-1]
    order = torch.argsort(-final.double(), stable=True)  # most confident first
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks * QUINTILES // len(order) + 1


def half_rise_time(curve: np.ndarray) -> float:
    """Share of training (0–1) at which ``curve`` (values after 0..E epochs) first covers half
    its rise from ``curve[0]`` to ``curve[-1]``, linearly interpolated; 1 (as late as the run
    allows) if it does not rise at all."""
    start, end = float(curve[0]), float(curve[-1])
    if end <= start:
        return 1.0
    half = start + 0.5 * (end - start)
    epochs = len(curve) - 1
    for e in range(1, len(curve)):
        if curve[e] >= half:
            before = float(curve[e - 1])
            frac = (half - before) / (float(curve[e]) - before) if curve[e] > before else 1.0
            return (e - 1 + frac) / epochs
    return 1.0


def calibration(logits: Tensor, target: Tensor, bins: int) -> dict[str, float]:
    """NLL and ECE (torchmetrics, L1, ``bins`` equal-width bins) of the ordinary softmax."""
    probs = logits.double().softmax(dim=1).float()
    ece = multiclass_calibration_error(probs, target, num_classes=logits.shape[1], n_bins=bins,
                                       norm="l1")
    return {"nll": float(F.cross_entropy(logits.double(), target)), "ece": float(ece)}


def beta_run(config: Config, data: ChapterData, tracked: Tensor, quintile: Tensor,
             run: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """One (method, lr, seed) run of the β part: ``lr_search`` scalar rows (and ``ce_ts`` rows
    for β = 1) plus ``trajectory`` and ``val_curve`` rows, every row carrying ``lr``."""
    method, lr, seed = run["method"], run["lr"], run["seed"]
    base = {"series": "lr_search", **run}
    try:
        trace = train_beta(config, data, method, lr, seed, tracked, device)
    except FloatingPointError:  # diverged at this rate: no candidate for the selection
        return [{**base, "metric": "diverged", "value": 1.0}]
    test_logits = training.predict(trace.model, data.x_test, device=device)
    val_logits = training.predict(trace.model, data.x_val, device=device)
    py = torch.stack(trace.tracked_py).numpy()  # [E+1, n_tracked]
    curves = {q: py[:, (quintile == q).numpy()].mean(axis=1) for q in range(1, QUINTILES + 1)}
    scores = {
        "top1": float((test_logits.argmax(1) == data.y_test).double().mean()),
        **calibration(test_logits, data.y_test, config.ece_bins),
        "margin": float(gd.logit_margin(test_logits, data.y_test).mean()),
        "val_top1": trace.val_accuracy[-1],
        "conv_auc": float(np.mean(trace.val_accuracy[1:])),
        "curriculum_gap": half_rise_time(curves[QUINTILES]) - half_rise_time(curves[1]),
        "diverged": 0.0,
    }
    rows = [{**base, "metric": k, "value": v} for k, v in scores.items()]
    rows += [{**base, "series": "trajectory", "quintile": q, "epoch": e, "metric": "p_y",
              "value": float(curve[e])}
             for q, curve in curves.items() for e in range(len(curve))]
    rows += [{**base, "series": "val_curve", "epoch": e, "metric": "val_top1", "value": acc}
             for e, acc in enumerate(trace.val_accuracy)]
    if method == beta_method(1.0):
        temperature = gd.fit_temperature(val_logits, data.y_val)
        scaled = {"top1": scores["top1"],
                  **calibration(test_logits / temperature, data.y_test, config.ece_bins),
                  "val_top1": scores["val_top1"], "temperature": temperature}
        rows += [{**base, "method": CE_TS, "metric": k, "value": v} for k, v in scaled.items()]
    return rows


def select_learning_rates(rows: list[dict[str, Any]], lrs: tuple[float, ...]) -> list[dict]:
    """Keep, for every (method, seed), the rows of the learning rate with the best validation
    accuracy (ties: the earlier rate in ``lrs``) without ``lr``: scalar rows become ``series:
    tuned``, ``trajectory`` and ``val_curve`` rows keep their series; a ``lr`` metric row records
    the choice. Every candidate's ``val_top1``, ``top1`` and ``diverged`` (1 when its loss became
    non-finite; such a rate is never chosen) stay as ``lr_search`` rows. ``ce_ts`` follows β = 1's
    choice (its validation accuracy is the same)."""
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for row in rows:
        if row["series"] == "lr_search" and row["metric"] == "val_top1":
            key = (row["method"], row["seed"])
            candidate = (row["value"], -lrs.index(row["lr"]))
            if key not in best or candidate > best[key]:
                best[key] = candidate
    chosen = {key: lrs[-rank] for key, (_, rank) in best.items()}
    out: list[dict[str, Any]] = []
    for row in rows:
        key = (row["method"], row["seed"])
        if row["series"] == "lr_search" and row["metric"] in ("val_top1", "top1", "diverged"):
            out.append(row)
        if key not in chosen:
            raise FloatingPointError(f"{key[0]} diverged at every learning rate of seed {key[1]}; "
                                     f"lower the rates in lrs={list(lrs)}")
        if row["lr"] != chosen[key] or row["metric"] == "diverged":
            continue
        kept = {k: v for k, v in row.items() if k != "lr"}
        if row["series"] == "lr_search":
            kept["series"] = "tuned"
        out.append(kept)
    for (method, seed), lr in chosen.items():
        example = next(r for r in rows if r["method"] == method and r["seed"] == seed)
        out.append({"part": "beta", "dataset": example["dataset"], "series": "tuned",
                    "method": method, "seed": seed, "metric": "lr", "value": lr})
    return out


# ---------------------------------------------------------------------------------------------
# part 2: periodic attention


def attention_run(config: Config, tokens: dict[str, Tensor], data: ChapterData,
                  run: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Train one attention classifier (normaliser ``run['method']``, scale ``run['scale']``)."""
    seed = run["seed"]
    training.seed_everything(seed)
    _, n_tokens, token_dim = tokens["train"].shape
    model = att.AttentionClassifier(n_tokens, token_dim, data.num_classes, run["method"],
                                    run["scale"], dim=config.att_dim, depth=config.att_depth)
    model.to(device)
    probe_x = tokens["test"][: config.probe_size].to(device)
    probe_y = data.y_test[: config.probe_size].to(device)
    before = att.score_probe(model, probe_x, probe_y, SATURATION)
    spec = training.TrainSpec(epochs=config.att_epochs, batch_size=config.att_batch_size,
                              lr=config.att_lr, optimizer="adam")
    failed = 0.0
    try:
        training.fit_classifier(model, F.cross_entropy, tokens["train"], data.y_train, spec,
                                seed=seed, device=device)
    except FloatingPointError:
        failed = 1.0
    after = att.score_probe(model, probe_x, probe_y, SATURATION)
    logits = training.predict(model, tokens["test"], device=device).nan_to_num(nan=0.0)
    scores = {
        "top1": float((logits.argmax(1) == data.y_test).double().mean()),
        "train_failed": failed,
        **after,
        **{f"{k}_init": v for k, v in before.items()},
    }
    for key in ("score_grad", "score_grad_init", "qk_grad", "qk_grad_init"):
        scores[f"log10_{key}"] = math.log10(max(scores[key], 1e-30))
    return [{"series": "main", **run, "metric": k, "value": v} for k, v in scores.items()]


# ---------------------------------------------------------------------------------------------
# the chapter


def grid(config: Config) -> list[dict[str, Any]]:
    """Run descriptions: every (seed, β method, lr), then every (seed, normaliser, scale)."""
    runs: list[dict[str, Any]] = []
    for seed in config.seeds:
        for method in config.methods:
            for lr in config.lrs:
                runs.append({"part": "beta", "dataset": config.dataset, "method": method,
                             "lr": lr, "seed": seed})
    for seed in config.seeds:
        for scale in config.scales:
            for name in config.normalisers:
                runs.append({"part": "attention", "dataset": config.dataset, "method": name,
                             "scale": scale, "seed": seed})
    return runs


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every run of both parts; rows written to the results file."""
    with training.cpu_threads(config.threads):
        return _run(config, results_dir)


def _run(config: Config, results_dir: str) -> results.ChapterResult:
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    with timer("data"):
        data = load_data(config)
        tracked = tracked_indices(config, data)
        tokens = {"train": att.to_tokens(data.x_train, config.patch),
                  "test": att.to_tokens(data.x_test, config.patch)}
    with timer("difficulty reference"):
        quintile = difficulty_quintiles(config, data, tracked, device)

    def run_one(one: dict[str, Any]) -> list[dict[str, Any]]:
        if one["part"] == "beta":
            with timer("beta"):
                return beta_run(config, data, tracked, quintile, one, device)
        with timer("attention"):
            return attention_run(config, tokens, data, one, device)

    rows = training.run_grid(grid(config), run_one, chapter=CHAPTER)
    beta_rows = select_learning_rates([r for r in rows if r["part"] == "beta"], config.lrs)
    rows = beta_rows + [r for r in rows if r["part"] == "attention"]
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)

