"""How each chapter's runtime grows with its data size and seeds (``make scaling``).

For every chapter, ``run(config)`` is timed (wall seconds, ``time.perf_counter``) at a few sizes
built from the ``smoke`` profile: the chapter's *size fields* multiplied by ``m`` with one seed,
one more point at ``m = 2`` with two seeds, and 2, 4, 8 seeds at ``m = 1``. Each run gets a fresh
checkpoint folder (``$SOFTMAX_REPRO_CHECKPOINTS``) and results folder, so nothing is resumed.

The model. A chapter's *work* ``W(config)`` counts the training examples (or tokens) its runs
process, summed over its components and seeds (:data:`CHAPTERS` states each formula and the config
fields it reads). With ``x = W(config) / W(smoke with one seed)`` (``x = m · seeds`` when every
component scales with both), the fit is ``t ≈ a + b · x`` by least squares; the separable fit
``t ≈ c0 + c_m · m + c_s · seeds`` is reported beside it. The ``cpu`` prediction is
``a + b · x(cpu)``: it assumes the cost per example of the smoke models, so it is checked against
the measured ``cpu`` run (``results/cpu/<chapter>.json``, provenance ``wall_s``).

The fit's ``x`` weights the components by their measured share of the smoke runs' time:
``x = Σ_c share_c · W_c(config) / W_c(smoke, 1 seed)``.

The ``paper`` estimate, component by component: where the paper profile changes the model
(ResNet-32, the WikiText-2 LM), ``W_c(paper) / r_c`` with ``r_c`` that model's CPU throughput on
this machine (a stated assumption from ``ENVIRONMENT.md``); where the model stays, the measured
``cpu`` seconds of the component (split by the per-run wall times in its rows, or its phase
timings) × ``W_c(paper) / W_c(cpu)``. GPU hours divide by an assumed GPU speed-up per component.
These are estimates, not measurements.

Writes ``results/scaling.json`` (raw timings, fits, predictions, machine) and the book page
``book/scaling.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from softmax_repro.engine import training
from softmax_repro.pipeline import results, tables

ROOT = Path(__file__).resolve().parents[1]
JSON_OUT = ROOT / "results" / "scaling.json"
PAGE_OUT = ROOT / "book" / "scaling.md"
SEED_COUNTS = (2, 4, 8)
"""Seed counts timed at size multiplier 1 (one seed is the multiplier sweep's first point)."""
BOTH_POINT = (2, 2)
"""One point with both the size multiplier and the seeds above 1 (tests the product form)."""

# Stated assumptions (see ENVIRONMENT.md's CPU table and book/methodology.md).
RESNET32_IMG_PER_S = 250.0
"""ResNet-32 training on 32×32×3, batch 128, this CPU (2 threads)."""
PAPER_LM_TOKENS_PER_S = 5_900.0 / 4 / 1.6
"""2-layer GRU 400, ~33k words: the measured 5.9k tokens/s of a 2×256 LSTM at V=10k scaled by
~4× the work per token, and the heads' ~1.6× average cost over a softmax."""
GPU_SPEEDUP_RESNET = 40.0
"""An A100-class GPU at ~10,000 img/s (fp32) on ResNet-32 vs ~250 img/s here."""
GPU_SPEEDUP_LM = 30.0
"""A recurrent LM at batch 20 on a GPU vs this CPU (small-batch RNNs use a GPU poorly)."""
FULL_CORPUS_TRAIN_TOKENS = {"wikitext2": 2_088_628, "ptb": 929_589}
"""Training tokens of a whole hub corpus split (``train_tokens = 0``; no profile runs all of
Brown)."""
DIGITS_TRAIN = 1257
"""Digits training images (70% stratified split of 1,797)."""
CUB_TRAIN_IMAGES = 5_994
"""CUB-200-2011's training split."""


# ---------------------------------------------------------------------------------------------
# chapters: size fields, work per component, how the measured cpu time splits


@dataclasses.dataclass(frozen=True)
class Component:
    """One part of a chapter's training work.

    Attributes:
        name: short label.
        work: config -> examples (or tokens) processed in training, summed over seeds.
        paper_rate: units of work per second of the ``paper`` profile's model on this CPU (an
            assumption from measured throughputs), for a component whose model changes at the
            ``paper`` profile; ``None``: the model is the ``cpu`` profile's, and the measured
            ``cpu`` time is scaled by the work ratio.
        gpu_speedup: assumed GPU speed-up over this CPU for this component.
        note: where ``paper_rate`` and ``gpu_speedup`` come from.
    """

    name: str
    work: Callable[[Any], float]
    paper_rate: float | None
    gpu_speedup: float
    note: str


@dataclasses.dataclass(frozen=True)
class ChapterSpec:
    """How to scale, measure and model one chapter.

    Attributes:
        chapter: the notebook / results name.
        module: the experiment module under ``softmax_repro.experiments``.
        size_fields: smoke-profile fields multiplied by the size multiplier.
        multipliers: size multipliers timed with one seed.
        components: the work model.
        formula: the work formula in words (shown on the page).
        split: (cpu rows, cpu provenance) -> measured cpu seconds per component.
    """

    chapter: str
    module: str
    size_fields: tuple[str, ...]
    multipliers: tuple[int, ...]
    components: tuple[Component, ...]
    formula: str
    split: Callable[[pd.DataFrame, Mapping[str, Any]], dict[str, float]]


def run_shares(rows: pd.DataFrame, keys: Sequence[str], group: Callable[[pd.Series], str],
               wall_s: float) -> dict[str, float]:
    """Split ``wall_s`` over components in proportion to the per-run ``wall_s`` of ``rows``.

    Rows repeat a run's ``wall_s`` once per metric, so runs are first de-duplicated on ``keys``.
    """
    runs = rows.dropna(subset=["wall_s"]).drop_duplicates(subset=list(keys))
    by_part = runs.groupby(runs.apply(group, axis=1))["wall_s"].sum()
    return {str(k): float(v / by_part.sum() * wall_s) for k, v in by_part.items()}


def _count(runs: Sequence[Mapping[str, Any]], test: Callable[[Mapping[str, Any]], bool]) -> int:
    return sum(1 for r in runs if test(r))


def _bs_runs(config: Any) -> list[dict[str, Any]]:
    from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax
    return balanced_softmax.grid(config)


def _bs_image(config: Any) -> float:
    n = _count(_bs_runs(config), lambda r: r["dataset"] not in ("digits", "gaussian"))
    return float(n * config.steps * config.batch_size)


def _bs_digits(config: Any) -> float:
    n = _count(_bs_runs(config), lambda r: r["dataset"] == "digits")
    return float(n * config.digits_steps * config.digits_batch_size)


def _bs_gauss(config: Any) -> float:
    n = _count(_bs_runs(config), lambda r: r["dataset"] == "gaussian")
    return float(n * config.gauss_steps * min(1024, config.gauss_n_max))


def _bs_split(rows: pd.DataFrame, prov: Mapping[str, Any]) -> dict[str, float]:
    rows = rows[rows["method"] != "posthoc_adjustment"]  # shares the softmax run's wall time
    names = {"digits-lt": "digits", "gaussian-lt": "gaussian"}
    return run_shares(rows, ["dataset", "imbalance", "seed", "method"],
                      lambda r: names.get(r["dataset"], "images"), prov["wall_s"])


KD_FORWARD_COST = 1 / 3
"""Extra cost of a distillation step's teacher forward pass relative to a training step."""


def stream_examples(n_per_class: float, classes: int, base: int, steps: int, memory: int,
                    epochs_base: int, epochs_step: int) -> tuple[float, float]:
    """Example-passes of one class-incremental stream: (base task, incremental steps).

    The base task trains on ``base · n_per_class`` examples for ``epochs_base`` epochs; step
    ``j`` of ``steps`` on its ``(classes − base) / steps`` new classes plus ``memory`` exemplars of
    every class seen before, for ``epochs_step`` epochs.
    """
    new = (classes - base) / steps
    incremental = sum(new * n_per_class + memory * (base + (j - 1) * new)
                      for j in range(1, steps + 1))
    return base * n_per_class * epochs_base, incremental * epochs_step


def incremental_work(config: Any) -> float:
    """:func:`stream_examples` of every (dataset, increments, method) stream, the incremental
    steps × (1 + :data:`KD_FORWARD_COST`) for distillation methods, × class orders × seeds
    (the classifier-only fine-tuning stage is not counted)."""
    from softmax_repro.experiments import ch02_incremental_bsce as incremental
    from softmax_repro.methods import incremental as inc
    total = 0.0
    for name, steps, method in itertools.product(config.datasets, config.increments,
                                                 config.methods):
        classes = incremental.NUM_CLASSES[name]
        n_train = {"mnist1d": int(0.8 * config.num_samples), "digits": DIGITS_TRAIN,
                   "cifar100": 50_000}[name]
        learner = inc.Learner.parse(method)
        base, rest = stream_examples(n_train / classes, classes, config.base_classes, steps,
                                     learner.memory_per_class, config.epochs_base,
                                     config.epochs_step)
        total += base + rest * (1 + KD_FORWARD_COST * learner.distillation)
    return total * len(config.class_orders) * len(config.seeds)


def _whole_split(rows: pd.DataFrame, prov: Mapping[str, Any]) -> dict[str, float]:
    return {"training": float(prov["wall_s"])}


def _kerbs_synthetic(config: Any) -> float:
    return float(len(config.seeds) * len(config.synthetic_methods) * config.syn_train_tokens
                 * config.syn_epochs)


def _kerbs_corpus(config: Any) -> float:
    tokens = config.train_tokens or FULL_CORPUS_TRAIN_TOKENS[config.corpus]
    seeds = min(config.corpus_num_seeds, len(config.seeds))
    return float(seeds * len(config.corpus_methods) * tokens * config.corpus_epochs)


def _kerbs_split(rows: pd.DataFrame, prov: Mapping[str, Any]) -> dict[str, float]:
    return run_shares(rows, ["dataset", "method", "seed"],
                      lambda r: "synthetic" if r["dataset"] == "synthetic" else "corpus",
                      prov["wall_s"])


def _mi_synthetic(config: Any) -> float:
    from softmax_repro.experiments import ch04_softmax_mutual_information as mutual_information
    balanced = 1 + len(config.bound_methods) + len(config.sample_sizes)
    imbalanced = 7.5 / 5 * len(mutual_information.IMBALANCED_METHODS)  # 0.5+…+2.5 × n per class
    per_dim = 5 * config.n_per_class * config.epochs * (balanced + imbalanced)
    return float(len(config.seeds) * len(config.dims) * per_dim)


def _mi_localisation(config: Any) -> float:
    """Pixel-passes of the GAP CNN (the same network on Digits canvases and on CUB images, whose
    cost grows with the pixels): seeds × training images × side² × cnn_epochs."""
    if getattr(config, "loc_dataset", "digits") == "cub200":
        images, side = CUB_TRAIN_IMAGES, config.loc_image_size
    else:
        images, side = config.loc_train, config.canvas_size
    return float(len(config.seeds) * images * side ** 2 * config.cnn_epochs)


def _mi_split(rows: pd.DataFrame, prov: Mapping[str, Any]) -> dict[str, float]:
    phases = prov.get("timings_s", {})
    return {"synthetic": float(phases.get("synthetic", 0.0)),
            "localisation": float(phases.get("localisation", 0.0))}


CHAPTERS: tuple[ChapterSpec, ...] = (
    ChapterSpec(
        "01_balanced_softmax", "ch01_balanced_softmax",
        ("steps", "digits_steps", "decoupled_steps", "gauss_steps"), (1, 2, 4, 8),
        (Component("images", _bs_image, RESNET32_IMG_PER_S, GPU_SPEEDUP_RESNET,
                   "ResNet-32 at 250 img/s here"),
         Component("digits", _bs_digits, None, 1.0, "not in the paper profile"),
         Component("gaussian", _bs_gauss, None, 1.0, "same linear model; launch-bound on a GPU")),
        "runs × steps × batch_size per part (end-to-end image runs of the chapter's grid; Digits "
        "runs × digits_steps × digits_batch_size; Theorem-1 runs × gauss_steps × min(1024, "
        "gauss_n_max)); decoupled re-training on frozen features not counted. Training is "
        "step-based, so the size knob is the number of steps (examples seen), not n_max",
        _bs_split),
    ChapterSpec(
        "02_incremental_bsce", "ch02_incremental_bsce", ("num_samples",), (1, 5, 10),
        (Component("training", incremental_work, RESNET32_IMG_PER_S, GPU_SPEEDUP_RESNET,
                   "ResNet-32 at 250 img/s here"),),
        "per (dataset, increments, method) stream: base classes × examples per class × "
        "epochs_base, plus every step's new classes' examples and the exemplars of the classes "
        "seen before × epochs_step (× 4/3 with distillation), × class orders × seeds "
        "(N_train = 0.8 · num_samples for MNIST-1D, 1,257 for Digits, 50,000 for CIFAR-100; "
        "the classifier-only fine-tuning not counted). The Digits part does not grow with "
        "num_samples; multipliers 1, 5, 10 reuse MNIST-1D sizes already cached",
        _whole_split),
    ChapterSpec(
        "03_kerbs", "ch03_kerbs", ("syn_train_tokens", "syn_test_tokens", "train_tokens",
                              "eval_tokens"), (1, 2, 4, 8),
        (Component("synthetic", _kerbs_synthetic, None, 1.0,
                   "same synthetic LM at the paper profile"),
         Component("corpus", _kerbs_corpus, PAPER_LM_TOKENS_PER_S, GPU_SPEEDUP_LM,
                   f"GRU 2×400 at ~{PAPER_LM_TOKENS_PER_S:.0f} tokens/s here (averaged over the "
                   "heads)")),
        "synthetic: seeds × synthetic methods × syn_train_tokens × syn_epochs; corpus: "
        "min(corpus_num_seeds, seeds) × corpus methods × train_tokens (0: the whole split) × "
        "corpus_epochs; the corpus part does not grow with seeds beyond corpus_num_seeds",
        _kerbs_split),
    ChapterSpec(
        "04_softmax_mutual_information", "ch04_softmax_mutual_information",
        ("n_per_class", "test_per_class", "loc_train", "loc_test"), (1, 2, 4, 8),
        (Component("synthetic", _mi_synthetic, None, 1.0,
                   "same MLP; launch-bound on a GPU (a CPU is nearly as fast)"),
         Component("localisation", _mi_localisation, None, GPU_SPEEDUP_RESNET,
                   "same GAP CNN; at 224×224 (CUB) it keeps a GPU as busy as ResNet-32")),
        "synthetic: seeds × dims × 5 · n_per_class × epochs × (1 + bound methods + sample sizes "
        "+ 1.5 × 2 imbalanced runs); localisation (pixel-passes): seeds × training images × "
        "side² × cnn_epochs, with loc_train canvases of canvas_size² for Digits and the 5,994 "
        "CUB training images at loc_image_size² when loc_dataset is cub200",
        _mi_split),
)


# ---------------------------------------------------------------------------------------------
# the model: work ratios, fits, predictions


def scaled(profile: Mapping[str, Any], fields: Sequence[str], multiplier: float) -> dict[str, int]:
    """Overrides multiplying each of ``fields`` of ``profile`` by ``multiplier`` (rounded)."""
    return {f: round(profile[f] * multiplier) for f in fields}


def relative_work(components: Sequence[Component], shares: Mapping[str, float], config: Any,
                  reference: Any) -> float:
    """``x = Σ_c share_c · W_c(config) / W_c(reference)``.

    ``shares`` are the components' fractions of the measured time at the reference size (they sum
    to 1), so ``x`` is the run's time relative to the reference's when every component's time is
    proportional to its work; ``x = m · seeds`` when every component scales with both.
    """
    total = 0.0
    for comp in components:
        base = comp.work(reference)
        if base:
            total += shares.get(comp.name, 0.0) * comp.work(config) / base
    return total


def time_shares(splits: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each component's fraction of the summed seconds of ``splits`` (one dict per run)."""
    pooled: dict[str, float] = {}
    for split in splits:
        for name, seconds in split.items():
            pooled[name] = pooled.get(name, 0.0) + seconds
    total = sum(pooled.values())
    return {name: seconds / total for name, seconds in pooled.items()}


def fit_line(x: Sequence[float], t: Sequence[float]) -> dict[str, Any]:
    """Least-squares ``t ≈ a + b · x``; residuals ``t − fitted`` in seconds."""
    x, t = np.asarray(x, dtype=float), np.asarray(t, dtype=float)
    design = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(design, t, rcond=None)
    residuals = t - (a + b * x)
    return {"a": float(a), "b": float(b), "residuals": residuals.tolist(),
            "rms": float(np.sqrt(np.mean(residuals ** 2)))}


def fit_separable(m: Sequence[float], s: Sequence[float], t: Sequence[float]) -> dict[str, Any]:
    """Least-squares ``t ≈ c0 + c_m · m + c_s · s`` (size and seeds with separate slopes)."""
    m, s, t = (np.asarray(v, dtype=float) for v in (m, s, t))
    design = np.column_stack([np.ones_like(m), m, s])
    (c0, cm, cs), *_ = np.linalg.lstsq(design, t, rcond=None)
    residuals = t - design @ np.array([c0, cm, cs])
    return {"c0": float(c0), "c_m": float(cm), "c_s": float(cs),
            "residuals": residuals.tolist(), "rms": float(np.sqrt(np.mean(residuals ** 2)))}


def predict(fit: Mapping[str, float], x: float) -> float:
    """Seconds predicted by a :func:`fit_line` fit at relative work ``x``."""
    return fit["a"] + fit["b"] * x


def paper_estimate(components: Sequence[Component], cpu_config: Any, paper_config: Any,
                   cpu_seconds: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per component, the paper profile's CPU hours and GPU hours on this machine's scale.

    A component with a ``paper_rate`` takes ``W(paper) / paper_rate`` seconds; one without keeps
    the ``cpu`` profile's model and takes its measured ``cpu`` seconds × ``W(paper) / W(cpu)``.
    """
    out = []
    for comp in components:
        w_cpu, w_paper = comp.work(cpu_config), comp.work(paper_config)
        if comp.paper_rate is not None:
            seconds, basis = w_paper / comp.paper_rate, f"work ÷ {comp.paper_rate:,.0f} per s"
        else:
            seconds = cpu_seconds.get(comp.name, 0.0) * (w_paper / w_cpu if w_cpu else 0.0)
            basis = "cpu run × work ratio"
        out.append({"component": comp.name, "work_cpu": w_cpu, "work_paper": w_paper,
                    "cpu_seconds": cpu_seconds.get(comp.name, 0.0), "basis": basis,
                    "paper_cpu_hours": seconds / 3600, "gpu_speedup": comp.gpu_speedup,
                    "gpu_hours": seconds / 3600 / comp.gpu_speedup, "note": comp.note})
    return out


# ---------------------------------------------------------------------------------------------
# measuring


def time_run(module: Any, config: Any) -> tuple[float, pd.DataFrame, dict[str, Any]]:
    """Wall seconds of ``module.run(config)`` with fresh checkpoint and results folders, and the
    run's rows and provenance."""
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        previous = os.environ.get(training.CHECKPOINT_ENV)
        os.environ[training.CHECKPOINT_ENV] = str(Path(scratch) / "checkpoints")
        try:
            start = time.perf_counter()
            result = module.run(config, results_dir=str(Path(scratch) / "results"))
            wall = time.perf_counter() - start
        finally:
            if previous is None:
                os.environ.pop(training.CHECKPOINT_ENV)
            else:
                os.environ[training.CHECKPOINT_ENV] = previous
    return wall, result.rows, result.provenance


def sweep_points(spec: ChapterSpec) -> list[tuple[int, int]]:
    """(size multiplier, seeds) pairs to time."""
    return [(m, 1) for m in spec.multipliers] + [(1, s) for s in SEED_COUNTS] + [BOTH_POINT]


def measure(spec: ChapterSpec) -> list[dict[str, Any]]:
    """Time the chapter at every sweep point; each point keeps its time split by component.

    One untimed run at the smallest size first, so that no point pays for first-call set-up
    (imports, allocator warm-up, data caches).
    """
    module = importlib.import_module(f"softmax_repro.experiments.{spec.module}")
    smoke = module.PROFILES["smoke"]
    time_run(module, module.make_config("smoke", seeds=(0,)))
    points = []
    for m, s in sweep_points(spec):
        overrides = scaled(smoke, spec.size_fields, m)
        config = module.make_config("smoke", seeds=tuple(range(s)), overrides=overrides)
        load = os.getloadavg()[0]
        wall, rows, provenance = time_run(module, config)
        points.append({"multiplier": m, "seeds": s, "overrides": overrides, "wall_s": wall,
                       "phases_s": dict(provenance.get("timings_s", {})),
                       "split_s": spec.split(rows, provenance), "load_before": load})
        print(f"  {spec.chapter}: size ×{m}, {s} seed(s): {wall:6.2f} s", flush=True)
    return points


def analyse(spec: ChapterSpec, points: list[dict[str, Any]],
            results_dir: Path) -> dict[str, Any]:
    """Fits, the cpu prediction against the measured cpu run, and the paper estimate."""
    module = importlib.import_module(f"softmax_repro.experiments.{spec.module}")
    reference = module.make_config("smoke", seeds=(0,))
    shares = time_shares([p["split_s"] for p in points])

    def work_x(config: Any) -> float:
        return relative_work(spec.components, shares, config, reference)

    for p in points:
        p["x"] = work_x(module.make_config("smoke", seeds=tuple(range(p["seeds"])),
                                           overrides=p["overrides"]))
    fit = fit_line([p["x"] for p in points], [p["wall_s"] for p in points])
    separable = fit_separable([p["multiplier"] for p in points], [p["seeds"] for p in points],
                              [p["wall_s"] for p in points])
    cpu_config, paper_config = module.make_config("cpu"), module.make_config("paper")
    x_cpu, x_paper = work_x(cpu_config), work_x(paper_config)
    out: dict[str, Any] = {
        "size_fields": list(spec.size_fields), "work_formula": spec.formula,
        "smoke_time_shares": shares, "points": points, "fit": fit, "separable_fit": separable,
        "cpu": {"x": x_cpu, "predicted_s": predict(fit, x_cpu), "measured_s": None},
        "paper_x": x_paper, "paper_fit_extrapolation_s": predict(fit, x_paper), "paper": None}
    path = results_dir / "cpu" / f"{spec.chapter}.json"
    if path.exists():
        rows, prov = results.read_results(path)
        out["cpu"].update(measured_s=float(prov["wall_s"]), measured_commit=prov.get("commit"))
        out["paper"] = paper_estimate(spec.components, cpu_config, paper_config,
                                      spec.split(rows, prov))
    return out


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads and versions of this machine."""
    return {"cpu": results.cpu_name(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# ---------------------------------------------------------------------------------------------
# the page


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A pipe table through the book's one table writer (``pipeline.tables``)."""
    return tables.markdown_table(pd.DataFrame(list(rows), columns=list(header))).rstrip("\n")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _hours(value: float) -> str:
    """Whole hours from 10 h up, one decimal below."""
    return _fmt(value, 0 if value >= 10 else 1)


def chapter_markdown(chapter: str, report: Mapping[str, Any]) -> str:
    """One chapter's section: the timings table, the fits and the predictions."""
    fit, sep, cpu = report["fit"], report["separable_fit"], report["cpu"]
    rows = [(p["multiplier"], p["seeds"], _fmt(p["x"], 2), _fmt(p["wall_s"], 2),
             _fmt(predict(fit, p["x"]), 2), f"{r:+.2f}")
            for p, r in zip(report["points"], fit["residuals"], strict=True)]
    parts = [
        f"### {chapter}",
        f"Size knob: {', '.join(f'`{f}`' for f in report['size_fields'])} × the multiplier "
        f"(from the `smoke` profile). Work: {report['work_formula']}.",
        _table(["size ×", "seeds", "work x", "measured (s)", "fit (s)", "residual (s)"], rows),
        f"Fit: t ≈ {fit['a']:.2f} s + {fit['b']:.3f} s · x (RMS residual {fit['rms']:.2f} s); "
        f"separate slopes: t ≈ {sep['c0']:.2f} + {sep['c_m']:.3f} · size× + {sep['c_s']:.3f} · "
        f"seeds (RMS {sep['rms']:.2f} s).",
    ]
    measured = cpu.get("measured_s")
    ratio = f"{measured / cpu['predicted_s']:.2f}" if measured and cpu["predicted_s"] > 0 else "—"
    parts.append(_table(["profile", "work x", "predicted from the fit (s)", "measured (s)",
                         "measured / predicted"],
                        [("cpu", _fmt(cpu["x"], 0), _fmt(cpu["predicted_s"], 0),
                          _fmt(measured, 0), ratio),
                         ("paper", _fmt(report["paper_x"], 0),
                          _fmt(report["paper_fit_extrapolation_s"], 0), "—", "—")]))
    if report.get("paper"):
        parts.append(_table(
            ["component", "work cpu", "work paper", "cpu run (s)", "paper: basis", "CPU hours",
             "GPU speed-up", "GPU hours", "assumption"],
            [(c["component"], f"{c['work_cpu']:.3g}", f"{c['work_paper']:.3g}",
              _fmt(c["cpu_seconds"], 0), c["basis"], _fmt(c["paper_cpu_hours"], 1),
              f"{c['gpu_speedup']:.0f}×", _fmt(c["gpu_hours"], 2), c["note"])
             for c in report["paper"]]))
    return "\n\n".join(parts)


def summary_rows(report: Mapping[str, Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """One row per chapter: cpu predicted vs measured, paper CPU and GPU hours."""
    rows = []
    for chapter, rep in report.items():
        paper = rep.get("paper") or []
        rows.append((chapter, _fmt(rep["cpu"]["predicted_s"], 0),
                     _fmt(rep["cpu"].get("measured_s"), 0),
                     _hours(sum(c["paper_cpu_hours"] for c in paper)) if paper else "—",
                     _hours(sum(c["gpu_hours"] for c in paper)) if paper else "—"))
    return rows


PAGE_INTRO = """\
<!-- Generated by `make scaling` (benchmarks/scaling.py); do not edit by hand. -->

# Scaling and cost

How long each chapter takes as its data and seeds grow, so that a reader can predict a larger
run. Every chapter was timed (its own `run(config)`, wall seconds) at sizes built from the
`smoke` profile: the chapter's size fields multiplied by 1, 2, 4, 8 (chapter 02: 1, 5, 10, the
MNIST-1D sizes already cached) with one seed, 2, 4, 8 seeds at size 1, and size 2 with 2 seeds,
after one untimed warm-up run. Each chapter's *work* x counts the training examples (or tokens)
its runs process relative to the smoke profile with one seed; for a chapter whose every part
grows with both, x = size multiplier × seeds. The fit is t ≈ a + b · x (least squares), shown with
its residuals and beside a fit with separate slopes for size and seeds.

A chapter's parts (e.g. image training and the small Theorem-1 runs) cost very different amounts
per example, so x weights each part's work by its share of the measured smoke time:
x = Σ_part share · W_part(config) / W_part(smoke, 1 seed).

**How to read the predictions.** The `cpu` row extrapolates the smoke fit to the `cpu` profile's
work, assuming the smoke models' cost per example, and compares it with the measured `cpu` run
(`results/cpu/<chapter>.json`, provenance `wall_s`). This is the honest test of the model: where
the `cpu` profile uses larger models, longer sequences or bigger batches than `smoke`, the ratio
measured / predicted shows how far a count of examples alone can be trusted. The `paper` profile
changes the models and data themselves (ResNet-32 on CIFAR, a 2×400 GRU on WikiText-2, CUB images
at 224×224), so its estimate is not the smoke fit (whose extrapolation is listed only for
reference): a part whose model changes takes its paper work ÷ the CPU throughput of the paper's
model on this machine (ResNet-32 ~250 images/s, measured; the GRU LM ~920 tokens/s, derived from
the measured 5.9k tokens/s of a smaller LM); a part whose network stays takes its measured `cpu`
seconds × the work ratio paper / cpu (for chapter 04's GAP CNN the work counts pixels). Training
only: evaluation and data loading add roughly 10%. GPU hours divide by an assumed GPU speed-up:
an A100-class GPU at ~10,000 ResNet-32 images/s in fp32 vs ~250 here (×40, also taken for the
GAP CNN on 224×224 images), a recurrent LM at batch 20 ×30, and the small MLPs and linear models
launch-bound, taken as no faster than this CPU. **These paper figures are estimates, not
measurements; expect the real cost within ±2× of them.**

To predict a run of your own at the smoke models' cost, compute its x from the work formula of
the chapter (the config fields it reads are named there) and take a + b · x, then correct by the
chapter's measured / predicted ratio at `cpu` if your run is closer to that profile.

Regenerate with `make scaling` (3–4 minutes on 2 cores); it rewrites this page and
`results/scaling.json` (raw timings, fits, predictions and the machine).
"""


def load_note(load: Sequence[float]) -> str:
    """How to read the load averages: the script itself keeps about one core busy."""
    if max(load) > 1.5:
        return (": other processes shared the cores, so the seconds are an upper bound for a "
                "quiet machine")
    return " (the script's own single thread): the machine was otherwise quiet"


def render_page(report: Mapping[str, Any], machine_info: Mapping[str, Any],
                measured_at: str, load: Sequence[float]) -> str:
    """The whole ``book/scaling.md`` page from a report ``{chapter: analysis}``."""
    chapters = report["chapters"]
    parts = [
        PAGE_INTRO,
        f"Measured {measured_at} on {machine_info['cpu']} ({machine_info['cores']} cores, "
        f"torch {machine_info['torch']}; every chapter trains on one thread). Load average "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end{load_note(load)}.",
        "## Summary",
        _table(["chapter", "cpu predicted from the smoke fit (s)", "cpu measured (s)",
                "paper CPU hours (est.)", "paper GPU hours (est.)"], summary_rows(chapters)),
        "## Per chapter",
    ]
    parts += [chapter_markdown(name, rep) for name, rep in chapters.items()]
    return "\n\n".join(parts) + "\n"


def main() -> None:
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    measured_at = results.now().isoformat(timespec="minutes")
    chapters: dict[str, Any] = {}
    for spec in CHAPTERS:
        points = measure(spec)
        chapters[spec.chapter] = analyse(spec, points, ROOT / "results")
    report = {"measured_at": measured_at, "machine": machine(),
              "load_average": [load_start, os.getloadavg()[0]],
              "script_wall_s": time.perf_counter() - started, "chapters": chapters}
    JSON_OUT.write_text(json.dumps(report, indent=1) + "\n")
    PAGE_OUT.write_text(render_page(report, report["machine"], measured_at,
                                    report["load_average"]))
    print(f"wrote {JSON_OUT} and {PAGE_OUT} in {report['script_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
