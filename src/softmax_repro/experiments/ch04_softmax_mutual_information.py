"""Chapter 04: softmax cross-entropy as a mutual-information estimator, PC-softmax and infoCAM.

Two parts, one results file:

* ``synthetic``: Gaussian classes ``N(m · 1_d, I)``, balanced (``n_per_class`` each) or imbalanced
  (0.5 … 2.5 × ``n_per_class``); an MLP ``d → 100 → 100 → 100 → K`` trained with Adam. Two series:
  ``main``, Qin et al.'s setup (five classes, ``m ∈ {0, ±2, ±4}``, ``dims``), and ``overlap``
  (``overlap_classes`` classes ``overlap_spacing`` apart at ``overlap_dims``), where I(X;Y) lies
  well below log K, so that the constant estimate log K cannot pass a test (at the paper's d = 5
  and 10 the exact MI is within 0.06 nats of log 5). Each run trains one estimator (``softmax``,
  ``pc_softmax``, ``infonce``, ``nwj``, ``mine``) and scores it on a test set against the exact MI.
  The trivial estimators ``constant_logk`` (log K) and ``constant_entropy`` (H(Y) of the training
  prior) get rows too, untrained: they are the null controls of the claims' mean tests. Extra
  balanced ``softmax`` runs at smaller training sizes give the error-vs-sample-size curve; they
  take the same number of optimizer steps as the main runs.
* ``localisation``: a GAP CNN trained with labels only on Digits pasted on noisy canvases
  (``loc_dataset="digits"``, the ``smoke`` and ``cpu`` profiles) or on CUB-200-2011 with its boxes
  through ``datasets.load_dataset`` (``loc_dataset="cub200"``, the ``paper`` profile); CAM and
  infoCAM boxes are scored against the true boxes, and the infoCAM region of the true class is
  masked out (information masking) against a same-area mask at a random place.

The ``paper`` profile's CUB run deviates from the paper: the paper fine-tunes ImageNet-pretrained
ResNet/VGG backbones, which cannot be downloaded here, so a from-scratch GAP CNN (four 3×3
convolutions) sees 224×224 images. It needs the ~1.1 GB hub download (or a local copy given as
``loc_data_files``) and a GPU (the two splits take ~7 GB as float32 at 224×224 and are decoded
again for every seed); it is tested on CPU only on tiny local parquet files in the hub's schema.
Tiny-ImageNet's localisation is not attempted: its hub copy has no boxes.

Rows: ``part, method, seed, metric, value`` plus ``series`` (``main``, ``overlap`` or
``sample_size``), ``classes``, ``balance``, ``d`` and ``n_per_class`` (synthetic only) and
``dataset`` (localisation only: ``digits-canvas`` or ``cub200``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
from softmax_repro.data.hub_localisation import (
    HUB_LOCALISATION_DATASETS,
    load_hub_localisation,
    local_split_files,
)
from softmax_repro.data.localization import LocalisationSet, load_digit_localisation
from softmax_repro.data.synthetic import (
    PAPER_MEANS,
    centred_means,
    class_counts,
    sample_gaussian_classes,
)
from softmax_repro.engine import training
from softmax_repro.engine.models import MLP, GapCNN
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import cam
from softmax_repro.methods import mutual_information as mi
from softmax_repro.pipeline import results

CHAPTER = "04_softmax_mutual_information"
BOUND_METHODS = ("infonce", "nwj", "mine")
IMBALANCED_METHODS = ("softmax", "pc_softmax")
CONSTANT_METHODS = ("constant_logk", "constant_entropy")
"""Untrained estimators: log K and H(Y) of the training prior (the null controls of mean tests)."""
PAPER_SPACING = 2.0
"""Spacing of the paper's class offsets (0, ±2, ±4)."""
DIGIT_CLASSES = 10
LOC_DATASETS = {"digits": "digits-canvas", "cub200": "cub200"}
"""Localisation sources (``loc_dataset`` values) and the ``dataset`` label of their rows."""
SCORE_CHUNK_PIXELS = 2**22
"""Test images are scored in chunks of at most this many pixels per channel (whole images)."""


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 04 settings.

    Attributes:
        dims: input dimensions d of the paper's five Gaussian classes (paper: 1, 2, 5, 10).
        imbalanced_dims: the dims also run imbalanced (softmax and PC-softmax); this and the
            next two take effect only where they meet ``dims``.
        overlap_dims: input dimensions of the ``overlap`` series (balanced and imbalanced).
        overlap_classes / overlap_spacing: its number of classes and the spacing of their offsets.
        bound_dims: the dims where the neural bounds are trained.
        sample_size_dims: the dims of the error-vs-sample-size curve.
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
        loc_dataset: localisation source: ``digits`` (Digits on noisy canvases, embedded) or
            ``cub200`` (CUB-200-2011 with boxes from the hub, whole train/test splits).
        loc_data_files: ``cub200`` only: a directory, or a glob with ``{split}``, of local
            parquet files in the hub schema holding ``train`` and ``test``; ``None`` = the hub id.
        loc_image_size: ``cub200`` only: side of the resized square images (paper: 224).
        loc_train: training canvases of the ``digits`` set.
        loc_test: test canvases of the ``digits`` set.
        canvas_size: ``digits`` canvas side in pixels.
        digit_scale: enlargement of the 8×8 digits.
        noise_std: background noise standard deviation.
        cnn_width: channels of the GAP CNN's first block (the second has twice as many).
        cnn_epochs: passes over the localisation training set.
        cnn_batch_size: canvases per Adam step.
        cnn_lr: Adam learning rate of the CNN.
        region_size: side of infoCAM's all-ones summation kernel on the feature map (paper:
            4 on CUB, 3 on Tiny-ImageNet).
        box_threshold: fraction of the map's maximum that defines the box (paper: 0.2).
        min_iou: IoU for a correct localisation (paper: 0.5).
        threads: torch intra-op threads during the run. The small MLP and CNN gain little from
            a second thread and lose up to 10× when the cores are shared with other processes.
    """

    dims: tuple[int, ...] = (1, 2, 5, 10)
    imbalanced_dims: tuple[int, ...] = (1, 2)
    overlap_dims: tuple[int, ...] = (5, 10)
    overlap_classes: int = 10
    overlap_spacing: float = 0.5
    bound_dims: tuple[int, ...] = (2,)
    sample_size_dims: tuple[int, ...] = (2,)
    n_per_class: int = 10_000
    test_per_class: int = 2_000
    sample_sizes: tuple[int, ...] = (250, 1_000)
    bound_methods: tuple[str, ...] = BOUND_METHODS
    loc_dataset: str = "digits"
    loc_data_files: str | None = None
    loc_image_size: int = 224
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
        for dim in (*self.dims, *self.overlap_dims, *self.imbalanced_dims, *self.bound_dims,
                    *self.sample_size_dims):
            check_int("dims item", dim, 1)
        check_int("overlap_classes", self.overlap_classes, 2)
        check_positive("overlap_spacing", self.overlap_spacing)
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
        check_choice("loc_dataset", self.loc_dataset, tuple(LOC_DATASETS))
        check_int("loc_image_size", self.loc_image_size, 8)
        if self.loc_data_files is not None and (
                not isinstance(self.loc_data_files, str) or not self.loc_data_files.strip()):
            raise ConfigError(
                f"loc_data_files={self.loc_data_files!r} is not allowed; give None (the hub id) "
                "or a directory / glob with '{split}' of local parquet files"
            )
        for name in ("lr", "cnn_lr"):
            check_positive(name, getattr(self, name))
        check_positive("noise_std", self.noise_std, allow_zero=True)
        check_in_range("box_threshold", self.box_threshold, 0.0, 1.0)
        check_in_range("min_iou", self.min_iou, 0.0, 1.0)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "n_per_class": 400, "test_per_class": 200,
              "sample_sizes": (100,), "epochs": 3, "batch_size": 500, "loc_train": 200,
              "loc_test": 100, "cnn_epochs": 1, "cnn_width": 8},
    "cpu": {"seeds": (0, 1, 2, 3, 4), "n_per_class": 5_000},
    "paper": {"seeds": (0, 1, 2, 3, 4), "epochs": 100, "lr": 1e-3, "sample_sizes": (250, 1_000),
              "imbalanced_dims": (1, 2, 5, 10), "bound_dims": (1, 2, 5, 10),
              "sample_size_dims": (1, 2, 5, 10),
              "loc_dataset": "cub200", "loc_image_size": 224, "region_size": 4,
              "loc_train": 20_000, "loc_test": 5_000, "cnn_epochs": 30},
}


make_config = config_factory(Config, PROFILES)


def series_means(series: str, config: Config) -> tuple[float, ...]:
    """Class offsets of a synthetic series (``main``/``sample_size``: the paper's five)."""
    if series == "overlap":
        return centred_means(config.overlap_classes, config.overlap_spacing)
    return PAPER_MEANS


def synthetic_grid(config: Config) -> list[dict[str, Any]]:
    """Run descriptions of the synthetic part (every run trains one MLP)."""
    runs = []
    settings = [("main", d) for d in config.dims] + [("overlap", d) for d in config.overlap_dims]
    for seed in config.seeds:
        for series, d in settings:
            classes = len(series_means(series, config))
            main = {"part": "synthetic", "series": series, "classes": classes, "d": d,
                    "seed": seed, "n_per_class": config.n_per_class}
            methods = ["softmax"]
            if series == "main" and d in config.bound_dims:
                methods += list(config.bound_methods)
            runs += [{**main, "balance": "balanced", "method": m} for m in methods]
            if series == "overlap" or d in config.imbalanced_dims:
                runs += [{**main, "balance": "imbalanced", "method": m}
                         for m in IMBALANCED_METHODS]
            if series == "main" and d in config.sample_size_dims:
                runs += [{**main, "series": "sample_size", "n_per_class": size,
                          "balance": "balanced", "method": "softmax"}
                         for size in config.sample_sizes]
    return runs


def constant_rows(config: Config, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the untrained estimators (:data:`CONSTANT_METHODS`) in the setting of ``run``.

    ``constant_logk`` always answers log K, ``constant_entropy`` the label entropy H(Y) of the
    training counts (the largest value I(X;Y) can take). Same metrics as a trained estimator.
    """
    means = series_means(run["series"], config)
    counts = class_counts(run["balance"], run["n_per_class"], len(means))
    truth = mi.exact_mutual_information(means, counts, dim=run["d"])
    values = {"constant_logk": math.log(len(means)), "constant_entropy": mi.entropy(counts)}
    base = {k: v for k, v in run.items() if k != "method"}
    return [{**base, "method": method, "metric": metric, "value": value}
            for method, estimate in values.items()
            for metric, value in (("mi_estimate", estimate), ("mi_true", truth),
                                  ("mi_error", estimate - truth),
                                  ("mi_abs_error", abs(estimate - truth)))]


def synthetic_run(config: Config, run: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Train one estimator on one Gaussian data set; return its metrics.

    The data depend on (seed, series, d, balance, n_per_class) only, so every method sees the same
    points.
    """
    d, seed, balance, method = run["d"], run["seed"], run["balance"], run["method"]
    means = series_means(run["series"], config)
    num_classes = len(means)
    counts = class_counts(balance, run["n_per_class"], num_classes)
    offset = 0 if run["series"] != "overlap" else 50
    x, y = sample_gaussian_classes(means, counts, d, seed=10_000 * seed + 100 * (d + offset) + 1)
    test_counts = class_counts(balance, config.test_per_class, num_classes)
    x_test, y_test = sample_gaussian_classes(means, test_counts, d,
                                             seed=10_000 * seed + 100 * (d + offset) + 2)
    main_steps = config.epochs * math.ceil(num_classes * config.n_per_class / config.batch_size)
    if run["n_per_class"] == config.n_per_class:
        spec = training.TrainSpec(epochs=config.epochs, batch_size=config.batch_size,
                                  lr=config.lr, optimizer="adam")
    else:
        spec = training.TrainSpec(steps=main_steps, batch_size=min(config.batch_size, len(y)),
                                  lr=config.lr, optimizer="adam")
    training.seed_everything(seed)
    model = MLP(d, config.hidden, num_classes, depth=config.depth)
    training.fit_classifier(model, mi.training_loss(method, counts), x, y, spec, seed=seed,
                            device=device,
                            # InfoNCE / NWJ / MINE contrast examples within the whole batch
                            data_parallel=method not in BOUND_METHODS)
    logits = training.predict(model, x_test, batch_size=4096, device=device)
    truth = mi.exact_mutual_information(means, counts, dim=d)
    value = mi.estimate(method, logits, y_test, counts)
    per_class = metrics.per_class_accuracy(logits, y_test, num_classes)
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
    Maps are upsampled to the test images' size; the images are processed in chunks of
    :data:`SCORE_CHUNK_PIXELS` (a 32×32 set of up to 4,096 images is one chunk).
    """
    model.eval()
    logits = training.predict(model, test.images)
    predicted = logits.argmax(dim=1)
    correct_class = (predicted == test.labels).numpy()
    rng = np.random.default_rng(seed)
    height, width = test.images.shape[-2:]
    chunk = max(1, SCORE_CHUNK_PIXELS // (height * width))
    parts = [_chunk_scores(model, test, predicted, slice(start, start + chunk), config, rng)
             for start in range(0, len(test), chunk)]
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    scores: dict[str, dict[str, float]] = {"cnn": {"top1": float(correct_class.mean())}}
    for name in ("cam", "infocam"):
        top1_iou, true_iou = merged[f"{name}_top1_iou"], merged[f"{name}_true_iou"]
        scores[name] = {
            "top1_loc": float(np.mean(correct_class & (top1_iou >= config.min_iou))),
            "gt_known_loc": float(np.mean(true_iou >= config.min_iou)),
            "mean_iou": float(true_iou.mean()),
        }
    base_pmi = mi.pointwise_mi(logits, test.labels)
    for name in ("info_mask", "random_mask"):
        masked_logits = torch.from_numpy(merged[f"{name}_logits"])
        scores[name] = {
            "pmi_drop": float((base_pmi - mi.pointwise_mi(masked_logits, test.labels)).mean()),
            "masked_accuracy": metrics.accuracy(masked_logits, test.labels),
            "masked_fraction": float(merged[f"{name}_pixels"].sum() / (len(test) * height * width)),
        }
    return scores


def _chunk_scores(
    model: GapCNN,
    test: LocalisationSet,
    predicted: torch.Tensor,
    rows: slice,
    config: Config,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Per-image results of :func:`localisation_scores` for the test images ``rows``.

    Returns ``{method}_top1_iou`` / ``{method}_true_iou`` ``[n]`` for ``cam`` and ``infocam``, and
    ``{mask}_logits`` ``[n, K]`` / ``{mask}_pixels`` ``[n]`` (masked pixel counts) for
    ``info_mask`` and ``random_mask``. ``rng`` places the random masks (consumed in image order).
    """
    images, labels, chosen_classes = test.images[rows], test.labels[rows], predicted[rows]
    size = (images.shape[-2], images.shape[-1])
    features = model.feature_maps(images.to(next(model.parameters()).device)).cpu()
    weight = model.classifier.weight.detach().cpu()
    boxes = [tuple(b) for b in test.boxes[rows].tolist()]
    makers = {
        "cam": lambda c: cam.class_maps(features, weight, c),
        "infocam": lambda c: cam.info_maps(features, weight, c, config.region_size),
    }
    out: dict[str, np.ndarray] = {}
    for name, make in makers.items():
        for kind, classes in (("top1", chosen_classes), ("true", labels)):
            maps = cam.upsample(make(classes), size).numpy()
            out[f"{name}_{kind}_iou"] = np.array(
                [cam.iou(cam.box_from_map(m, config.box_threshold), b)
                 for m, b in zip(maps, boxes, strict=True)])
            if name == "infocam" and kind == "true":
                info_true = maps
    masks = np.stack([cam.threshold_mask(m, config.box_threshold) for m in info_true])
    for name, chosen in (("info_mask", masks), ("random_mask", cam.shifted_masks(masks, rng))):
        out[f"{name}_logits"] = training.predict(model, cam.apply_mask(images, chosen)).numpy()
        out[f"{name}_pixels"] = chosen.sum(axis=(1, 2))
    return out


def localisation_sets(
    config: Config, seed: int
) -> tuple[LocalisationSet, LocalisationSet, int]:
    """Train set, test set and number of classes of ``config.loc_dataset``.

    ``digits`` draws new canvases from ``seed``; ``cub200`` loads the hub's ``train`` and ``test``
    splits (the same for every seed) at ``loc_image_size``, from ``loc_data_files`` when given.
    """
    if config.loc_dataset == "digits":
        train, test = load_digit_localisation(
            config.loc_train, config.loc_test, canvas_size=config.canvas_size,
            scale=config.digit_scale, noise_std=config.noise_std, seed=seed,
        )
        return train, test, DIGIT_CLASSES
    train, test = (
        load_hub_localisation(
            config.loc_dataset, split, image_size=config.loc_image_size,
            data_files=None if config.loc_data_files is None
            else local_split_files(config.loc_data_files, split),
        )
        for split in ("train", "test")
    )
    return train, test, HUB_LOCALISATION_DATASETS[config.loc_dataset].num_classes


def train_localiser(
    config: Config, seed: int, device: torch.device
) -> tuple[GapCNN, LocalisationSet]:
    """Build the localisation set of ``seed`` and train the GAP CNN on its labels only.

    Returns the trained model (in eval mode) and the test set.
    """
    train, test, num_classes = localisation_sets(config, seed)
    training.seed_everything(seed)
    model = GapCNN(num_classes, width=config.cnn_width, in_channels=int(train.images.shape[1]))
    spec = training.TrainSpec(epochs=config.cnn_epochs, batch_size=config.cnn_batch_size,
                              lr=config.cnn_lr, optimizer="adam")
    training.fit_classifier(model, F.cross_entropy, train.images, train.labels, spec, seed=seed,
                            device=device)
    return model.eval(), test


def localisation_examples(config: Config, seed: int, count: int = 6) -> dict[str, np.ndarray]:
    """Re-train the localiser of ``seed`` (deterministic); return maps of ``count`` test canvases.

    Returns arrays: ``images`` ``[n, S, S]`` (one channel) or ``[n, S, S, 3]`` (RGB),
    ``labels``/``predicted`` ``[n]``, ``true_boxes``, ``cam_boxes``, ``infocam_boxes`` ``[n, 4]``,
    ``cam``/``infocam`` maps ``[n, S, S]`` (true class, upsampled) and ``masked`` images shaped
    like ``images`` (infoCAM region removed).
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
    size = (images.shape[-2], images.shape[-1])
    maps = {
        "cam": cam.upsample(cam.class_maps(features, weight, labels), size).numpy(),
        "infocam": cam.upsample(cam.info_maps(features, weight, labels, config.region_size),
                                size).numpy(),
    }
    masks = np.stack([cam.threshold_mask(m, config.box_threshold) for m in maps["infocam"]])
    out = {
        "images": _displayable(images),
        "labels": labels.numpy(),
        "predicted": model(images).argmax(dim=1).numpy(),
        "true_boxes": test.boxes[:count].numpy(),
        "masked": _displayable(cam.apply_mask(images, masks)),
        **maps,
    }
    for name in ("cam", "infocam"):
        out[f"{name}_boxes"] = np.array([cam.box_from_map(m, config.box_threshold)
                                         for m in maps[name]])
    return out


def _displayable(images: torch.Tensor) -> np.ndarray:
    """``[n, 1, S, S]`` -> ``[n, S, S]``; ``[n, 3, S, S]`` -> ``[n, S, S, 3]`` (for ``imshow``)."""
    if images.shape[1] == 1:
        return images[:, 0].numpy()
    return images.permute(0, 2, 3, 1).numpy()


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every synthetic and localisation run; rows written to the results file."""
    with training.cpu_threads(config.threads):
        return _run(config, results_dir)


def _run(config: Config, results_dir: str) -> results.ChapterResult:
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    grid = synthetic_grid(config) + [
        {"part": "localisation", "dataset": LOC_DATASETS[config.loc_dataset], "seed": s}
        for s in config.seeds
    ]

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        if run["part"] == "synthetic":
            with timer("synthetic"):
                scores = synthetic_run(config, run, device)
                out = [{**run, "metric": k, "value": v} for k, v in scores.items()]
                if run["series"] != "sample_size" and run["method"] == "softmax":
                    out += constant_rows(config, run)
            return out
        with timer("localisation"):
            model, test = train_localiser(config, run["seed"], device)
            by_method = localisation_scores(model, test, config, run["seed"])
        return [{**run, "method": method, "metric": k, "value": v}
                for method, values in by_method.items() for k, v in values.items()]

    rows = training.run_grid(grid, run_one, chapter=CHAPTER)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)
