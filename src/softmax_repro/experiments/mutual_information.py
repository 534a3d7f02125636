"""Chapter 04: softmax cross-entropy as a mutual-information estimator, PC-softmax and infoCAM.

Two parts, one results file:

* ``synthetic`` (Qin et al.'s setup): five Gaussian classes ``N(m · 1_d, I)``, ``m ∈ {0, ±2, ±4}``,
  balanced (``n_per_class`` each) or imbalanced (0.5/1/1.5/2/2.5 × ``n_per_class``); an MLP
  ``d → 100 → 100 → 100 → 5`` trained with Adam. Each run trains one estimator (``softmax``,
  ``pc_softmax``, ``infonce``, ``nwj``, ``mine``) and scores it on a test set against the exact MI.
  Extra balanced ``softmax`` runs at smaller training sizes give the error-vs-sample-size curve;
  they take the same number of optimizer steps as the main runs.
* ``localisation``: a GAP CNN trained with labels only on Digits pasted on noisy canvases; CAM and
  infoCAM boxes are scored against the known boxes, and the infoCAM region of the true class is
  masked out (information masking) against a same-area mask at a random place.

Rows: ``part, method, seed, metric, value`` plus ``series`` (``main`` or ``sample_size``),
``balance``, ``d`` and ``n_per_class`` (synthetic only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softmax_repro import cam, metrics, results, training
from softmax_repro import mutual_information as mi
from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_in_range,
    check_int,
    check_positive,
    check_subset,
)
from softmax_repro.config import (
    make_config as _make_config,
)
from softmax_repro.data.localization import LocalisationSet, load_digit_localisation
from softmax_repro.data.synthetic import PAPER_MEANS, class_counts, sample_gaussian_classes
from softmax_repro.models import MLP, GapCNN
from softmax_repro.timing import PhaseTimer

CHAPTER = "04_softmax_mutual_information"
BOUND_METHODS = ("infonce", "nwj", "mine")
IMBALANCED_METHODS = ("softmax", "pc_softmax")
NUM_CLASSES = len(PAPER_MEANS)
DIGIT_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 04 settings.

    Attributes:
        dims: input dimensions d of the Gaussian classes (paper: 1, 2, 5, 10).
        n_per_class: balanced training points per class (paper: 10,000).
        test_per_class: balanced test points per class (paper: 1/5 of training, 2,000); imbalanced
            test sets scale like the training counts.
        sample_sizes: smaller per-class training sizes for the error curve (balanced, softmax).
        bound_methods: neural MI bounds also trained on the balanced data.
        epochs: passes over the main training set (paper: 100); the sample-size runs take the same
            number of optimizer steps as a balanced main run.
        batch_size: points per Adam step (paper: 2,000).
        lr: Adam learning rate.
        hidden: MLP width (paper: 100).
        depth: MLP hidden layers (paper: 3).
        loc_train: training canvases of the localisation set.
        loc_test: test canvases.
        canvas_size: canvas side in pixels.
        digit_scale: enlargement of the 8×8 digits.
        noise_std: background noise standard deviation.
        cnn_width: channels of the GAP CNN's first block (the second has twice as many).
        cnn_epochs: passes over the localisation training set.
        cnn_batch_size: canvases per Adam step.
        cnn_lr: Adam learning rate of the CNN.
        region_size: side of infoCAM's all-ones summation kernel on the feature map.
        box_threshold: fraction of the map's maximum that defines the box (paper: 0.2).
        min_iou: IoU for a correct localisation (paper: 0.5).
        threads: torch intra-op threads during the run. The small MLP and CNN gain little from
            a second thread and lose up to 10× when the cores are shared with other processes.
    """

    dims: tuple[int, ...] = (1, 2, 5, 10)
    n_per_class: int = 10_000
    test_per_class: int = 2_000
    sample_sizes: tuple[int, ...] = (250, 1_000)
    bound_methods: tuple[str, ...] = BOUND_METHODS
    epochs: int = 15
    batch_size: int = 2_000
    lr: float = 3e-3
    hidden: int = 100
    depth: int = 3
    loc_train: int = 3_000
    loc_test: int = 1_000
    canvas_size: int = 32
    digit_scale: int = 2
    noise_std: float = 0.3
    cnn_width: int = 16
    cnn_epochs: int = 8
    cnn_batch_size: int = 64
    cnn_lr: float = 3e-3
    region_size: int = 3
    box_threshold: float = 0.2
    min_iou: float = 0.5
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dims:
            raise ConfigError("dims is empty; give at least one input dimension >= 1, e.g. [1, 2]")
        for dim in self.dims:
            check_int("dims item", dim, 1)
        for size in self.sample_sizes:
            check_int("sample_sizes item", size, 2)
        if self.bound_methods:
            check_subset("bound_methods", self.bound_methods, BOUND_METHODS)
        for name in ("n_per_class", "test_per_class"):
            check_int(name, getattr(self, name), 2)
        for name in ("epochs", "batch_size", "hidden", "depth", "loc_train", "loc_test",
                     "cnn_width", "cnn_epochs", "cnn_batch_size", "region_size", "digit_scale",
                     "threads"):
            check_int(name, getattr(self, name), 1)
        check_int("canvas_size", self.canvas_size, 8 * self.digit_scale)
        for name in ("lr", "cnn_lr"):
            check_positive(name, getattr(self, name))
        check_positive("noise_std", self.noise_std, allow_zero=True)
        check_in_range("box_threshold", self.box_threshold, 0.0, 1.0)
        check_in_range("min_iou", self.min_iou, 0.0, 1.0)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "n_per_class": 400, "test_per_class": 200,
              "sample_sizes": (100,), "epochs": 3, "batch_size": 500, "loc_train": 200,
              "loc_test": 100, "cnn_epochs": 1, "cnn_width": 8},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2, 3, 4), "epochs": 100, "lr": 1e-3, "sample_sizes": (250, 1_000),
              "loc_train": 20_000, "loc_test": 5_000, "cnn_epochs": 30},
}


