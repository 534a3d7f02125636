"""Chapter 01: long-tailed recognition with Balanced Softmax and BALMS (Ren et al. 2020).

Each run long-tails a balanced training set with its seed (class ``y`` keeps
``int(n_max · IF^(−y/(C−1)))`` examples), trains a model with one method and evaluates it on the
balanced test set. Methods (names as in the rows):

- end-to-end: ``softmax`` (CE), ``balanced_softmax`` (BS, Eq. 4), ``balanced_softmax_quarter``
  (BS with ``n^{1/4}``, Eq. 10), ``cb_reweighting`` (CE weighted ``∝ 1/n_y``), ``cb_sampling`` (CE,
  class-balanced sampler), ``focal`` (focal loss), ``bs_cb_sampling`` (BS + class-balanced sampler:
  the over-balanced combination, Eq. 11–12);
- ``posthoc_adjustment``: the ``softmax`` model with ``log prior`` subtracted at test time (LADE's
  "PC softmax"; no extra training);
- decoupled (classifier re-initialised and re-trained on the frozen features of the ``softmax``
  model with the official CIFAR-LT schedule: 2,000 iterations at batch 512, SGD lr 0.1, momentum
  0.9, weight decay 5e-4, cosine to 0): ``bs_decoupled`` (BS, instance sampling),
  ``bs_cb_sampling_decoupled`` (BS + class-balanced sampler) and ``balms`` (BS + meta sampler,
  :func:`fit_balms`).

The table-only methods (:data:`TABLE_ONLY`: no claim test rests on them) run at
``table_only_imbalances`` only, the decoupled ones at ``decoupled_imbalances`` and not on Digits.
The testbed probe (:data:`PROBE_VARIANTS`) re-runs Balanced Softmax and class-balanced
re-weighting on MNIST-1D-LT at one imbalance factor with a longer schedule, random-shift
augmentation or a wider CNN (dataset ``mnist1d-lt+<variant>``), to measure which difference from
the paper's CIFAR setup decides their order.

Theorem 1 runs on Gaussian classes with exact posteriors (:mod:`bayes_posterior`).

Rows: ``dataset, imbalance, method, seed, metric, value`` with metrics ``top1``; ``many``,
``medium``, ``few`` (mean per-class accuracy over the first, middle and last third of the classes
by training count); ``class_accuracy`` (with ``class_index`` and ``class_count``);
``top1_moved_last_fifth`` (end-to-end models: |final top-1 − top-1 after four fifths of the
steps|, a convergence check); ``tail_count`` (training examples of the smallest class); the derived
per-seed contrasts ``gain_growth`` and ``few_minus_many_gain`` (see :func:`derived_rows`); and for
``gaussian-lt`` ``tv_balanced``, ``tv_shifted`` and the binned ``tail_posterior`` (with
``exact_bin``).
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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
from softmax_repro.data import hub, longtail
from softmax_repro.data.digits import load_digits_split
from softmax_repro.data.fashion_mnist import load_fashion_mnist
from softmax_repro.data.mnist1d import Split, load_mnist1d
from softmax_repro.engine import training
from softmax_repro.engine.models import CNN1D, MLP, ResNetCifar
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import bayes_posterior, incremental, losses, meta_sampler
from softmax_repro.pipeline import results, tables

CHAPTER = "01_balanced_softmax"
DATASETS = ("mnist1d", "digits", "fashion_mnist", "cifar10", "cifar100")
END_TO_END = ("softmax", "balanced_softmax", "balanced_softmax_quarter", "cb_reweighting",
              "cb_sampling", "focal", "bs_cb_sampling")
FROM_SOFTMAX = ("posthoc_adjustment", "bs_decoupled", "bs_cb_sampling_decoupled", "balms")
METHODS = END_TO_END + FROM_SOFTMAX
TABLE_ONLY = ("cb_reweighting", "cb_sampling", "focal", "bs_cb_sampling")
"""End-to-end methods shown in the paper's table beside ours but tested by no claim."""
PROBE_VARIANTS = ("long", "augment", "wide")
PROBE_METHODS = ("balanced_softmax", "cb_reweighting")
MODELS = ("cnn1d", "mlp", "resnet32")
SHOT_GROUPS = ("many", "medium", "few")
POSTERIOR_BINS = 10
PAPER_IMBALANCES = (200, 100, 10)
PAPER_TOP1: dict[str, dict[str, tuple[float, float, float]]] = {
    # Ren et al. 2020, Tables 2 and 5: top-1 % at IF 200 / 100 / 10, ResNet-32, mean of 3 runs
    "CIFAR-10-LT": {
        "softmax": (71.2, 77.4, 90.0), "cb_reweighting": (72.5, 78.6, 90.1),
        "cb_sampling": (68.3, 77.8, 90.2), "focal": (71.8, 77.1, 90.3),
        "balanced_softmax_quarter": (71.6, 78.4, 90.5), "balanced_softmax": (79.0, 83.1, 90.9),
        "bs_decoupled": (78.6, 83.7, 91.2), "bs_cb_sampling_decoupled": (80.6, 84.8, 91.2),
        "balms": (81.5, 84.9, 91.3)},
    "CIFAR-100-LT": {
        "softmax": (41.0, 45.3, 61.9), "cb_reweighting": (36.7, 42.3, 61.4),
        "cb_sampling": (37.8, 42.6, 61.2), "focal": (40.2, 43.8, 60.0),
        "balanced_softmax_quarter": (41.9, 46.4, 62.6), "balanced_softmax": (45.9, 50.3, 63.1),
        "bs_decoupled": (45.1, 50.4, 63.4), "bs_cb_sampling_decoupled": (42.0, 47.4, 62.3),
        "balms": (45.5, 50.8, 63.0)},
}
"""The paper's published top-1 accuracies (%), for display beside ours; never used as results."""


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 01 settings (every field can be overridden from the notebook).

    Attributes:
        datasets: balanced sources to long-tail: ``mnist1d``, ``digits`` (embedded),
            ``fashion_mnist`` (optional: the Debian package ``dataset-fashion-mnist``) or
            ``cifar10``, ``cifar100`` (HuggingFace hub, ``paper`` profile).
        imbalances: imbalance factors n_max / n_min (>= 1) for every dataset except Digits.
        digits_imbalances: imbalance factors for Digits (its largest class has ~125 training
            examples, so IF 200 would leave the tail class empty).
        methods: methods to run (see the module docstring).
        n_max: training examples of the largest class (``None``: all of them) for every dataset
            except Digits; ``digits_n_max`` for Digits.
        num_samples: MNIST-1D sequences generated (80% train, 20% test).
        model: ``cnn1d`` or ``mlp`` for MNIST-1D; Digits and Fashion-MNIST use an MLP, CIFAR
            ``resnet32``.
        steps, batch_size, lr, weight_decay, warmup_steps, nesterov: end-to-end SGD (momentum 0.9,
            linear warm-up from ``lr/2`` then cosine to 0).
        digits_hidden, digits_steps, digits_batch_size, digits_lr: the Digits MLP and its training.
        focal_gamma: focal-loss exponent γ.
        decoupled_steps, decoupled_batch_size, decoupled_lr: classifier re-training on frozen
            features (SGD momentum 0.9, weight decay ``weight_decay``, cosine); the meta
            sampler's inner step is this optimizer's step.
        meta_lr, meta_batch_size, meta_init_power: the meta sampler's Adam learning rate, the
            size of the class-balanced meta batch drawn fresh from the training set every step,
            and its initial rates ``∝ n^(1 − meta_init_power)``.
        table_only_imbalances: factors at which the :data:`TABLE_ONLY` methods run on every
            dataset except Digits (``None``: all of ``imbalances``).
        decoupled_imbalances: factors at which the decoupled methods run, on every dataset except
            Digits (``None``: all of ``imbalances``; Digits never runs them).
        probe_variants, probe_imbalance, probe_seeds: the testbed probe (module docstring); empty
            variants skip it.
        probe_long_factor, probe_wide_channels, probe_shift: its longer schedule (× steps), wider
            CNN (channels) and augmentation (random shift by up to this many positions, zero
            padded, the 1-D analogue of CIFAR's 4-pixel padded crop).
        gauss_imbalances: imbalance factors of the Theorem 1 problem (empty: skip it).
        gauss_classes, gauss_dim, gauss_separation, gauss_n_max, gauss_test_size, gauss_steps:
            the Gaussian-class problem and its linear softmax (Adam, full convergence wanted).
        hub_data_dir: folder with ``<dataset>/<split>*.parquet`` in the hub schema; ``None`` loads
            the hub ids of :data:`softmax_repro.data.hub.HUB_IMAGE_DATASETS`.
        threads: torch CPU threads during the chapter (0: leave torch's setting). One thread is
            as fast as two for these small models on a free 2-core machine, never stalls when
            the cores are shared, and keeps the numbers bit-identical wherever it runs.
    """

    datasets: tuple[str, ...] = ("mnist1d", "digits")
    imbalances: tuple[float, ...] = (10, 100, 200)
    digits_imbalances: tuple[float, ...] = (10, 100)
    methods: tuple[str, ...] = METHODS
    n_max: int | None = 2000
    num_samples: int = 62_500
    model: str = "cnn1d"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 75
    nesterov: bool = False
    digits_n_max: int = 120
    digits_hidden: int = 128
    digits_steps: int = 300
    digits_batch_size: int = 64
    digits_lr: float = 0.05
    focal_gamma: float = 2.0
    decoupled_steps: int = 2000
    decoupled_batch_size: int = 512
    decoupled_lr: float = 0.1
    meta_lr: float = 0.01
    meta_batch_size: int = 512
    meta_init_power: float = 0.0
    table_only_imbalances: tuple[float, ...] | None = (100,)
    decoupled_imbalances: tuple[float, ...] | None = (100, 200)
    probe_variants: tuple[str, ...] = PROBE_VARIANTS
    probe_imbalance: float = 100
    probe_seeds: tuple[int, ...] = (0, 1, 2)
    probe_long_factor: int = 3
    probe_wide_channels: int = 64
    probe_shift: int = 4
    gauss_imbalances: tuple[float, ...] = (10, 100, 200)
    gauss_classes: int = 5
    gauss_dim: int = 2
    gauss_separation: float = 2.0
    gauss_n_max: int = 20_000
    gauss_test_size: int = 2000
    gauss_steps: int = 600
    hub_data_dir: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_subset("datasets", self.datasets, DATASETS)
        check_subset("methods", self.methods, METHODS)
        if self.n_max is not None:
            check_int("n_max", self.n_max, 1)
        check_int("digits_n_max", self.digits_n_max, 1)
        if not self.imbalances and set(self.datasets) - {"digits"}:
            raise ConfigError("imbalances is empty; give at least one imbalance factor >= 1")
        for factor in self.imbalances:  # n_max=None: checked against the data when loaded
            longtail.longtail_counts(self.n_max or 10**9, 10, factor)
        if "digits" in self.datasets and not self.digits_imbalances:
            raise ConfigError("digits_imbalances is empty; give at least one factor >= 1")
        for factor in self.digits_imbalances:
            longtail.longtail_counts(self.digits_n_max, 10, factor)
        check_int("num_samples", self.num_samples, 100)
        check_choice("model", self.model, MODELS)
        check_int("threads", self.threads, 0)
        for name in ("steps", "batch_size", "digits_hidden", "digits_steps", "digits_batch_size",
                     "decoupled_steps", "decoupled_batch_size", "meta_batch_size", "gauss_classes",
                     "gauss_dim", "gauss_n_max", "gauss_test_size", "gauss_steps"):
            check_int(name, getattr(self, name), 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        for name in ("lr", "digits_lr", "decoupled_lr", "meta_lr", "gauss_separation"):
            check_positive(name, getattr(self, name))
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("focal_gamma", self.focal_gamma, allow_zero=True)
        check_in_range("meta_init_power", self.meta_init_power, 0.0, 2.0)
        for factor in self.gauss_imbalances:
            longtail.longtail_counts(self.gauss_n_max, self.gauss_classes, factor)
        for variant in self.probe_variants:  # empty: no probe
            check_choice("probe_variants item", variant, PROBE_VARIANTS)
        if self.probe_variants:
            if "mnist1d" not in self.datasets:
                raise ConfigError("probe_variants need 'mnist1d' in datasets (or give [])")
            longtail.longtail_counts(self.n_max or 10**9, 10, self.probe_imbalance)
            if not self.probe_seeds:
                raise ConfigError("probe_seeds is empty; give at least one seed or no variants")
        for name in ("probe_long_factor", "probe_wide_channels"):
            check_int(name, getattr(self, name), 1)
        check_int("probe_shift", self.probe_shift, 0)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "num_samples": 5000, "n_max": 200, "steps": 30,
              "digits_n_max": 100, "digits_steps": 30, "decoupled_steps": 20,
              "decoupled_batch_size": 128, "meta_batch_size": 64, "gauss_n_max": 500,
              "gauss_steps": 50, "gauss_test_size": 200, "probe_seeds": (0,),
              "probe_wide_channels": 48},
    # focal loss, a table-only baseline, is left out at cpu for the time budget
    "cpu": {"seeds": (0, 1, 2, 3, 4), "methods": tuple(m for m in METHODS if m != "focal")},
    "paper": {"seeds": (0, 1, 2), "datasets": ("cifar10", "cifar100"), "n_max": None, "threads": 0,
              "model": "resnet32", "steps": 13_000, "batch_size": 512, "lr": 0.1,
              "warmup_steps": 800, "nesterov": True, "table_only_imbalances": None,
              "decoupled_imbalances": None,
              "probe_variants": ()},
}


make_config = config_factory(Config, PROFILES)


# ---------------------------------------------------------------------------------------------
# data and models


def load_source(name: str, config: Config) -> Split:
    """The balanced source data of ``name`` (long-tailing happens per run)."""
    if name == "mnist1d":
        return load_mnist1d(config.num_samples, seed=42)
    if name == "digits":
        return load_digits_split(test_fraction=0.3, seed=0)
    if name == "fashion_mnist":
        x_tr, y_tr = load_fashion_mnist("train")
        x_te, y_te = load_fashion_mnist("test")
        return Split(x_tr.flatten(1), y_tr, x_te.flatten(1), y_te)
    files: dict[str, list[str] | None] = {"train": None, "test": None}
    if config.hub_data_dir is not None:
        for split in files:
            folder = Path(config.hub_data_dir) / name
            found = sorted(glob.glob(str(folder / f"{split}*.parquet")))
            if not found:
                raise FileNotFoundError(f"no {split}*.parquet in {folder}")
            files[split] = found
    x_tr, y_tr = hub.load_hub_images(name, "train", data_files=files["train"])
    x_te, y_te = hub.load_hub_images(name, "test", data_files=files["test"])
    mean, std = x_tr.mean(dim=(0, 2, 3), keepdim=True), x_tr.std(dim=(0, 2, 3), keepdim=True)
    return Split((x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te)


def num_classes_of(name: str) -> int:
    """Classes of a source dataset."""
    return 100 if name == "cifar100" else 10


def train_counts(name: str, config: Config, data: Split, imbalance: float) -> list[int]:
    """Per-class training counts of the long-tailed set."""
    classes = num_classes_of(name)
    if name == "digits":
        return longtail.longtail_counts(config.digits_n_max, classes, imbalance)
    n_max = config.n_max
    if n_max is None:
        n_max = int(torch.bincount(data.y_train, minlength=classes).min())
    return longtail.longtail_counts(n_max, classes, imbalance)


def build_model(name: str, config: Config, in_dim: int, variant: str = "") -> nn.Module:
    """The end-to-end model for dataset ``name`` (``variant`` ``wide``: the probe's wider CNN)."""
    classes = num_classes_of(name)
    if name == "digits":
        return MLP(in_dim, config.digits_hidden, classes, depth=2)
    if name in ("cifar10", "cifar100"):
        return ResNetCifar(32, classes)
    if config.model == "mlp" or name == "fashion_mnist":
        return MLP(in_dim, 256, classes, depth=2)
    return CNN1D(classes, channels=config.probe_wide_channels if variant == "wide" else 32)


def train_spec(name: str, config: Config, variant: str = "") -> training.TrainSpec:
    """The end-to-end schedule for dataset ``name`` (``variant`` ``long``: the probe's longer
    schedule, same warm-up)."""
    if name == "digits":
        return training.TrainSpec(steps=config.digits_steps, batch_size=config.digits_batch_size,
                                  lr=config.digits_lr, weight_decay=config.weight_decay,
                                  schedule="cosine")
    steps = config.steps * (config.probe_long_factor if variant == "long" else 1)
    return training.TrainSpec(steps=steps, batch_size=config.batch_size, lr=config.lr,
                              nesterov=config.nesterov, weight_decay=config.weight_decay,
                              warmup_steps=config.warmup_steps, warmup_start_lr=config.lr / 2,
                              schedule="cosine")


def decoupled_spec(config: Config) -> training.TrainSpec:
    """The classifier re-training schedule."""
    return training.TrainSpec(steps=config.decoupled_steps, batch_size=config.decoupled_batch_size,
                              lr=config.decoupled_lr, weight_decay=config.weight_decay,
                              schedule="cosine")


# ---------------------------------------------------------------------------------------------
# methods


def build_loss(method: str, counts: list[int], config: Config,
               ) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of an end-to-end or decoupled ``method``."""
    if method in ("balanced_softmax", "bs_cb_sampling", "bs_decoupled",
                  "bs_cb_sampling_decoupled", "balms"):
        return losses.BalancedSoftmaxLoss(counts)
    if method == "balanced_softmax_quarter":
        return losses.BalancedSoftmaxLoss(counts, power=0.25)
    if method == "cb_reweighting":
        return losses.WeightedCrossEntropy(losses.class_balanced_weights(counts))
    if method == "focal":
        return losses.FocalLoss(config.focal_gamma)
    return losses.softmax_cross_entropy


def uses_cb_sampler(method: str) -> bool:
    """Whether ``method`` draws training examples class-balanced (``∝ 1/n_y``)."""
    return method in ("cb_sampling", "bs_cb_sampling", "bs_cb_sampling_decoupled")


def fit_balms(classifier: nn.Module, features: Tensor, labels: Tensor, counts: list[int],
              config: Config, seed: int) -> dict[str, float]:
    """Re-train ``classifier`` on frozen ``features`` ``[N, D]`` with BS and the meta sampler.

    The official decoupled schedule (:func:`decoupled_spec`). Every step draws a batch from the
    learned class rates and a fresh class-balanced meta batch of ``meta_batch_size`` from the
    training set, takes one meta step on the rates whose inner step is the classifier optimizer's
    own step (its learning rate, momentum, weight decay and momentum buffers:
    :func:`meta_sampler.meta_step`), then the classifier's ordinary optimizer step on the same
    batch. This loop replaces :func:`training.fit` because the meta step needs the optimizer's
    state. Returns the final rates of the first and last class (for the record).
    """
    classes = len(counts)
    generator = torch.Generator().manual_seed(seed)
    sampler = meta_sampler.MetaSampler(counts, init_power=config.meta_init_power)
    meta_optimizer = torch.optim.Adam(sampler.parameters(), lr=config.meta_lr)
    groups = meta_sampler.index_by_class(labels, classes)
    loss_fn = build_loss("balms", counts, config)
    spec = decoupled_spec(config)
    optimizer = training.make_optimizer(classifier.parameters(), spec)
    named = dict(classifier.named_parameters())
    classifier.train()
    for step in range(spec.steps):
        lr = training.learning_rate(spec, step, spec.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        draw = sampler.draw(spec.batch_size, generator)
        idx = meta_sampler.draw_examples(draw.classes, groups, generator)
        meta_idx = meta_sampler.balanced_batch(groups, config.meta_batch_size, generator)
        buffers = {name: optimizer.state.get(p, {}).get("momentum_buffer")
                   for name, p in named.items()}
        meta_sampler.meta_step(sampler, meta_optimizer, classifier, loss_fn, features[idx],
                               labels[idx], draw.weights, features[meta_idx], labels[meta_idx],
                               inner_lr=lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay, momentum_buffers=buffers)
        loss = loss_fn(classifier(features[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    rates = sampler.rates().detach()
    return {"head_rate": float(rates[0]), "tail_rate": float(rates[-1])}


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each sequence of ``x`` ``[B, L]`` shifted by a random ``−max_shift..max_shift`` positions,
    zero-padded (the 1-D analogue of CIFAR's padded random crop) ``[B, L]``."""
    if max_shift == 0:
        return x
    length = x.shape[1]
    padded = torch.nn.functional.pad(x, (max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 1), generator=generator)
    return padded.gather(1, offsets.to(x.device) + torch.arange(length, device=x.device))


def fit_end_to_end(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                   y: Tensor, spec: training.TrainSpec, *, seed: int, device: torch.device,
                   sample_weights: Tensor | None, data_parallel: bool, max_shift: int,
                   checkpoint: Callable[[], float]) -> float:
    """Train ``model`` with :func:`training.fit` on shuffled (or ``sample_weights``-drawn) batches,
    optionally shifted (:func:`random_shift`), and return ``checkpoint()`` evaluated after four
    fifths of the steps (for the convergence check)."""
    model.to(device)
    if x.dim() == 4:
        model.to(memory_format=torch.channels_last)
    x, y = training.image_layout(x.to(device)), y.to(device)
    batch_gen = torch.Generator().manual_seed(seed)
    shift_gen = torch.Generator().manual_seed(seed + 7919)
    weights = None if sample_weights is None else sample_weights.double()
    total, at = spec.steps, (4 * spec.steps) // 5
    state: dict[str, Any] = {"step": 0, "value": float("nan")}

    def make_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in training.tensor_batches(x.shape[0], spec.batch_size, batch_gen, weights):
            if state["step"] == at:  # the model has taken `at` steps
                state["value"] = checkpoint()
            state["step"] += 1
            yield random_shift(x[idx], max_shift, shift_gen), y[idx]

    def compute_loss(net: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        return loss_fn(net(batch[0]), batch[1])

    training.fit(model, compute_loss, make_batches, spec,
                 steps_per_epoch=math.ceil(x.shape[0] / spec.batch_size),
                 data_parallel=data_parallel)
    if total and state["step"] <= at:
        state["value"] = checkpoint()
    return state["value"]


# ---------------------------------------------------------------------------------------------
# evaluation


def shot_groups(counts: list[int]) -> dict[str, list[int]]:
    """Classes split by training count into thirds: ``many`` (the ``C // 3`` largest), ``few``
    (the ``C // 3`` smallest) and ``medium`` (the rest); ties keep class order."""
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    third = len(counts) // 3
    return {"many": sorted(order[:third]), "medium": sorted(order[third:len(counts) - third]),
            "few": sorted(order[len(counts) - third:])}


def evaluate(logits: Tensor, target: Tensor, counts: list[int]) -> list[dict[str, Any]]:
    """Rows (without setting columns) of top-1, many/medium/few and per-class accuracy."""
    per_class = metrics.per_class_accuracy(logits, target, len(counts))
    rows: list[dict[str, Any]] = [{"metric": "top1", "value": metrics.accuracy(logits, target)}]
    for group, members in shot_groups(counts).items():
        rows.append({"metric": group, "value": float(np.mean(per_class[members]))})
    rows += [{"metric": "class_accuracy", "value": float(acc), "class_index": c,
              "class_count": counts[c]} for c, acc in enumerate(per_class)]
    return rows


# ---------------------------------------------------------------------------------------------
# one run


def run_image(config: Config, data: Split, run: dict[str, Any], device: torch.device,
              ) -> list[dict[str, Any]]:
    """One end-to-end run (and, for ``softmax``, the methods derived from its model)."""
    name, imbalance, seed, method = run["dataset"], run["imbalance"], run["seed"], run["method"]
    variant = run.get("variant", "")
    counts = train_counts(name, config, data, imbalance)
    idx = longtail.subsample_longtail(data.y_train, counts, seed)
    x, y = data.x_train[idx], data.y_train[idx]
    dataset = f"{name}-lt" + (f"+{variant}" if variant else "")
    setting = {"dataset": dataset, "imbalance": imbalance, "seed": seed}
    training.seed_everything(seed)
    model = build_model(name, config, x[0].numel() if x.ndim == 2 else x.shape[1], variant)
    weights = losses.class_balanced_sample_weights(y, len(counts)) if uses_cb_sampler(method) \
        else None

    def test_top1() -> float:
        return metrics.accuracy(training.predict(model, data.x_test, device=device), data.y_test)

    start = time.perf_counter()
    early = fit_end_to_end(model, build_loss(method, counts, config), x, y,
                           train_spec(name, config, variant), seed=seed, device=device,
                           sample_weights=weights,
                           # the weighted mean is normalised by the whole batch's weight
                           data_parallel=method != "cb_reweighting",
                           max_shift=config.probe_shift if variant == "augment" else 0,
                           checkpoint=test_top1)
    logits = training.predict(model, data.x_test, device=device)
    wall = time.perf_counter() - start
    rows = [{**setting, "method": method, "wall_s": wall, **r}
            for r in evaluate(logits, data.y_test, counts)]
    rows += [{**setting, "method": method, "wall_s": wall, "metric": "top1_moved_last_fifth",
              "value": abs(rows[0]["value"] - early)},
             {**setting, "method": method, "wall_s": wall, "metric": "tail_count",
              "value": float(min(counts))}]
    if method != "softmax" or variant:
        return rows
    derived = [m for m in FROM_SOFTMAX if m in config.methods]
    if name == "digits" or (config.decoupled_imbalances is not None
                            and imbalance not in config.decoupled_imbalances):
        derived = [m for m in derived if m == "posthoc_adjustment"]
    if "posthoc_adjustment" in derived:
        adjusted = losses.posthoc_logit_adjustment(logits, counts)
        rows += [{**setting, "method": "posthoc_adjustment", "wall_s": wall, **r}
                 for r in evaluate(adjusted, data.y_test, counts)]
    decoupled = [m for m in derived if m != "posthoc_adjustment"]
    if not decoupled:
        return rows
    cpu = torch.device("cpu")
    feats = incremental.extract_features(model, x, device)
    feats_test = incremental.extract_features(model, data.x_test, device)
    for offset, dmethod in enumerate(decoupled):
        start = time.perf_counter()
        training.seed_everything(seed * 1000 + offset)
        classifier = nn.Linear(feats.shape[1], len(counts))
        if dmethod == "balms":
            fit_balms(classifier, feats, y, counts, config, seed)
        else:
            cb = losses.class_balanced_sample_weights(y, len(counts)) if uses_cb_sampler(dmethod) \
                else None
            training.fit_classifier(classifier, build_loss(dmethod, counts, config), feats, y,
                                    decoupled_spec(config), seed=seed, device=cpu,
                                    sample_weights=cb)
        with torch.inference_mode():
            dlogits = classifier(feats_test)
        wall_d = time.perf_counter() - start
        rows += [{**setting, "method": dmethod, "wall_s": wall_d, **r}
                 for r in evaluate(dlogits, data.y_test, counts)]
    return rows


def run_gaussian(config: Config, run: dict[str, Any], device: torch.device,
                 ) -> list[dict[str, Any]]:
    """Theorem 1: a linear softmax on long-tailed Gaussian classes, distance to exact posteriors.

    The class means are fixed (seed 0); each run samples its own training and test points.
    """
    imbalance, seed, method = run["imbalance"], run["seed"], run["method"]
    problem = bayes_posterior.make_gaussian_classes(config.gauss_classes, config.gauss_dim,
                                                    config.gauss_separation, seed=0)
    counts = longtail.longtail_counts(config.gauss_n_max, config.gauss_classes, imbalance)
    generator = torch.Generator().manual_seed(seed)
    x, y = problem.sample(counts, generator)
    x_test, _ = problem.sample([config.gauss_test_size] * config.gauss_classes, generator)
    training.seed_everything(seed)
    model = nn.Linear(config.gauss_dim, config.gauss_classes)
    spec = training.TrainSpec(steps=config.gauss_steps, batch_size=1024, lr=0.05,
                              optimizer="adam", schedule="cosine")
    loss = losses.BalancedSoftmaxLoss(counts) if method == "balanced_softmax" \
        else losses.softmax_cross_entropy
    start = time.perf_counter()
    training.fit_classifier(model, loss, x, y, spec, seed=seed, device=device)
    predicted = training.predict(model, x_test, device=device).softmax(dim=1)
    wall = time.perf_counter() - start
    loglik = problem.log_likelihood(x_test)
    balanced = bayes_posterior.exact_posterior(loglik, torch.ones(config.gauss_classes))
    shifted = bayes_posterior.exact_posterior(loglik, torch.as_tensor(counts, dtype=torch.float64))
    setting = {"dataset": "gaussian-lt", "imbalance": imbalance, "seed": seed, "method": method,
               "wall_s": wall}
    rows = [{**setting, "metric": "tv_balanced",
             "value": float(bayes_posterior.total_variation(predicted, balanced).mean())},
            {**setting, "metric": "tv_shifted",
             "value": float(bayes_posterior.total_variation(predicted, shifted).mean())}]
    tail = config.gauss_classes - 1
    bins = torch.clamp((balanced[:, tail] * POSTERIOR_BINS).long(), max=POSTERIOR_BINS - 1)
    for b in range(POSTERIOR_BINS):
        members = bins == b
        if members.any():
            rows.append({**setting, "metric": "tail_posterior",
                         "exact_bin": (b + 0.5) / POSTERIOR_BINS,
                         "value": float(predicted[members, tail].double().mean())})
    return rows


# ---------------------------------------------------------------------------------------------
# the chapter


def derived_rows(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-seed contrasts of Balanced Softmax over Softmax (method ``balanced_softmax``):

    - ``gain_growth`` (per dataset and seed): top-1 gain at the largest imbalance factor minus the
      gain at the smallest (``imbalance`` = the largest factor);
    - ``few_minus_many_gain`` (per dataset, imbalance and seed): few-shot gain minus many-shot gain.
    """
    out: list[dict[str, Any]] = []
    if rows.empty or not {"softmax", "balanced_softmax"} <= set(rows["method"]):
        return out
    keys = ["dataset", "imbalance", "seed"]
    wide = rows[rows["method"].isin(["softmax", "balanced_softmax"])
                & rows["metric"].isin(["top1", "many", "few"])]
    wide = wide.pivot_table(index=keys, columns=["metric", "method"], values="value")
    gain = {m: wide[(m, "balanced_softmax")] - wide[(m, "softmax")]
            for m in ("top1", "many", "few")}
    for (dataset, imbalance, seed), value in (gain["few"] - gain["many"]).dropna().items():
        out.append({"dataset": dataset, "imbalance": imbalance, "seed": seed,
                    "method": "balanced_softmax", "metric": "few_minus_many_gain",
                    "value": float(value)})
    top1 = gain["top1"].dropna().reset_index(name="gain")
    for (dataset, seed), group in top1.groupby(["dataset", "seed"]):
        if group["imbalance"].nunique() < 2:
            continue
        group = group.sort_values("imbalance")
        out.append({"dataset": dataset, "imbalance": group["imbalance"].iloc[-1], "seed": seed,
                    "method": "balanced_softmax", "metric": "gain_growth",
                    "value": float(group["gain"].iloc[-1] - group["gain"].iloc[0])})
    return out


def paper_comparison(rows: pd.DataFrame, dataset: str, paper: str = "CIFAR-10-LT",
                     ) -> pd.DataFrame:
    """Top-1 (%) per method: the paper's value on ``paper`` beside ours (mean [95% CI] over seeds,
    the book's format) on ``dataset``, for each imbalance factor of the paper that we ran; one row
    per method (column ``method``), ``None`` where there is no number."""
    top1 = rows[(rows["metric"] == "top1") & (rows["dataset"] == dataset)]
    table = metrics.summarize(top1, ["method", "imbalance"])
    ran = [f for f in PAPER_IMBALANCES if f in set(table["imbalance"])]
    records = []
    for method in [m for m in METHODS if m in set(table["method"])]:
        record: dict[str, Any] = {"method": method}
        for factor in ran:
            published = PAPER_TOP1[paper].get(method)
            record[f"paper IF {factor}"] = (published[PAPER_IMBALANCES.index(factor)]
                                            if published else None)
            hit = table[(table["method"] == method) & (table["imbalance"] == factor)]
            record[f"ours IF {factor}"] = (
                tables.format_ci(*hit[["mean", "ci_low", "ci_high"]].iloc[0], digits=1, scale=100)
                if len(hit) else None)
        records.append(record)
    return pd.DataFrame.from_records(records)


def probe_table(rows: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The testbed probe: per variant (``base`` = the main MNIST-1D-LT runs), top-1 of Balanced
    Softmax and of class-balanced re-weighting and their paired difference, over the probe seeds.

    Returns columns ``variant, seeds, bs_mean, cbw_mean, diff_mean, diff_low, diff_high``
    (fractions).
    """
    top1 = rows[(rows["metric"] == "top1") & (rows["imbalance"] == config.probe_imbalance)
                & rows["seed"].isin(config.probe_seeds)]
    records = []
    for variant in ("base", *config.probe_variants):
        dataset = "mnist1d-lt" if variant == "base" else f"mnist1d-lt+{variant}"
        wide = top1[top1["dataset"] == dataset].pivot_table(index="seed", columns="method",
                                                            values="value")
        if not set(PROBE_METHODS) <= set(wide.columns):
            continue
        wide = wide.dropna(subset=list(PROBE_METHODS))
        bs_, cbw = wide["balanced_softmax"], wide["cb_reweighting"]
        mean, low, high = metrics.paired_difference_ci(bs_, cbw)
        records.append({"variant": variant, "seeds": len(wide), "bs_mean": float(bs_.mean()),
                        "cbw_mean": float(cbw.mean()), "diff_mean": mean, "diff_low": low,
                        "diff_high": high})
    return pd.DataFrame.from_records(records)


def grid(config: Config) -> list[dict[str, Any]]:
    """Run descriptions: one per (dataset, imbalance, end-to-end method, seed), the table-only
    methods at ``table_only_imbalances`` (all factors on Digits), the testbed probe, Theorem 1."""
    end_to_end = [m for m in END_TO_END if m in config.methods]
    if any(m in config.methods for m in FROM_SOFTMAX) and "softmax" not in end_to_end:
        end_to_end.insert(0, "softmax")
    runs = []
    for name in config.datasets:
        factors = config.digits_imbalances if name == "digits" else config.imbalances
        limited = name != "digits" and config.table_only_imbalances is not None
        runs += [{"dataset": name, "imbalance": f, "method": m, "seed": s}
                 for f, m, s in itertools.product(factors, end_to_end, config.seeds)
                 if not (limited and m in TABLE_ONLY and f not in config.table_only_imbalances)]
    probe = [m for m in PROBE_METHODS if m in config.methods]
    runs += [{"dataset": "mnist1d", "imbalance": config.probe_imbalance, "method": m, "seed": s,
              "variant": v}
             for v, m, s in itertools.product(config.probe_variants, probe, config.probe_seeds)]
    gauss_methods = [m for m in ("softmax", "balanced_softmax") if m in config.methods]
    runs += [{"dataset": "gaussian", "imbalance": f, "method": m, "seed": s}
             for f, m, s in itertools.product(config.gauss_imbalances, gauss_methods, config.seeds)]
    return runs


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every run of :func:`grid`; rows (plus :func:`derived_rows`) written to the results file."""
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    with timer("data"):
        sources = {name: load_source(name, config) for name in config.datasets}

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        if run["dataset"] == "gaussian":
            return run_gaussian(config, run, device)
        return run_image(config, sources[run["dataset"]], run, device)

    with training.cpu_threads(config.threads), timer("train+evaluate"):
        rows = training.run_grid(grid(config), run_one, chapter=CHAPTER)
    rows += derived_rows(pd.DataFrame.from_records(rows))
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)
