"""The pure parts of benchmarks/scaling.py: fits, work model, paper estimate, the page (no chapter
is run here)."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax
from softmax_repro.experiments import ch02_incremental_bsce as incremental
from softmax_repro.experiments import ch03_kerbs as kerbs
from softmax_repro.experiments import ch04_softmax_mutual_information as mutual_information

ROOT = Path(__file__).resolve().parents[1]


def _load_scaling():
    spec = importlib.util.spec_from_file_location("scaling", ROOT / "benchmarks" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["scaling"] = module
    spec.loader.exec_module(module)
    return module


scaling = _load_scaling()


def test_fit_line_recovers_a_known_line_exactly():
    x = [1, 2, 4, 8, 2, 4, 8, 4]
    t = [3.5 + 0.25 * v for v in x]
    fit = scaling.fit_line(x, t)
    assert fit["a"] == pytest.approx(3.5, abs=1e-12)
    assert fit["b"] == pytest.approx(0.25, abs=1e-12)
    assert fit["rms"] == pytest.approx(0.0, abs=1e-12)
    assert scaling.predict(fit, 100) == pytest.approx(28.5)


def test_hours_keep_one_decimal_below_ten():
    assert (scaling._hours(931.8), scaling._hours(1.28), scaling._hours(0.04)) == \
        ("932", "1.3", "0.0")


def test_fit_line_residuals_are_measured_minus_fitted():
    # points (0, 0), (1, 1), (2, 0): least squares a = 1/3, b = 0
    fit = scaling.fit_line([0, 1, 2], [0, 1, 0])
    assert fit["a"] == pytest.approx(1 / 3) and fit["b"] == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(fit["residuals"], [-1 / 3, 2 / 3, -1 / 3])
    assert fit["rms"] == pytest.approx(np.sqrt(2 / 9))


def test_fit_separable_recovers_separate_slopes():
    m, s = [1, 2, 4, 8, 1, 1, 1, 2], [1, 1, 1, 1, 2, 4, 8, 2]
    t = [2.0 + 0.5 * mi + 1.5 * si for mi, si in zip(m, s, strict=True)]
    fit = scaling.fit_separable(m, s, t)
    assert (fit["c0"], fit["c_m"], fit["c_s"]) == pytest.approx((2.0, 0.5, 1.5))
    assert fit["rms"] == pytest.approx(0.0, abs=1e-9)


def test_scaled_multiplies_and_rounds_only_the_size_fields():
    smoke = {"steps": 30, "n_max": 200, "gauss_steps": 50}
    assert scaling.scaled(smoke, ("steps", "gauss_steps"), 2.5) == {"steps": 75,
                                                                     "gauss_steps": 125}


def _component(name, field, rate=None, speedup=1.0):
    return scaling.Component(name, lambda c: float(c[field]), rate, speedup, "")


def test_relative_work_weights_parts_by_their_time_share():
    parts = [_component("big", "a"), _component("small", "b")]
    reference = {"a": 10, "b": 100}
    # 'big' takes 80% of the reference time and doubles; 'small' takes 20% and grows 5x
    x = scaling.relative_work(parts, {"big": 0.8, "small": 0.2}, {"a": 20, "b": 500}, reference)
    assert x == pytest.approx(0.8 * 2 + 0.2 * 5)
    assert scaling.relative_work(parts, {"big": 0.8, "small": 0.2}, reference, reference) == 1.0


def test_time_shares_pool_every_run():
    shares = scaling.time_shares([{"a": 1.0, "b": 3.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0}])
    assert shares == pytest.approx({"a": 0.6, "b": 0.4})


def test_paper_estimate_uses_the_rate_or_scales_the_cpu_run():
    parts = [_component("resnet", "images", rate=250.0, speedup=40.0),
             _component("same", "points")]
    cpu, paper = {"images": 1_000, "points": 10}, {"images": 9_000_000, "points": 30}
    out = {c["component"]: c for c in
           scaling.paper_estimate(parts, cpu, paper, {"resnet": 50.0, "same": 120.0})}
    assert out["resnet"]["paper_cpu_hours"] == pytest.approx(9_000_000 / 250 / 3600)  # 10 h
    assert out["resnet"]["gpu_hours"] == pytest.approx(10 / 40)
    assert out["same"]["paper_cpu_hours"] == pytest.approx(120.0 * 3 / 3600)
    assert out["same"]["gpu_hours"] == out["same"]["paper_cpu_hours"]


def test_stream_examples_by_hand():
    # 10 classes, base 4, 3 steps of 2 new classes, 50 examples per class, memory 5:
    # base 4·50·e_b; steps (2·50 + 5·4) + (2·50 + 5·6) + (2·50 + 5·8) = 390, × e_s
    assert scaling.stream_examples(50, 10, 4, 3, 5, epochs_base=2, epochs_step=3) == (400, 1170)


def test_work_formulas_on_hand_made_configs():
    smoke = balanced_softmax.make_config("smoke", seeds=(0,))
    longer = balanced_softmax.make_config("smoke", seeds=(0, 1, 2),
                                          overrides={"steps": 300, "batch_size": 64})
    # MNIST-1D per seed: 3 methods at IF 10 and 200, 7 end-to-end methods at IF 100 (the
    # table-only ones run there alone), and the testbed probe's 3 variants × 2 methods
    assert scaling._bs_image(smoke) == (3 + 3 + 7 + 3 * 2) * 30 * 128
    # the main runs scale with the seeds, the probe keeps its own seeds (one at smoke)
    assert scaling._bs_image(longer) == (13 * 3 + 3 * 2) * 300 * 64
    corpus = kerbs.make_config("smoke", seeds=(0, 1, 2, 3))
    # corpus: min(corpus_num_seeds, seeds) × corpus methods × tokens × epochs
    assert scaling._kerbs_corpus(corpus) == (
        min(corpus.corpus_num_seeds, 4) * len(corpus.corpus_methods) * 6000 * corpus.corpus_epochs
    )
    assert scaling._kerbs_synthetic(corpus) == 4 * len(corpus.synthetic_methods) * 6000 * 2
    mi = mutual_information.make_config("smoke", seeds=(0, 1))
    assert scaling._mi_localisation(mi) == 2 * 200 * 32 ** 2 * 1
    cub = SimpleNamespace(seeds=(0, 1, 2), loc_dataset="cub200", loc_image_size=224,
                          loc_train=20_000, canvas_size=32, cnn_epochs=30)
    assert scaling._mi_localisation(cub) == 3 * 5994 * 224 ** 2 * 30
    # per dim: 5 · 400 · 3 epochs × (1 + 3 bounds + 1 sample size + 1.5 · 2 imbalanced)
    assert scaling._mi_synthetic(mi) == pytest.approx(2 * 4 * 5 * 400 * 3 * 8)
    one = incremental.make_config("smoke", seeds=(0,), overrides={
        "datasets": ("mnist1d",), "methods": ("ce_m0",), "num_samples": 1000})
    # 800 train, 10 classes, base 2, 4 steps of 2, no memory: 160·2 + 640·2
    assert scaling.incremental_work(one) == pytest.approx(1600)
    kd = incremental.make_config("smoke", seeds=(0,), overrides={
        "datasets": ("mnist1d",), "methods": ("ce_kd_m0",), "num_samples": 1000})
    assert scaling.incremental_work(kd) == pytest.approx(320 + 1280 * 4 / 3)


def test_run_shares_deduplicates_repeated_metric_rows():
    rows = pd.DataFrame({"dataset": ["a", "a", "b", "b", "b"], "seed": [0, 0, 0, 0, 1],
                         "metric": ["x", "y", "x", "y", "x"], "wall_s": [1.0, 1.0, 2.0, 2.0, 1.0]})
    shares = scaling.run_shares(rows, ["dataset", "seed"], lambda r: r["dataset"], 8.0)
    assert shares == pytest.approx({"a": 2.0, "b": 6.0})


def _fake_report():
    return {
        "size_fields": ["steps"], "work_formula": "runs × steps",
        "points": [{"multiplier": 1, "seeds": 1, "x": 1.0, "wall_s": 2.0},
                   {"multiplier": 2, "seeds": 1, "x": 2.0, "wall_s": 3.0}],
        "fit": {"a": 1.0, "b": 1.0, "residuals": [0.0, 0.0], "rms": 0.0},
        "separable_fit": {"c0": 1.0, "c_m": 1.0, "c_s": 0.0, "rms": 0.0},
        "cpu": {"x": 99.0, "predicted_s": 100.0, "measured_s": 150.0},
        "paper_x": 1e4, "paper_fit_extrapolation_s": 10_001.0,
        "paper": [{"component": "images", "work_cpu": 1e6, "work_paper": 1e9, "cpu_seconds": 150.0,
                   "basis": "work ÷ 250 per s", "paper_cpu_hours": 1111.1, "gpu_speedup": 40.0,
                   "gpu_hours": 27.78, "note": "ResNet-32"}]}


def test_chapter_markdown_renders_the_timings_and_predictions():
    text = scaling.chapter_markdown("01_toy", _fake_report())
    assert text.startswith("### 01_toy")
    assert "| size × | seeds | work x | measured (s) | fit (s) | residual (s) |" in text
    assert "| 2 | 1 | 2.00 | 3.00 | 3.00 | +0.00 |" in text
    assert "| cpu | 99 | 100 | 150 | 1.50 |" in text
    assert "| images | 1e+06 | 1e+09 | 150 | work ÷ 250 per s | 1,111.1 | 40× | 27.78 |" in text


def test_page_has_summary_and_one_section_per_chapter():
    report = {"chapters": {"01_toy": _fake_report(), "02_toy": _fake_report()}}
    machine = {"cpu": "Toy CPU", "cores": 2, "torch": "2.13.0+cpu"}
    page = scaling.render_page(report, machine, "2026-11-25T14:00+00:00", [1.0, 2.5])
    assert page.count("\n# Scaling and cost\n") == 1
    assert "| 01_toy | 100 | 150 | 1,111 | 28 |" in page
    assert page.count("### ") == 2 and "Toy CPU (2 cores" in page and "2.5 at the end" in page


def test_every_chapter_module_has_its_size_fields_in_the_smoke_profile():
    for spec in scaling.CHAPTERS:
        module = importlib.import_module(f"softmax_repro.experiments.{spec.module}")
        assert set(spec.size_fields) <= set(module.PROFILES["smoke"]), spec.chapter
        for profile in ("smoke", "cpu", "paper"):
            config = module.make_config(profile)
            assert all(c.work(config) >= 0 for c in spec.components)
        smoke = module.make_config("smoke", seeds=(0,))
        doubled = module.make_config("smoke", seeds=(0,), overrides=scaling.scaled(
            module.PROFILES["smoke"], spec.size_fields, 2))
        grows = [c.work(doubled) / c.work(smoke) for c in spec.components if c.work(smoke)]
        # the size knob drives the work (chapter 02's Digits part does not grow with it)
        assert 1.0 < max(grows) <= 2.0 + 1e-9, spec.chapter


def test_load_note_says_whether_other_processes_shared_the_cores():
    assert "otherwise quiet" in scaling.load_note([0.7, 1.0])
    assert "upper bound" in scaling.load_note([1.0, 2.5])
