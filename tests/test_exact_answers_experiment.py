"""Chapter 08's config validation, determinism and a tiny end-to-end run against its claims."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.engine import training
from softmax_repro.experiments import ch08_exact_answers as chapter
from softmax_repro.methods import relaxations as rx
from softmax_repro.pipeline import claims
from softmax_repro.pipeline.results import without_timings

TINY = {"temperatures": [0.5, 1.0], "sst_repeats": 20, "health_samples": 2_000,
        "admm_iterations": 3, "nk_iterations": 2, "lbfgs_iterations": 3, "sgd_epochs": 2,
        "rho_grid": [0.01], "sgd_lr_grid": [1.0], "c_grid": [1.0], "mrc_iterations": 30,
        "eps_grid": [0.05, 0.5], "uf_iterations": 30}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the shared machine's cores stall multi-threaded small kernels."""
    with training.cpu_threads(1):
        yield


def test_profiles_build_and_cpu_has_five_seeds():
    for profile in chapter.PROFILES:
        chapter.make_config(profile)
    config = chapter.make_config("cpu")
    assert len(config.seeds) >= 5
    assert (config.num_items, config.subset_size) == (8, 3)
    assert set(config.mrc_datasets) == {"iris", "wine", "breast_cancer", "digits"}
    assert 0.5 in config.temperatures and 0.05 in config.eps_grid  # the claims' settings
    assert chapter.make_config("paper").mrc_iterations == 10_000  # MRCpy's default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": [1.0]}, "unknown key 'temperature'"),
        ({"parts": ["sst", "nope"]}, "parts item"),
        ({"subset_size": 8}, "subset_size"),
        ({"temperatures": []}, "temperatures is empty"),
        ({"temperatures": [0.0]}, "temperatures item"),
        ({"sst_samples": 1}, "sst_samples"),
        ({"rho_grid": [1.0, 2.0]}, "same length"),
        ({"eps_grid": [1.5]}, "eps_grid item"),
        ({"mrc_datasets": ["mnist"]}, "mrc_datasets item"),
        ({"uf_k": 8}, "uf_k"),
        ({"mrc_s": -0.3}, "mrc_s"),
    ],
)
def test_bad_values_raise_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        chapter.make_config("smoke", overrides=overrides)


def test_exact_gradient_of_the_chapter_problems_is_enumerated():
    config = chapter.make_config("cpu")
    problem = chapter.sst_problem(config, "topk", seed=0)
    assert problem.vertices.shape == (56, 8)
    probs = torch.exp(problem.log_prob_fn(problem.logits))
    assert float(probs.sum()) == pytest.approx(1.0)
    grad = rx.exact_gradient(problem.logits, problem.log_prob_fn, problem.vertices,
                             problem.objective)
    assert grad.shape == (8,) and float(grad.abs().sum()) > 0


def test_tabular_splits_are_exact_and_standardised():
    split = chapter.tabular_split("digits", 3, 0.2, 0.2)
    sizes = (len(split.y_train), len(split.y_val), len(split.y_test))
    assert sum(sizes) == 1797 and sizes[2] == 360 and sizes[1] == 360
    assert float(split.x_train.mean(0).abs().max()) < 1e-9
    again = chapter.tabular_split("digits", 3, 0.2, 0.2)
    assert torch.equal(split.x_test, again.x_test)
    other = chapter.tabular_split("digits", 4, 0.2, 0.2)
    assert not torch.equal(split.y_test, other.y_test)


def test_same_seed_gives_identical_rows():
    config = chapter.make_config("smoke", seeds=[0], overrides=TINY)
    for run in (lambda: chapter.sst_run(config, "categorical", 0),
                lambda: chapter.universal_run(config, 0),
                lambda: chapter.admm_run(config, 0)):
        first, second = (without_timings(pd.DataFrame(run())) for _ in range(2))
        pd.testing.assert_frame_equal(first, second)


def test_tiny_run_satisfies_every_claim_test(tmp_path):
    config = chapter.make_config("smoke", seeds=[0], overrides=TINY)
    result = chapter.run(config, results_dir=str(tmp_path))
    rows = result.rows
    assert set(rows["part"]) == set(chapter.PARTS)
    for claim in claims.chapter_claims(chapter.CHAPTER):
        verdict = claims.evaluate_claim(claim, rows, strict=True)  # every test finds its rows
        assert verdict.verdict != "no results"
        assert len(verdict.outcomes) == len(claim.tests)
    mrc = rows[(rows["part"] == "mrc") & (rows["method"] == "mrc")]
    wide = mrc.pivot_table(index=["dataset", "seed"], columns="metric", values="value")
    assert (wide["lower"] <= wide["upper"] + 1e-9).all()
    trace = rows[(rows["part"] == "admm") & (rows["selection"] == "trace")]
    assert set(trace["method"]) == set(chapter.SOLVERS)
    equal = chapter.at_equal_time(rows, seconds=1e9)
    assert len(equal) == len(chapter.SOLVERS) and equal["rel_gap"].notna().all()


def test_paper_profile_code_path_at_tiny_size(tmp_path):
    config = chapter.make_config("paper", seeds=[0], overrides={
        **TINY, "parts": ["sst", "universal"], "sst_problems": ["topk"]})
    assert config.profile == "paper"
    rows = chapter.run(config, results_dir=str(tmp_path)).rows
    assert set(rows["method"]) >= {"topk_sst", "reinforce_loo", "softmax_net"}