def make_config(
    profile: str = "cpu",
    seeds: Any = None,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> Config:
    """A validated :class:`Config` from a profile plus overrides."""
    return _make_config(Config, PROFILES, profile, seeds, device, overrides)


def synthetic_grid(config: Config) -> list[dict[str, Any]]:
    """Run descriptions of the synthetic part (every run trains one MLP)."""
    runs = []
    for seed in config.seeds:
        for d in config.dims:
            base = {"part": "synthetic", "d": d, "seed": seed}
            main = {**base, "series": "main", "n_per_class": config.n_per_class}
            for method in ("softmax", *config.bound_methods):
                runs.append({**main, "balance": "balanced", "method": method})
            for method in IMBALANCED_METHODS:
                runs.append({**main, "balance": "imbalanced", "method": method})
            for size in config.sample_sizes:
                runs.append({**base, "series": "sample_size", "n_per_class": size,
                             "balance": "balanced", "method": "softmax"})
    return runs


def synthetic_run(config: Config, run: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Train one estimator on one Gaussian data set; return its metrics.

    The data depend on (seed, d, balance, n_per_class) only, so every method sees the same points.
    """
    d, seed, balance, method = run["d"], run["seed"], run["balance"], run["method"]
    counts = class_counts(balance, run["n_per_class"])
    x, y = sample_gaussian_classes(PAPER_MEANS, counts, d, seed=10_000 * seed + 100 * d + 1)
    test_counts = class_counts(balance, config.test_per_class)
    x_test, y_test = sample_gaussian_classes(PAPER_MEANS, test_counts, d,
                                             seed=10_000 * seed + 100 * d + 2)
    main_steps = config.epochs * math.ceil(NUM_CLASSES * config.n_per_class / config.batch_size)
    if run["n_per_class"] == config.n_per_class:
        spec = training.TrainSpec(epochs=config.epochs, batch_size=config.batch_size,
                                  lr=config.lr, optimizer="adam")
    else:
        spec = training.TrainSpec(steps=main_steps, batch_size=min(config.batch_size, len(y)),
                                  lr=config.lr, optimizer="adam")
    training.seed_everything(seed)
    model = MLP(d, config.hidden, NUM_CLASSES, depth=config.depth)
    training.fit_classifier(model, mi.training_loss(method, counts), x, y, spec, seed=seed,
                            device=device,
                            # InfoNCE / NWJ / MINE contrast examples within the whole batch
                            data_parallel=method not in BOUND_METHODS)
    logits = training.predict(model, x_test, batch_size=4096, device=device)
    truth = mi.exact_mutual_information(PAPER_MEANS, counts, dim=d)
    value = mi.estimate(method, logits, y_test, counts)
    per_class = metrics.per_class_accuracy(logits, y_test, NUM_CLASSES)
    return {
        "mi_estimate": value,
        "mi_true": truth,
        "mi_error": value - truth,
        "mi_abs_error": abs(value - truth),
        "accuracy": metrics.accuracy(logits, y_test),
        "balanced_accuracy": float(np.mean(per_class)),
    }


@torch.no_grad()
def localisation_scores(
    model: GapCNN, test: LocalisationSet, config: Config, seed: int
) -> dict[str, dict[str, float]]:
    """CAM/infoCAM localisation and information-masking metrics of a trained ``model``.

    Returns ``{method: {metric: value}}`` for methods ``cnn`` (classification), ``cam``,
    ``infocam`` (top-1 and ground-truth-class localisation, mean IoU) and ``info_mask`` /
    ``random_mask`` (drop of the point-wise MI ``log K + log softmax_y``, accuracy after masking).
    """
    model.eval()
    size = (config.canvas_size, config.canvas_size)
    logits = training.predict(model, test.images)
    predicted = logits.argmax(dim=1)
    features = model.feature_maps(test.images.to(next(model.parameters()).device)).cpu()
    weight = model.classifier.weight.detach().cpu()
    correct_class = (predicted == test.labels).numpy()
    boxes = [tuple(b) for b in test.boxes.tolist()]
    scores: dict[str, dict[str, float]] = {"cnn": {"top1": float(correct_class.mean())}}
    makers = {
        "cam": lambda c: cam.class_maps(features, weight, c),
        "infocam": lambda c: cam.info_maps(features, weight, c, config.region_size),
    }
    info_true = None
    for name, make in makers.items():
        top1_maps = cam.upsample(make(predicted), size).numpy()
        true_maps = cam.upsample(make(test.labels), size).numpy()
        top1_iou = np.array([cam.iou(cam.box_from_map(m, config.box_threshold), b)
                             for m, b in zip(top1_maps, boxes, strict=True)])
        true_iou = np.array([cam.iou(cam.box_from_map(m, config.box_threshold), b)
                             for m, b in zip(true_maps, boxes, strict=True)])
        scores[name] = {
            "top1_loc": float(np.mean(correct_class & (top1_iou >= config.min_iou))),
            "gt_known_loc": float(np.mean(true_iou >= config.min_iou)),
            "mean_iou": float(true_iou.mean()),
        }
        if name == "infocam":
            info_true = true_maps
    masks = np.stack([cam.threshold_mask(m, config.box_threshold) for m in info_true])
    random_masks = cam.shifted_masks(masks, np.random.default_rng(seed))
    base_pmi = mi.pointwise_mi(logits, test.labels)
    for name, chosen in (("info_mask", masks), ("random_mask", random_masks)):
        masked_logits = training.predict(model, cam.apply_mask(test.images, chosen))
        scores[name] = {
            "pmi_drop": float((base_pmi - mi.pointwise_mi(masked_logits, test.labels)).mean()),
            "masked_accuracy": metrics.accuracy(masked_logits, test.labels),
            "masked_fraction": float(chosen.mean()),
        }
    return scores


def train_localiser(
    config: Config, seed: int, device: torch.device
) -> tuple[GapCNN, LocalisationSet]:
    """Build the localisation set of ``seed`` and train the GAP CNN on its labels only.

    Returns the trained model (in eval mode) and the test set.
    """
    train, test = load_digit_localisation(
        config.loc_train, config.loc_test, canvas_size=config.canvas_size,
        scale=config.digit_scale, noise_std=config.noise_std, seed=seed,
    )
    training.seed_everything(seed)
    model = GapCNN(DIGIT_CLASSES, width=config.cnn_width)
    spec = training.TrainSpec(epochs=config.cnn_epochs, batch_size=config.cnn_batch_size,
                              lr=config.cnn_lr, optimizer="adam")
    training.fit_classifier(model, F.cross_entropy, train.images, train.labels, spec, seed=seed,
                            device=device)
    return model.eval(), test


def localisation_examples(config: Config, seed: int, count: int = 6) -> dict[str, np.ndarray]:
    """Re-train the localiser of ``seed`` (deterministic); return maps of ``count`` test canvases.

    Returns arrays: ``images`` ``[n, S, S]``, ``labels``/``predicted`` ``[n]``, ``true_boxes``,
    ``cam_boxes``, ``infocam_boxes`` ``[n, 4]``, ``cam``/``infocam`` maps ``[n, S, S]`` (true
    class, upsampled) and ``masked`` images ``[n, S, S]`` (infoCAM region removed).
    """
    with training.cpu_threads(config.threads):
        model, test = train_localiser(config, seed, training.resolve_device(config.device))
        with torch.no_grad():
            return _example_maps(model.cpu(), test, config, count)


def _example_maps(
    model: GapCNN, test: LocalisationSet, config: Config, count: int
) -> dict[str, np.ndarray]:
    """The arrays of :func:`localisation_examples` for the first ``count`` test canvases."""
    images, labels = test.images[:count], test.labels[:count]
    features = model.feature_maps(images)
    weight = model.classifier.weight
    size = (config.canvas_size, config.canvas_size)
    maps = {
        "cam": cam.upsample(cam.class_maps(features, weight, labels), size).numpy(),
        "infocam": cam.upsample(cam.info_maps(features, weight, labels, config.region_size),
                                size).numpy(),
    }
    masks = np.stack([cam.threshold_mask(m, config.box_threshold) for m in maps["infocam"]])
    out = {
        "images": images[:, 0].numpy(),
        "labels": labels.numpy(),
        "predicted": model(images).argmax(dim=1).numpy(),
        "true_boxes": test.boxes[:count].numpy(),
        "masked": cam.apply_mask(images, masks)[:, 0].numpy(),
        **maps,
    }
    for name in ("cam", "infocam"):
        out[f"{name}_boxes"] = np.array([cam.box_from_map(m, config.box_threshold)
                                         for m in maps[name]])
    return out


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every synthetic and localisation run; rows written to the results file."""
    with training.cpu_threads(config.threads):
        return _run(config, results_dir)


def _run(config: Config, results_dir: str) -> results.ChapterResult:
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    grid = synthetic_grid(config) + [{"part": "localisation", "seed": s} for s in config.seeds]

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        if run["part"] == "synthetic":
            with timer("synthetic"):
                scores = synthetic_run(config, run, device)
            return [{**run, "metric": k, "value": v} for k, v in scores.items()]
        with timer("localisation"):
            model, test = train_localiser(config, run["seed"], device)
            by_method = localisation_scores(model, test, config, run["seed"])
        return [{**run, "method": method, "metric": k, "value": v}
                for method, values in by_method.items() for k, v in values.items()]

    rows = training.run_grid(grid, run_one, chapter=CHAPTER)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)
